"""The overview page (uptime, sessions per front door, event rates, store health) and the
JSON document its script polls to keep the figures live."""

from __future__ import annotations

import time
from typing import Any

from twisted.web.template import Tag, tags

from presenced.core import Core
from presenced.doors import SESSION_DOORS
from presenced.webadmin.console import Console
from presenced.webadmin.layout import Page, definitions, table


def stats(console: Console) -> dict[str, Any]:
    """The live figures; the page script turns counters into rates between two polls."""
    core, router, probe = console.core, console.core.router, console.probe
    return {
        "time": time.time(),
        "uptime": time.time() - core.started_at,
        "online_users": router.online_users(),
        "sessions": router.session_count(),
        "sessions_by_door": {door: n for door, n in sorted(console.census.counts.items())},
        "events_sent": router.events_sent,
        "deliveries": router.deliveries,
        "delivery_errors": router.delivery_errors,
        "events_per_second": console.rates.events_per_second,
        "deliveries_per_second": console.rates.deliveries_per_second,
        "store_latency_ms": None if probe.latency is None else probe.latency * 1000,
        "accounts": probe.accounts,
    }


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    shown = [f"{n} {unit}" for n, unit in parts if n] or ["0 s"]
    return " ".join(shown[:2])


def live(key: str, value: Any) -> Tag:
    """A figure the page script refreshes from ``/live/stats`` (``data-live`` names it)."""
    return tags.span(str(value), **{"data-live": key})


def register(console: Console) -> None:
    @console.route("GET", "/live/stats", json=True)
    def api_stats(console: Console, request, login) -> dict[str, Any]:
        return stats(console)

    @console.route("GET", "/")
    def overview(console: Console, request, login) -> Page:
        figures = stats(console)
        core = console.core
        latency = figures["store_latency_ms"]
        summary = definitions([
            ("Up for", live("uptime", duration(figures["uptime"]))),
            ("Started", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(core.started_at))),
            ("Online users", live("online_users", figures["online_users"])),
            ("Sessions", live("sessions", figures["sessions"])),
            ("Events sent / s", live("events_per_second",
                                     f"{figures['events_per_second']:.1f}")),
            ("Deliveries / s", live("deliveries_per_second",
                                    f"{figures['deliveries_per_second']:.1f}")),
            ("Delivery errors", live("delivery_errors", figures["delivery_errors"])),
            ("Accounts", live("accounts", figures["accounts"] if figures["accounts"]
                              is not None else "…")),
            ("Store", f"{core.store.name}, last probe "
                      + ("…" if latency is None else f"{latency:.1f} ms")),
        ], class_="figures")
        by_door = figures["sessions_by_door"]
        doors = table(
            ("Front door", "Enabled", "Sessions"),
            ([door, _enabled(core, door),
              live(f"sessions_by_door.{door}", by_door.get(door, 0))]
             for door in sorted(set(SESSION_DOORS) | set(by_door), key=_door_order)),
            "No front doors.")
        return Page("Overview", [
            summary, tags.h2("Sessions per front door"), doors, irc_bot(core),
            tags.p("Figures refresh every few seconds while JavaScript is on; "
                   "reload the page otherwise.", class_="hint")])


def irc_bot(core: Core) -> Tag:
    """What the IRC bot (``core.irc``) is doing, when it runs."""
    if core.irc is None:
        return tags.transparent()
    status = core.irc.status()
    return tags.transparent(tags.h2("IRC bot"), definitions([
        ("Server", f"{core.config.irc.server}:{core.config.irc.port}"),
        ("State", f"signed on as {status.nickname}" if status.connected else "not connected"),
        ("Channels joined", ", ".join(status.channels) or "none"),
        ("Lines waiting", str(status.lines_waiting)),
        ("Last error", status.last_error or "none"),
    ], class_="figures"))


def _enabled(core, door: str) -> str:
    section = getattr(core.config, door, None)
    return "—" if section is None else ("yes" if section.enabled else "no")


def _door_order(door: str) -> tuple[int, str]:
    return (SESSION_DOORS.index(door) if door in SESSION_DOORS else len(SESSION_DOORS), door)
