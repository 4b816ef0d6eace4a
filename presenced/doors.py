"""The front doors, listed once: what the config, the service and the web admin know of each.

A door is a package ``presenced/<section>/`` with ``service.make_service(core)`` and its keys
in ``options.KEYS``. This registry imports only the options modules (plain data), never a
door's service, so the configuration can be checked without loading any protocol code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from presenced.comet import options as comet_options
from presenced.irc import options as irc_options
from presenced.options import Keys
from presenced.thrift import options as thrift_options
from presenced.webadmin import options as webadmin_options
from presenced.xmpp import options as xmpp_options


@dataclass(frozen=True)
class Door:
    """One front door.

    ``section`` names its config section, its package and, for doors that carry sessions,
    the ``ISession.protocol`` of its sessions. ``fixed_port`` is the key of the port every worker
    listens on (``[server] workers``: the first process binds it, 0 included, and hands the
    port it got to the others); None for the IRC door, which runs in the first process only. ``carries_sessions`` says its clients hold router
    sessions, so the web admin and ``/metrics`` count them (at 0) from the start.
    """

    section: str
    keys: Keys
    fixed_port: Optional[str]
    carries_sessions: bool

    @property
    def service_module(self) -> str:
        """The module providing ``make_service(core) -> IService``."""
        return f"presenced.{self.section}.service"


# In the order of config/presenced.toml, which is also start-up and display order.
DOORS: tuple[Door, ...] = (
    Door("xmpp", xmpp_options.KEYS, fixed_port="port", carries_sessions=True),
    Door("comet", comet_options.KEYS, fixed_port="port", carries_sessions=True),
    Door("thrift", thrift_options.KEYS, fixed_port="port", carries_sessions=False),
    Door("webadmin", webadmin_options.KEYS, fixed_port="port", carries_sessions=False),
    Door("irc", irc_options.KEYS, fixed_port=None, carries_sessions=True),
)

# Doors whose sessions the router counts per door (``presenced_router_sessions{door}``).
SESSION_DOORS: tuple[str, ...] = tuple(door.section for door in DOORS if door.carries_sessions)
