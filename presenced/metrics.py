"""Counters and gauges every part of presenced updates, rendered as Prometheus text.

Counters are plain integers behind a dict lookup so a hot path pays almost nothing;
gauges are read at scrape time from a callable.
"""

from __future__ import annotations

from typing import Callable

Labels = tuple[tuple[str, str], ...]


# The series every front door reports, labelled ``door="xmpp"`` etc.: described once here.
DOOR_METRICS = {
    "presenced_connections": ("gauge", "Open connections by front door"),
    "presenced_connections_total": ("counter", "Connections accepted by front door"),
    "presenced_connections_refused_total": (
        "counter", "Connections refused at the listener by door and reason"),
    "presenced_logins_total": ("counter", "Successful logins by front door"),
    "presenced_auth_failures_total": ("counter", "Refused authentications by front door"),
    "presenced_stanzas_in_total": ("counter", "Stanzas received by front door"),
    "presenced_events_out_total": ("counter", "Events sent to peers by front door"),
}


class Metrics:
    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = dict(DOOR_METRICS)
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, Callable[[], float]]] = {}

    def describe(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        series = self._counters.setdefault(name, {})
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> float:
        return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def gauge(self, name: str, read: Callable[[], float], **labels: str) -> None:
        self._gauges.setdefault(name, {})[tuple(sorted(labels.items()))] = read

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        # A described counter nothing has counted yet is exported as 0: a series that only
        # appears at its first event cannot be graphed or alerted on (rate() has no start).
        described = {name for name, (kind, _) in self._help.items() if kind == "counter"}
        for name in sorted(set(self._counters) | set(self._gauges) | described):
            kind, help_text = self._help.get(
                name, ("counter" if name in self._counters else "gauge", name))
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            counted = self._counters.get(name, {})
            gauges = self._gauges.get(name, {})
            for labels, value in counted.items():
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
            for labels, read in gauges.items():
                lines.append(f"{name}{_labels(labels)} {_number(read())}")
            if not counted and not gauges:
                lines.append(f"{name} 0")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), chr(92) + "n")}"'
        for k, v in labels)
    return "{" + inner + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
