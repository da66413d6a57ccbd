import subprocess
import sys

import pytest

from railedge.config import Config, load_config, mqtt_password
from railedge.errors import ConfigError
from conftest import ROOT


def test_default_yaml_matches_builtin_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


@pytest.mark.parametrize("name", ["default.yaml", "jetson.yaml", "rpi.yaml"])
def test_shipped_configs_are_valid(name):
    load_config(ROOT / "configs" / name)


def test_overrides_apply_with_types():
    cfg = load_config(None, ["mqtt.port=1884", "model.snn.channels=[8, 16]", "scoring.threshold=2.5", "mqtt.tls.enabled=true"])
    assert cfg.mqtt.port == 1884 and cfg.model.snn.channels == (8, 16)
    assert cfg.scoring.threshold == 2.5 and cfg.mqtt.tls.enabled is True


@pytest.mark.parametrize(
    "override, words",
    [
        ("mqtt.port=abc", ["mqtt.port", "'abc'", "integer"]),
        ("mqtt.port=70000", ["mqtt.port", "maximum 65535"]),
        ("mqtt.prt=1", ["mqtt.prt", "unknown", "port"]),
        ("runtime=tensorflow", ["runtime", "'tensorflow'", "'onnx'"]),
        ("model.resnet.layers=[layer9]", ["model.resnet.layers[0]", "layer9", "layer2"]),
        ("source.loop=maybe", ["source.loop", "true or false"]),
        ("nonsense", ["key.path=value"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


def test_bad_yaml_file_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mqtt:\n  port: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_password_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_PW", "s3cret")
    assert mqtt_password(load_config(None, ["mqtt.password_env=MY_PW"]).mqtt) == "s3cret"
    f = tmp_path / "pw"
    f.write_text("fromfile\n")
    assert mqtt_password(load_config(None, [f"mqtt.password_file={f}"]).mqtt) == "fromfile"
    with pytest.raises(ConfigError, match="password_file"):
        mqtt_password(load_config(None, [f"mqtt.password_file={tmp_path / 'nope'}"]).mqtt)


def test_check_config_cli(tmp_path):
    good = subprocess.run([sys.executable, "-m", "railedge.cli", "check-config", str(ROOT / "configs" / "default.yaml")],
                          capture_output=True, text=True)
    assert good.returncode == 0 and "OK" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("scoring:\n  false_alarm_rate: 3\n")
    r = subprocess.run([sys.executable, "-m", "railedge.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "scoring.false_alarm_rate" in r.stderr and "Traceback" not in r.stderr
