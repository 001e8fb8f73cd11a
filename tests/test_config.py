"""Config validation: defaults, unknown keys, key paths in errors, the shipped YAML."""

import re
import subprocess

import pytest
import yaml

from daemon import config
from daemon.config import Config, ConfigError
from tests.conftest import REPO, RIPEYE

SHIPPED = REPO / "config" / "ripeye.yaml"


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    cfg = config.load(p)
    assert cfg.mqtt.topic_prefix == "ripeye" and cfg.runtime.backend == "auto" and cfg.device_id


def test_partial_file_changes_only_what_it_names(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detect:\n  confidence: 0.6\n")
    cfg = config.load(p)
    assert cfg.detect.confidence == 0.6 and cfg.detect.iou == Config().detect.iou


def test_unknown_and_invalid_keys_name_file_and_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("detect:\n  confidence: 1.5\n  colour: red\nruntime:\n  backend: cuda\n")
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    keys = {k for k, _ in exc.value.problems}
    assert keys == {"detect.confidence", "detect.colour", "runtime.backend"}
    assert str(p) in str(exc.value) and "unknown key" in str(exc.value)


def test_bad_yaml_reports_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("detect:\n  confidence: [0.5\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line \d+"):
        config.load(p)


def test_topic_safety():
    with pytest.raises(ConfigError, match="device_id"):
        config.validate({"device_id": "a/b"})
    with pytest.raises(ConfigError, match="mqtt.topic_prefix"):
        config.validate({"mqtt": {"topic_prefix": "x/#"}})


def test_password_never_in_redacted(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = config.validate({"mqtt": {"username": "u", "password_file": str(pw)}})
    assert cfg.mqtt.password() == "s3cret"
    assert "s3cret" not in str(cfg.redacted()) and cfg.redacted()["mqtt"]["password_file"] == "***"


def test_merge_patch_rfc7386():
    assert config.merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": 4}, "d": [1]}) == {
        "a": {"c": 2, "e": 4}, "d": [1]}


def _all_keys(model, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, config.Strict):
            yield from _all_keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_shipped_yaml_is_valid_and_documents_every_key():
    config.load(SHIPPED)
    text = SHIPPED.read_text()
    for key in _all_keys(Config):
        leaf = key.split(".")[-1]
        assert re.search(rf"^\s*#?\s*{leaf}:", text, re.M), f"{key} is not documented in {SHIPPED}"
    # every uncommented key line carries a comment or is preceded by one
    assert yaml.safe_load(text)


def test_config_check_cli(tmp_path):
    ok = subprocess.run([*RIPEYE, "config", "check", str(SHIPPED)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 70000\n")
    r = subprocess.run([*RIPEYE, "config", "check", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "mqtt.port" in r.stderr and str(bad) in r.stderr


def test_white_balance_is_auto_by_default_and_a_yaml_off_is_named(tmp_path):
    assert config.Config().detect.white_balance == "auto"
    p = tmp_path / "wb.yaml"
    p.write_text("detect:\n  white_balance: grey_world\n")
    assert config.load(p).detect.white_balance == "grey_world"
    p.write_text("detect:\n  white_balance: off\n")  # YAML reads a bare off as false
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    assert {k for k, _ in exc.value.problems} == {"detect.white_balance"}
