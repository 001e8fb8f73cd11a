"""MQTT commands against a running daemon and a real mosquitto: each answered, errors clear, nothing crashes."""

import json
import time

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import start_daemon, write_config

BASE = "ripeye/cmdbox"


@pytest.fixture
def running(tmp_path, broker, subscriber_factory, model_dir):
    alt = str(model_dir)
    cfg = write_config(tmp_path / "ripeye.yaml", {
        "device_id": "cmdbox", "source": {"uri": "sample"}, "state_dir": str(tmp_path / "state"),
        "model": {"alternatives": {"same": alt}}, "mqtt": {"port": broker.port}, "stats": {"interval_s": 30},
        "runtime": {"threads": 1}})
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    proc = start_daemon(cfg)
    sub.wait_for("detections", timeout=30)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    yield {"proc": proc, "sub": sub, "pub": pub, "cfg": cfg, "tmp": tmp_path, "broker": broker}
    pub.loop_stop()
    proc.terminate()
    proc.wait(timeout=15)


def ask(env, name, payload, timeout=10):
    """Send one command and wait for its result (matched by id)."""
    rid = f"r{time.monotonic_ns()}"
    body = payload if isinstance(payload, (bytes, str)) else json.dumps({**payload, "id": rid})
    env["pub"].publish(f"{BASE}/cmd/{name}", body, qos=1)
    if isinstance(payload, (bytes, str)):
        n = len(env["sub"].on(f"cmd/{name}/result"))
        deadline = time.time() + timeout
        while len(env["sub"].on(f"cmd/{name}/result")) <= n and time.time() < deadline:
            time.sleep(0.02)
        return json.loads(env["sub"].on(f"cmd/{name}/result")[-1])
    return json.loads(env["sub"].wait_for(f"cmd/{name}/result", lambda p: rid.encode() in p, timeout))


def test_pause_and_resume(running):
    r = ask(running, "pause", {})
    assert r["ok"] is True and r["paused"] is True and r["id"].startswith("r")
    time.sleep(0.6)
    n = len(running["sub"].on("detections"))
    time.sleep(1.5)
    assert len(running["sub"].on("detections")) <= n + 1  # at most one frame already in flight
    r = ask(running, "resume", {})
    assert r["ok"] and r["paused"] is False
    running["sub"].wait_for("detections", lambda p: True, timeout=10)
    time.sleep(1.0)
    assert len(running["sub"].on("detections")) > n + 1


def test_snapshot_annotated_jpeg(running):
    r = ask(running, "snapshot", {"annotate": True})
    assert r["ok"] and r["bytes"] > 1000
    jpeg = running["sub"].wait_for("snapshot", timeout=5)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (640, 640, 3)


def test_set_applies_validates_and_persists_without_touching_the_yaml(running):
    before = running["cfg"].read_text()
    r = ask(running, "set", {"patch": {"detect": {"confidence": 0.6}}, "persist": True})
    assert r["ok"] and r["persisted"] is True
    cfg = json.loads(running["sub"].wait_for("config", lambda p: b'"confidence":0.6' in p, timeout=5))
    assert cfg["detect"]["confidence"] == 0.6
    time.sleep(1.0)
    last = json.loads(running["sub"].on("detections")[-1])
    assert all(d["confidence"] >= 0.6 for d in last["detections"])
    assert running["cfg"].read_text() == before
    overrides = yaml.safe_load((running["tmp"] / "state" / "overrides.yaml").read_text())
    assert overrides == {"detect": {"confidence": 0.6}}

    bad = ask(running, "set", {"patch": {"detect": {"confidence": 7}}})
    assert bad["ok"] is False and bad["keys"] == ["detect.confidence"]
    cold = ask(running, "set", {"patch": {"runtime": {"backend": "ncnn"}}})
    assert cold["ok"] is False and "runtime.backend" in cold["error"] and "not settable" in cold["error"]


def test_model_switch_only_among_configured(running):
    assert ask(running, "model", {"name": "same"})["ok"] is True
    r = ask(running, "model", {"name": "/etc/passwd"})
    assert r["ok"] is False and "unknown model" in r["error"] and "same" in r["error"]


def test_reload_and_stats(running):
    assert ask(running, "reload", {})["ok"] is True
    n = len(running["sub"].on("stats"))
    assert ask(running, "stats", {})["ok"] is True
    running["sub"].wait_for("stats", timeout=5)
    assert len(running["sub"].on("stats")) > n


def test_malformed_and_unknown_are_answered(running):
    r = ask(running, "pause", b"{not json")
    assert r["ok"] is False and "malformed JSON" in r["error"]
    r = ask(running, "stats", b"[1, 2]")
    assert r["ok"] is False and "JSON object" in r["error"]
    r = ask(running, "explode", {})
    assert r["ok"] is False and "unknown command 'explode'" in r["error"] and r["id"]
    err = json.loads(running["sub"].wait_for("errors", lambda p: b"explode" in p, timeout=5))
    assert err["source"] == "command"


def test_mqtt5_response_topic_and_correlation_data(running):
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload, getattr(m.properties, "CorrelationData", None)))
    c.connect("127.0.0.1", running["broker"].port)
    c.subscribe("arm/replies")
    c.loop_start()
    time.sleep(0.3)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "arm/replies"
    props.CorrelationData = b"req-42"
    c.publish(f"{BASE}/cmd/stats", "{}", qos=1, properties=props)
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        time.sleep(0.05)
    c.loop_stop()
    assert got and got[0][0] == "arm/replies" and json.loads(got[0][1])["ok"] and got[0][2] == b"req-42"


names = st.sampled_from(["pause", "resume", "snapshot", "set", "reload", "model", "stats"]) | st.from_regex(
    r"\A[a-z_]{1,10}\Z")
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                    max_size=3), max_leaves=8)
patches = st.fixed_dictionaries({"patch": st.dictionaries(
    st.sampled_from(["detect", "stats", "log", "mqtt", "runtime", "x"]),
    st.dictionaries(st.sampled_from(["confidence", "iou", "classes", "interval_s", "level", "qos", "bogus"]),
                    json_values, max_size=2), max_size=2)})
payloads = st.binary(max_size=40) | json_values.map(json.dumps) | patches.map(json.dumps) | st.just("")


def test_generated_payloads_all_answered_none_crash(running):
    sent = []

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(name=names, payload=payloads)
    def fire(name, payload):
        running["pub"].publish(f"{BASE}/cmd/{name}", payload, qos=1)
        sent.append(name)
        time.sleep(0.002)

    fire()
    assert len(sent) == 1000
    deadline = time.time() + 60
    while time.time() < deadline:
        answered = [t for t, _, _ in running["sub"].messages if t.endswith("/result")]
        if len(answered) >= len(sent):
            break
        time.sleep(0.2)
    answered = [t for t, _, _ in running["sub"].messages if t.endswith("/result")]
    assert len(answered) == len(sent)
    assert running["proc"].poll() is None
    assert ask(running, "resume", {})["ok"]  # still responsive
