"""Which client addresses a front door accepts: one policy for every door with an allowlist.

Entries are addresses or networks in CIDR form (``127.0.0.1``, ``10.0.0.0/8``, ``::1``); an
empty list accepts every address that can reach the port. An IPv4 client on a dual-stack
socket shows up as an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``): it matches as its IPv4
form (and a mapped entry is read as its IPv4 form), so ``allow = ["127.0.0.1"]`` means the
same on every door and every socket family.

Imports nothing of presenced: the doors' options modules validate their keys with it.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_network(entry: str) -> Network:
    """One allowlist entry as a network; raises ValueError naming the entry."""
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or network "
                         "(127.0.0.1, 10.0.0.0/8, ::1)") from None
    mapped = getattr(network.network_address, "ipv4_mapped", None)
    if mapped is not None and network.prefixlen >= 96:  # ::ffff:10.0.0.0/104 is 10.0.0.0/8
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def allowlist_problem(entries: list) -> Optional[str]:
    """Config check for an allowlist key: None, or what is wrong with the first bad entry."""
    for entry in entries:
        try:
            parse_network(entry)
        except ValueError as e:
            return str(e)
    return None


class Allowlist:
    """The networks a door admits; empty admits everyone."""

    def __init__(self, entries: Iterable[str] = ()):
        self.networks: tuple[Network, ...] = tuple(parse_network(e) for e in entries)

    def __bool__(self) -> bool:
        """True when the list restricts anything (it is not empty)."""
        return bool(self.networks)

    def admits(self, host: str) -> bool:
        """Whether a client at ``host`` (the peer address's text) may connect. A host that is
        not an IP address (a UNIX socket path) is refused by a non-empty list."""
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
