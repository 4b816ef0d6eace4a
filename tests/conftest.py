"""Fixtures shared by the suite: private real peers (Redis, presenced itself) on free ports,
and the roster store on every backend. The classes behind them are in :mod:`tests.helpers`.

Every test server is a real process (``twistd -n presenced``) with its own data directory and
ports chosen by the OS (port 0, read back from ``<data_dir>/run/ports.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from presenced.store import IRosterStore
from tests.helpers import PresencedProcess, RedisClusterServers, RedisSentinels, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def presenced_factory(tmp_path: Path):
    """Call with config sections to get a started server; all are stopped after the test."""
    servers: list[PresencedProcess] = []

    def make(sections: Optional[dict[str, dict[str, Any]]] = None, name: str = "node",
             start: bool = True) -> PresencedProcess:
        directory = tmp_path / f"{name}{len(servers)}"
        directory.mkdir()
        server = PresencedProcess(directory, sections or {})
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory):
    """One Redis Cluster (3 masters, 3 replicas) for the tests that leave it as they found
    it; tests that kill or reshard nodes use ``redis_cluster``."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path):
    """A private Redis Cluster (3 masters, 3 replicas) of this test's own."""
    servers = RedisClusterServers(tmp_path / "redis-cluster")
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture
def redis_sentinels(tmp_path: Path):
    """A private master, its replica and three sentinels watching them."""
    servers = RedisSentinels(tmp_path / "redis-sentinel")
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture(params=["embedded", "redis", "redis-sharded", "redis-cluster"])
def store(request, tmp_path: Path):
    """A started roster store, once per backend (Redis: private servers, one or two shards,
    or the shared Redis Cluster, emptied first). Modules with a ``store`` fixture of their own
    (one backend) override this one."""
    redis = []
    if request.param == "embedded":
        from presenced.store.embedded import EmbeddedRosterStore

        backend: IRosterStore = EmbeddedRosterStore(str(tmp_path / "store.sqlite3"))
    elif request.param == "redis-cluster":
        from presenced.store.redis import RedisRosterStore

        cluster = request.getfixturevalue("shared_redis_cluster")
        cluster.flush()
        backend = RedisRosterStore(cluster.seeds, cluster=True)
    else:
        from presenced.store.redis import RedisRosterStore

        redis = [RedisServer(tmp_path / f"redis{i}")
                 for i in range(2 if request.param == "redis-sharded" else 1)]
        for server in redis:
            server.start()
        backend = RedisRosterStore([server.url for server in redis])
    pytest_twisted.blockon(backend.start())
    yield backend
    pytest_twisted.blockon(backend.stop())
    for server in redis:
        server.stop()


@pytest.fixture
def memory_xmpp(tmp_path: Path):
    """``await memory_xmpp(sections)``: a started in-memory XMPP door
    (:class:`tests.xmpp_memory.MemoryServer`); stopped after the test."""
    from tests.xmpp_memory import MemoryServer

    nodes: list[MemoryServer] = []

    async def make(sections: Optional[dict[str, dict[str, Any]]] = None) -> MemoryServer:
        node = MemoryServer(tmp_path / f"memory{len(nodes)}", sections)
        nodes.append(node)
        return await node.start()

    yield make
    for node in nodes:
        pytest_twisted.blockon(defer.ensureDeferred(node.stop()))


@pytest.fixture
def logged_errors():
    """The error and critical log events emitted during the test (in-memory door tests
    assert that bad input is answered without any)."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event["log_level"].name in ("error", "critical"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)
