"""Configuration: the documented file matches the schema; user errors name the key."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from presenced import config
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
