"""Run decoded calls on a handler whose methods may return Deferreds; encode the replies.

thriftpy2's ``TProcessor`` calls the handler and writes the reply in one synchronous step. On
the reactor a call's result may come later (a store write), and several calls of one
connection are in progress at once, so this dispatcher does the same job with a Deferred in
the middle, using the service's generated ``<method>_args``/``<method>_result`` structs.

Errors become replies, never a dropped connection: an exception the method declares goes in
its result struct; an IDL exception the method does not declare (the ``Ejabthrift`` methods
declare none) and a ``TApplicationException`` become a ``TApplicationException`` with a
readable message; anything else is logged and answered ``INTERNAL_ERROR``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from thriftpy2.thrift import TApplicationException, TException, TMessageType

from presenced.store import StoreError
from presenced.thrift.codec import Message, MessageEncoder

Reply = Union[bytes, defer.Deferred]


class _Method:
    """What the dispatcher needs to know about one service method, computed once."""

    __slots__ = ("name", "function", "arg_names", "result_class", "declared")

    def __init__(self, service: Any, handler: object, name: str):
        self.name = name
        self.function: Callable[..., Any] = getattr(handler, name)
        args_spec = getattr(service, name + "_args").thrift_spec
        self.arg_names = tuple(spec[1] for spec in args_spec.values())
        self.result_class = getattr(service, name + "_result")
        # (exception class, result field) for each declared exception, in IDL order.
        self.declared = tuple((spec[2], spec[1])
                              for fid, spec in sorted(self.result_class.thrift_spec.items())
                              if fid != 0)


class Dispatcher:
    """Calls ``handler.<method>(*args)`` for each message and encodes what it answers."""

    log = Logger()

    def __init__(self, service: Any, handler: object, encoder: MessageEncoder,
                 on_error: Optional[Callable[[str], None]] = None):
        self.encoder = encoder
        self.on_error = on_error
        self.methods = {name: _Method(service, handler, name)
                        for name in service.thrift_services}

    def dispatch(self, message: Message) -> Optional[Reply]:
        """The encoded reply (bytes, or a Deferred firing them, never failing); None for a
        oneway call."""
        method = self.methods.get(message.name) if message.body is not None else None
        if method is None:
            return self.exception(message.name, message.seqid,
                                  TApplicationException.UNKNOWN_METHOD,
                                  f"this server has no method {message.name}")
        body = message.body
        try:
            value = method.function(*[getattr(body, name) for name in method.arg_names])
        except Exception:
            value = Failure()
        if isinstance(value, defer.Deferred):
            return value.addCallbacks(self._reply, self._failed,
                                      callbackArgs=(method, message),
                                      errbackArgs=(method, message))
        if isinstance(value, Failure):
            return self._failed(value, method, message)
        return self._reply(value, method, message)

    def _reply(self, value: Any, method: _Method, message: Message) -> Optional[bytes]:
        if message.type == TMessageType.ONEWAY:
            return None
        result = method.result_class()
        try:
            if value is None:
                return self.encoder.empty_reply(method.name, message.seqid, result)
            result.success = value
            return self.encoder.encode(method.name, TMessageType.REPLY, message.seqid, result)
        except Exception:
            self._report(method.name, Failure())
            return self.exception(method.name, message.seqid,
                                  TApplicationException.INTERNAL_ERROR,
                                  f"internal error in {method.name}: unencodable result")

    def _failed(self, failure: Failure, method: _Method, message: Message) -> Optional[bytes]:
        error = failure.value
        if message.type == TMessageType.ONEWAY:
            self._report(method.name, failure)
            return None
        for cls, field in method.declared:
            if isinstance(error, cls):
                result = method.result_class()
                setattr(result, field, error)
                return self.encoder.encode(method.name, TMessageType.REPLY, message.seqid,
                                           result)
        if isinstance(error, TApplicationException):
            return self.exception(method.name, message.seqid, error.type, str(error))
        if isinstance(error, TException):
            return self.exception(method.name, message.seqid, TApplicationException.UNKNOWN,
                                  describe(error))
        self._report(method.name, failure)
        if isinstance(error, StoreError):
            text = f"store unavailable: {error}"
        else:
            text = f"internal error in {method.name}"
        return self.exception(method.name, message.seqid, TApplicationException.INTERNAL_ERROR,
                              text)

    def _report(self, name: str, failure: Failure) -> None:
        self.log.failure("thrift call {name} failed", failure, name=name)
        if self.on_error is not None:
            self.on_error(name)

    def exception(self, name: str, seqid: int, kind: int, text: str) -> bytes:
        """A ``TApplicationException`` reply."""
        return self.encoder.encode(name, TMessageType.EXCEPTION, seqid,
                                   TApplicationException(kind, text))


# The IDL's exceptions as the sentences an old Ejabthrift client shows its user (its methods
# declare no exceptions, so only the TApplicationException message reaches it).
_SENTENCES = {
    "BadJid": lambda e: f"bad user name {e.jid}: {e.reason}",
    "UnknownUser": lambda e: f"no such user {e.jid}",
    "InvalidArgument": lambda e: e.message,
    "NotEnabled": lambda e: e.message or f"{e.feature} is not enabled on this server",
}


def describe(error: TException) -> str:
    """An IDL exception as a sentence for a ``TApplicationException`` (not a Python repr)."""
    sentence = _SENTENCES.get(type(error).__name__)
    if sentence is not None:
        return str(sentence(error))
    fields = "; ".join(f"{spec[1]} {getattr(error, spec[1], None)}"
                       for spec in error.thrift_spec.values())
    return f"{type(error).__name__}: {fields}" if fields else type(error).__name__
