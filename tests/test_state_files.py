"""The daemon's own state files (persisted overrides, tune cache) survive power cuts and never stop a start."""

import json
import os
import random
import signal
import time

import paho.mqtt.client as mqtt
import pytest
import yaml

from daemon import config, tune
from daemon.durable import write_durably
from tests.conftest import daemon_log, start_daemon, write_config

VALID = "detect:\n  confidence: 0.6\ntargets:\n  min_frames: 4\n"
BAD_OVERRIDES = {
    "truncated": VALID[:17].encode(),  # "detect:\n  confide": a write cut short by a power loss
    "garbage": bytes(range(256)) * 4,
    "invalid_value": b"detect:\n  confidence: 7\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_OVERRIDES))
def test_bad_overrides_are_set_aside_and_the_user_config_used(tmp_path, kind):
    cfg_file = write_config(tmp_path / "c.yaml", {"state_dir": str(tmp_path / "state"), "detect": {"iou": 0.5}})
    state = tmp_path / "state" / "overrides.yaml"
    state.parent.mkdir()
    state.write_bytes(BAD_OVERRIDES[kind])
    with pytest.raises(config.ConfigError):  # reload keeps raising: the running config stays
        config.load_with_overrides(cfg_file)
    problems: list[str] = []
    cfg = config.load_with_overrides(cfg_file, problems)
    assert cfg.detect.iou == 0.5 and cfg.detect.confidence == 0.25
    assert not state.exists()
    (moved,) = state.parent.glob("overrides.yaml.bad-*")
    assert moved.read_bytes() == BAD_OVERRIDES[kind]
    assert len(problems) == 1 and str(moved) in problems[0]


def test_valid_overrides_still_apply(tmp_path):
    cfg_file = write_config(tmp_path / "c.yaml", {"state_dir": str(tmp_path / "state")})
    write_durably(tmp_path / "state" / "overrides.yaml", VALID)
    problems: list[str] = []
    assert config.load_with_overrides(cfg_file, problems).detect.confidence == 0.6 and problems == []


def test_an_empty_overrides_file_is_valid(tmp_path):
    """Every override removed (a `set` null): an empty file means "nothing overridden", not damaged state."""
    cfg_file = write_config(tmp_path / "c.yaml", {"state_dir": str(tmp_path / "state"), "detect": {"iou": 0.5}})
    write_durably(tmp_path / "state" / "overrides.yaml", "")
    problems: list[str] = []
    assert config.load_with_overrides(cfg_file, problems).detect.iou == 0.5 and problems == []
    assert (tmp_path / "state" / "overrides.yaml").exists()


@pytest.mark.parametrize("content", [b'{"abc|cpu": {"backend": "openv', b"", b"[1, 2]", b'{"k": {"backend": 3}}'])
def test_bad_tune_cache_is_set_aside(tmp_path, content):
    (tmp_path / "tune.json").write_bytes(content)
    message = tune.check_cache(tmp_path)
    assert message and "ripeye tune" in message and not (tmp_path / "tune.json").exists()
    assert len(list(tmp_path.glob("tune.json.bad-*"))) == 1
    assert tune.check_cache(tmp_path) is None


def test_daemon_starts_past_bad_state_and_reports_it(tmp_path, broker, subscriber_factory):
    cfg = write_config(tmp_path / "c.yaml", {
        "device_id": "statebox", "source": {"uri": "sample"}, "state_dir": str(tmp_path / "state"),
        "runtime": {"cache_dir": str(tmp_path / "cache"), "threads": 1}, "mqtt": {"port": broker.port},
        "tracking": {"enabled": False}, "targets": {"enabled": False}})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "overrides.yaml").write_bytes(BAD_OVERRIDES["truncated"])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tune.json").write_bytes(b'{"x": ')
    sub = subscriber_factory(broker.port, "ripeye/statebox/#")
    proc = start_daemon(cfg)
    try:
        sub.wait_for("detections", timeout=40)
        errors = [e for e in sub.json("errors") if e["source"] == "state"]
        assert len(errors) == 2, errors
        assert any("overrides.yaml.bad-" in e["message"] for e in errors)
        assert any("tune.json.bad-" in e["message"] for e in errors)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "overrides.yaml.bad-" in daemon_log(proc)


def test_sigkill_during_persisted_sets_restarts_clean(tmp_path, broker, subscriber_factory):
    cfg = write_config(tmp_path / "c.yaml", {
        "device_id": "killbox", "source": {"uri": "sample"}, "state_dir": str(tmp_path / "state"),
        "runtime": {"threads": 1}, "mqtt": {"port": broker.port}, "stats": {"interval_s": 30},
        "tracking": {"enabled": False}, "targets": {"enabled": False}})
    sub = subscriber_factory(broker.port, "ripeye/killbox/#")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    rng = random.Random(0)
    try:
        for _ in range(3):  # bounded: three kills at different points of a burst of persisted sets
            proc = start_daemon(cfg)
            sub.messages.clear()
            sub.wait_for("detections", timeout=40)
            for i in range(40):
                patch = {"detect": {"confidence": round(0.2 + i / 100, 2)}, "targets": {"min_frames": 1 + i % 5}}
                pub.publish("ripeye/killbox/cmd/set", json.dumps({"patch": patch, "persist": True}), qos=1)
            sub.wait_for("cmd/set/result", timeout=10)
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            data = yaml.safe_load((tmp_path / "state" / "overrides.yaml").read_text())
            assert set(data) == {"detect", "targets"}
        proc = start_daemon(cfg)
        sub.messages.clear()
        sub.wait_for("detections", timeout=40)
        assert not [e for e in sub.json("errors") if e["source"] == "state"]
        assert not list((tmp_path / "state").glob("*.bad-*")) and not list((tmp_path / "state").glob(".*.tmp"))
        proc.terminate()
        proc.wait(timeout=15)
    finally:
        pub.loop_stop()
        if proc.poll() is None:
            proc.kill()
