"""The admin IDL as JSON: arguments read from JSON, results written as JSON, OpenAPI schemas.

thriftpy2 keeps every method's argument and result types in ``<method>_args.thrift_spec``
and ``<method>_result.thrift_spec``; this module walks those specs, so the HTTP API
(:mod:`presenced.thrift.http`) serves every method of the IDL, including methods added later,
without a line per method. A type is a Thrift type id (``TType.STRING``) or, for containers
and structs, ``(type id, detail)`` exactly as thriftpy2 writes it.

A ``JabberUser`` argument may also be given as a string, ``"alice@example.com"``, ``"alice"``
(the first domain) or a topic ``"artist/radiohead"``.
"""

from __future__ import annotations

from typing import Any, Union

from thriftpy2.thrift import TType

ThriftType = Union[int, tuple]

_INTS = {TType.BYTE: (8, "int32"), TType.I16: (16, "int32"), TType.I32: (32, "int32"),
         TType.I64: (64, "int64")}


class BadArgument(ValueError):
    """A JSON value that does not fit the IDL's type; the message names the argument."""


def field_type(spec: tuple) -> ThriftType:
    """The type of one ``thrift_spec`` entry ``(type, name, [detail,] required)``."""
    return (spec[0], spec[2]) if len(spec) == 4 else spec[0]


def fields(struct: type) -> list[tuple[str, ThriftType]]:
    """``(name, type)`` of a struct's (or an args struct's) fields, in IDL order."""
    return [(spec[1], field_type(spec)) for _, spec in sorted(struct.thrift_spec.items())]


def from_json(kind: ThriftType, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as the Thrift value of type ``kind``; None stays None."""
    if value is None:
        return None
    code, detail = kind if isinstance(kind, tuple) else (kind, None)
    if code == TType.STRING:
        if not isinstance(value, str):
            raise BadArgument(f"{where} must be a string")
        return value
    if code == TType.BOOL:
        if not isinstance(value, bool):
            raise BadArgument(f"{where} must be true or false")
        return value
    if code in _INTS:
        bits = _INTS[code][0]
        if not isinstance(value, int) or isinstance(value, bool) \
                or not -2 ** (bits - 1) <= value < 2 ** (bits - 1):
            raise BadArgument(f"{where} must be an integer of {bits} bits")
        return value
    if code == TType.DOUBLE:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadArgument(f"{where} must be a number")
        return float(value)
    if code in (TType.LIST, TType.SET):
        if not isinstance(value, list):
            raise BadArgument(f"{where} must be an array")
        return [from_json(detail, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if code == TType.MAP:
        if not isinstance(value, dict):
            raise BadArgument(f"{where} must be an object")
        return {k: from_json(detail[1], v, f"{where}.{k}") for k, v in value.items()}
    if code == TType.STRUCT:
        if isinstance(value, str) and detail.__name__ == "JabberUser":
            name, at, server = value.rpartition("@")
            return detail(name=name, server=server) if at else detail(name=value, server="")
        if not isinstance(value, dict):
            raise BadArgument(f"{where} must be an object")
        known = dict(fields(detail))
        unknown = set(value) - set(known)
        if unknown:
            raise BadArgument(f"{where} has no field {sorted(unknown)[0]!r} "
                              f"(fields: {', '.join(known)})")
        return detail(**{name: from_json(known[name], v, f"{where}.{name}")
                         for name, v in value.items()})
    raise BadArgument(f"{where}: type {code} is not supported over JSON")


def to_json(kind: ThriftType, value: Any) -> Any:
    """A Thrift value of type ``kind`` as JSON-ready Python."""
    if value is None:
        return None
    code, detail = kind if isinstance(kind, tuple) else (kind, None)
    if code in (TType.LIST, TType.SET):
        return [to_json(detail, v) for v in value]
    if code == TType.MAP:
        return {str(k): to_json(detail[1], v) for k, v in value.items()}
    if code == TType.STRUCT:
        return {name: to_json(t, getattr(value, name, None)) for name, t in fields(detail)}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def schema(kind: ThriftType, components: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3 schema of ``kind``; struct schemas are added to ``components``."""
    code, detail = kind if isinstance(kind, tuple) else (kind, None)
    if code == TType.STRING:
        return {"type": "string"}
    if code == TType.BOOL:
        return {"type": "boolean"}
    if code in _INTS:
        return {"type": "integer", "format": _INTS[code][1]}
    if code == TType.DOUBLE:
        return {"type": "number"}
    if code in (TType.LIST, TType.SET):
        return {"type": "array", "items": schema(detail, components)}
    if code == TType.MAP:
        return {"type": "object", "additionalProperties": schema(detail[1], components)}
    name = detail.__name__
    if name not in components:
        components[name] = {}  # placeholder first: a struct may refer to itself
        components[name] = {"type": "object", "properties": {
            field: schema(t, components) for field, t in fields(detail)}}
    ref = {"$ref": f"#/components/schemas/{name}"}
    if name == "JabberUser":
        return {"oneOf": [ref, {"type": "string", "description":
                                "user@domain, a local part (the first domain) or a topic"}]}
    return ref
