"""The unit a source address is counted in, shared by every per-address limit.

Connection caps (``listener.py``) and authentication throttles (``authguard.py``) count
per address. An IPv6 subscriber usually holds a whole /64 and could otherwise spread
connections or guesses over 2^64 addresses, so an IPv6 address counts as its /64; an
IPv4-mapped IPv6 address (a dual-stack socket) counts as the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

IPV6_PREFIX = 64
# Addresses whose key is remembered: every accepted connection asks, and parsing an address
# costs more than the rest of the accept; clients reconnect from the same addresses.
KEYS_CACHED = 4096


@lru_cache(maxsize=KEYS_CACHED)
def address_key(host: str) -> str:
    """The key ``host`` is counted under: an IPv4 address, or an IPv6 /64 network."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a UNIX socket path or a test transport's name
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)
