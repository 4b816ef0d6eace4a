"""The twistd service itself: start-up log lines, start-up failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import TWISTD, subprocess_env, write_config


def test_each_listening_door_logs_its_address(presenced_factory):
    server = presenced_factory({"xmpp": {"enabled": False}})
    log = server.wait_for_log("presenced ready: ")
    for door in ("thrift", "webadmin", "comet"):
        assert f"{door} listening on " in log
        assert f":{server.ports[door]}" in log
    assert "presenced ready: 3 front door(s)" in log


def test_the_server_freezes_its_start_up_objects(presenced_factory):
    server = presenced_factory({"xmpp": {"enabled": False}})
    log = server.wait_for_log("start-up objects frozen")
    frozen = int(log.split("collector: ")[1].split()[0])
    assert frozen > 10_000  # Twisted, the config, the core: far more than a few


def test_a_store_that_cannot_start_stops_the_server_with_status_1(tmp_path: Path):
    config = write_config(tmp_path / "bad.toml", {
        "server": {"data_dir": str(tmp_path / "data")},
        "store": {"backend": "redis", "redis": ["redis://127.0.0.1:1/0"], "redis_timeout": 1.0},
    })
    result = subprocess.run(TWISTD + ["-n", "--pidfile", "", "presenced", "--config",
                                      str(config)], capture_output=True, text=True,
                            env=subprocess_env(), timeout=60, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "presenced could not start: cannot connect to Redis" in output
    assert "Traceback" not in output
