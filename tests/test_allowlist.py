"""The one allowlist policy every door with an allowlist uses (Thrift admin, irccat)."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.address import IPv6Address

from presenced import config
from presenced.allowlist import Allowlist, allowlist_problem
from presenced.core import Core
from presenced.thrift import admin
from presenced.thrift.handler import AdminHandler
from presenced.thrift.protocol import AdminFactory


def test_an_empty_allowlist_admits_everyone():
    assert not Allowlist()
    assert Allowlist().admits("192.0.2.7") and Allowlist().admits("not an address")


@pytest.mark.parametrize("entries, host, admitted", [
    (["127.0.0.1"], "127.0.0.1", True),
    (["127.0.0.1"], "::ffff:127.0.0.1", True),
    (["127.0.0.1"], "127.0.0.2", False),
    (["10.0.0.0/8"], "::ffff:10.9.8.7", True),
    (["::ffff:10.0.0.0/104"], "10.1.2.3", True),
    (["::ffff:127.0.0.1"], "127.0.0.1", True),
    (["::1"], "::1", True),
    (["::1"], "127.0.0.1", False),
    ([" 192.0.2.0/24 "], "192.0.2.200", True),
    (["127.0.0.1"], "/run/presenced.sock", False),
])
def test_allowlist_matches_addresses_and_networks(entries, host, admitted):
    assert Allowlist(entries).admits(host) is admitted


def test_a_bad_entry_is_named():
    assert allowlist_problem(["127.0.0.1", "::1"]) is None
    problem = allowlist_problem(["127.0.0.1", "nowhere"])
    assert problem is not None and "'nowhere' is not an IP address or network" in problem
    with pytest.raises(ValueError, match="'nowhere'"):
        Allowlist(["nowhere"])


def test_thrift_door_admits_an_ipv4_mapped_client(tmp_path):
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path)},
                             "thrift": {"allow": ["127.0.0.1"]}})
    core = Core(cfg, store=None)  # type: ignore[arg-type]  # accepting connections never reads it
    clock = task.Clock()
    factory = AdminFactory(core, admin.PresencedAdmin, AdminHandler(core, clock), clock,
                           Allowlist(cfg.thrift.allow))
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.1", 1)) is not None
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:10.0.0.1", 1)) is None
