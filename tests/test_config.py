"""Configuration: the documented file matches the schema; user errors name the key."""

from __future__ import annotations

import importlib.util
import subprocess
import tomllib
from pathlib import Path

import pytest

from presenced import config
from presenced.doors import DOORS
from presenced.options import port
from tests.helpers import REPO, TWISTD, subprocess_env

DOCUMENTED = REPO / "config" / "presenced.toml"


def test_documented_file_lists_every_key_with_its_default():
    documented = tomllib.loads(DOCUMENTED.read_text())
    assert set(documented) == set(config.SCHEMA)
    for section, keys in config.SCHEMA.items():
        assert set(documented[section]) == set(keys), section
        for name, key in keys.items():
            assert documented[section][name] == key.default, f"[{section}] {name}"


def test_documented_file_loads_to_the_defaults():
    loaded = config.load(str(DOCUMENTED))
    defaults = config.load(None)
    for section in config.SCHEMA:
        assert vars(getattr(loaded, section)) | {"_name": section} == \
            vars(getattr(defaults, section)) | {"_name": section}


@pytest.mark.parametrize("text, key", [
    ("[xmpp]\nport = 70000\n", "[xmpp] port"),
    ("[xmpp]\nport = \"5222\"\n", "[xmpp] port"),
    ("[xmpp]\nportt = 5222\n", "[xmpp] portt"),
    ("[nosuch]\nx = 1\n", "[nosuch]"),
    ("[xmpp]\ncertificate = \"/no/such/cert.pem\"\n", "[xmpp] certificate"),
    ("[store]\nbackend = \"mysql\"\n", "[store] backend"),
    ("[store]\nredis = [\"http://x\"]\n", "[store] redis"),
    ("[store]\nredis_cluster = [\"http://x\"]\n", "[store] redis_cluster"),
    ("[store]\nredis_wait_replicas = -1\n", "[store] redis_wait_replicas"),
    ("[store]\nredis_cluster = [\"redis://a:1\"]\nredis_sentinels = [\"redis://b:2\"]\n",
     "[store] redis_sentinels"),
    ("[store]\nbackend = \"redis\"\nredis_sentinels = [\"redis://b:2\"]\n[cluster]\nenabled = true\n",
     "[cluster] redis"),
    ("[server]\ndomains = []\n", "[server] domains"),
    ("[comet]\nenabled = 1\n", "[comet] enabled"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert e.value.key == key
    assert key in str(e.value)


def test_server_refuses_bad_config_without_traceback(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[thrift]\nport = -1\n")
    result = subprocess.run(TWISTD + ["-n", "presenced", "--config", str(path)],
                            capture_output=True, text=True, env=subprocess_env(), timeout=60,
                            cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "[thrift] port" in output
    assert "Traceback" not in output


def test_ctl_refuses_bad_config(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[store]\nbackend = 3\n")
    result = subprocess.run(["python3", "-m", "presenced.ctl", "--config", str(path),
                             "roster", "alice"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=60)
    assert result.returncode == 2
    assert "[store] backend" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_toml_is_reported(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text("[xmpp\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(str(path))


# --- the door registry drives the schema and the checks across keys ------------------------

CLUSTERED = {"server": {"workers": 2}, "cluster": {"enabled": True},
             "store": {"backend": "redis"}}


def test_every_door_brings_its_section_from_its_own_package():
    for door in DOORS:
        assert config.SCHEMA[door.section] is door.keys
        assert door.keys["enabled"].kind == "bool"
        assert importlib.util.find_spec(door.service_module) is not None, door.service_module
        if door.fixed_port:
            assert door.keys[door.fixed_port].kind == "int", door.section
    assert list(tomllib.loads(DOCUMENTED.read_text())) == list(config.SCHEMA)


@pytest.mark.parametrize("door", [d for d in DOORS if d.fixed_port], ids=lambda d: d.section)
def test_several_workers_may_pick_a_random_port(door):
    """Port 0 with workers: the first process binds one and hands it to the others (a port
    picked beforehand could be taken meanwhile, e.g. by an outgoing connection)."""
    config.build({**CLUSTERED, door.section: {door.fixed_port: 0}})


def test_doors_that_run_in_the_first_process_only_may_pick_a_port_with_workers():
    for door in DOORS:
        if door.fixed_port is None:
            port_keys = [name for name, key in door.keys.items() if key.check is port]
            config.build({**CLUSTERED, door.section: {"enabled": True,
                                                       **{name: 0 for name in port_keys}}})
