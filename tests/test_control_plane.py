"""Control-plane defenses against a real mosquitto: secrets redacted, retained commands refused, honest health."""

import json
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from daemon.redact import redact
from tests.conftest import REPO, RIPEYE, free_port, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop

SECRET = "Hunter2Secret"


@pytest.mark.parametrize("uri, kept", [
    (f"rtsp://cam:{SECRET}@10.0.0.5:554/live", "rtsp://cam:***@10.0.0.5:554/live"),
    (f"rtsp://cam:p@{SECRET}@10.0.0.5/live", "rtsp://cam:***@10.0.0.5/live"),  # unescaped '@' in the password
    (f"https://{SECRET}@cam.local/snap.jpg", "https://***@cam.local/snap.jpg"),  # a lone userinfo is a token
    (f"mqtts://user:{SECRET}@broker:8883", "mqtts://user:***@broker:8883"),
    (f"http://cam/snap.cgi?user=admin&pwd={SECRET}&ch=1", "http://cam/snap.cgi?user=admin&pwd=***&ch=1"),
    (f'rtspsrc location="rtsp://admin:{SECRET}@cam/s" user-id=admin user-pw={SECRET} ! decodebin ! appsink',
     'rtspsrc location="rtsp://admin:***@cam/s" user-id=admin user-pw=*** ! decodebin ! appsink'),
    ("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live"),
    ("/dev/video0", "/dev/video0"),
])
def test_redact_masks_credentials_and_keeps_the_rest(uri, kept):
    assert redact(uri) == kept


def test_rtsp_password_not_on_retained_config_stats_errors_or_log(tmp_path, broker, subscriber_factory):
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    uri = f"rtsp://cam:{SECRET}@127.0.0.1:9/live"  # port 9: refused at once, the camera keeps reconnecting
    pipeline = f"rtspsrc location=rtsp://cam:{SECRET}@127.0.0.1:9/x user-pw={SECRET} ! decodebin ! appsink"
    proc = start_daemon(_cfg(tmp_path, broker, source={"uri": uri, "reconnect_max_s": 1},
                             model={"alternatives": {"gst": pipeline}}))
    try:
        config = json.loads(sub.wait_for("config", timeout=30))
        sub.wait_for("stats", lambda p: b"reconnecting" in p, timeout=30)
        sub.wait_for("errors", lambda p: b"camera" in p, timeout=30)
    finally:
        log = _stop(proc)
    assert config["source"]["uri"] == "rtsp://cam:***@127.0.0.1:9/live"
    assert config["model"]["alternatives"]["gst"].count("***") == 2
    leaked = [t for t, p, _ in sub.messages if SECRET.encode() in p]
    assert not leaked, f"password published on {leaked}"
    assert SECRET not in log


def _publish_retained(port, topic, payload):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_retained_commands_are_ignored_and_reported(tmp_path, broker, subscriber_factory, model_dir):
    base = "ripeye/testbox"
    _publish_retained(broker.port, f"{base}/cmd/pause", "{}")
    _publish_retained(broker.port, f"{base}/arm/picked", '{"track_id": 1}')
    sub = subscriber_factory(broker.port, f"{base}/#")
    proc = start_daemon(_cfg(tmp_path, broker))
    try:
        first = sub.wait_for("errors", lambda p: b"cmd/pause" in p, timeout=30)
        sub.wait_for("errors", lambda p: b"arm/picked" in p, timeout=10)
        sub.wait_for("detections", timeout=30)  # not paused
        stats = json.loads(sub.wait_for("stats", timeout=10))
    finally:
        _stop(proc)
    assert "retained" in json.loads(first)["message"]
    assert stats["paused"] is False
    assert not sub.on("cmd/pause/result") and not sub.on("arm/picked/result")


def _client(port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_failed_after_picked_over_mqtt_is_refused_and_target_never_comes_back(tmp_path, broker, subscriber_factory,
                                                                              model_dir):
    base = "ripeye/testbox"
    sub = subscriber_factory(broker.port, f"{base}/#")
    proc = start_daemon(_cfg(tmp_path, broker, targets={"picked_window_s": 60}))
    arm = _client(broker.port)
    try:
        offer = json.loads(sub.wait_for("targets", lambda p: b'"available"' in p, timeout=60))
        tid = offer["track_id"]
        for action in ("claim", "picked", "failed"):
            arm.publish(f"{base}/arm/{action}", json.dumps({"arm_id": "left", "track_id": tid, "id": action}), qos=1)
            sub.wait_for(f"arm/{action}/result", timeout=10)
        after = len(sub.messages)
        time.sleep(2.0)
        later = [json.loads(p) for t, p, _ in sub.messages[after:] if t == f"{base}/targets"]
    finally:
        arm.loop_stop()
        _stop(proc)
    claim, picked, failed = (sub.json(f"arm/{a}/result")[-1] for a in ("claim", "picked", "failed"))
    assert claim["ok"] and picked["ok"]
    assert not [m for m in later if m["track_id"] == tid and m["state"] == "available"]
    assert failed["ok"] is False and "already reported picked" in failed["error"], failed
    assert picked["claimed"] is True


def _healthz(base):
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_health(base, status, timeout=30):
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        try:
            got = _healthz(base)
            if got[0] == status:
                return got[1]
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/healthz never answered {status}; last {got}")


def test_healthz_not_ready_while_paused_and_stats_say_who(tmp_path, broker, subscriber_factory, model_dir):
    port = free_port()
    base = "ripeye/testbox"
    sub = subscriber_factory(broker.port, f"{base}/#")
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "port": port}))
    ctl = _client(broker.port)
    web = f"http://127.0.0.1:{port}"
    try:
        _wait_health(web, 200)
        ctl.publish(f"{base}/cmd/pause", json.dumps({"id": "p1", "reason": "arm maintenance"}), qos=1)
        body = _wait_health(web, 503, timeout=10)
        n = len(sub.on("stats"))
        stats = json.loads(sub.wait_for("stats", lambda p: b'"paused":true' in p and len(sub.on("stats")) > n))
        ctl.publish(f"{base}/cmd/resume", "{}", qos=1)
        _wait_health(web, 200, timeout=20)
    finally:
        ctl.loop_stop()
        _stop(proc)
    assert body["ok"] is False and "paused by cmd/pause" in body["reason"] and "arm maintenance" in body["reason"]
    assert body["watchdog_ok"] is True  # a handled wait is not a hang: the systemd watchdog keeps being fed
    assert stats["paused_by"]["command"] == "cmd/pause" and stats["paused_by"]["reason"] == "arm maintenance"


def test_healthz_not_ready_without_a_loadable_model(tmp_path, broker, model_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    port = free_port()
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "port": port}, model={"path": str(broken)}))
    try:
        body = _wait_health(f"http://127.0.0.1:{port}", 503)
    finally:
        _stop(proc)
    assert body["ok"] is False and "no loadable model" in body["reason"] and str(broken) in body["reason"]


def test_command_flood_loses_no_detections(tmp_path, broker, subscriber_factory, model_dir):
    base = "ripeye/testbox"
    dets = subscriber_factory(broker.port, f"{base}/detections")
    stats = subscriber_factory(broker.port, f"{base}/stats")
    # not realtime: the clip waits for the pipeline, so every frame is processed and a gap is a lost message
    proc = start_daemon(_cfg(tmp_path, broker, source={"realtime": False}, stats={"interval_s": 0.5}))
    flood = _client(broker.port)
    try:
        dets.wait_for("detections", lambda p: len(dets.on("detections")) > 20, timeout=60)  # past the warm-up
        before = len(dets.on("detections"))
        for i in range(1000):  # QoS 0, as fast as the client goes; half of them also make an `errors` message
            flood.publish(f"{base}/cmd/{'resume' if i % 2 else 'nonsense'}", json.dumps({"id": i}), qos=0)
        time.sleep(3.0)
        n = len(stats.on("stats"))
        stats.wait_for("stats", lambda p: len(stats.on("stats")) > n, timeout=10)
        last = stats.json("stats")[-1]
    finally:
        flood.loop_stop()
        _stop(proc)
    ids = [m["frame_id"] for m in dets.json("detections")][before - 1:]
    assert len(ids) > 10
    gaps = [(a, b) for a, b in zip(ids, ids[1:]) if b != a + 1]
    assert not gaps, f"detections lost between frames {gaps[:10]}; stats {last['dropped_frames']} {last['mqtt']}"
    assert last["mqtt"]["outbox_dropped"] == 0 or last["mqtt"]["dropped"].get("detections", 0) == 0, last["mqtt"]
    assert last["mqtt"]["dropped"].get("detections", 0) == 0


def _ask(sub, client, topic, body: str, rid: str, timeout=10):
    """Publish a raw request body carrying "id": rid and wait for its answer on <topic>/result."""
    client.publish(f"ripeye/testbox/{topic}", body, qos=1)
    return json.loads(sub.wait_for(f"{topic}/result", lambda p: rid.encode() in p, timeout))


def _ask_raw(sub, client, topic, body: str, timeout=10):
    """Publish a body that cannot carry an id; wait for the next answer on <topic>/result."""
    n = len(sub.on(f"{topic}/result"))
    client.publish(f"ripeye/testbox/{topic}", body, qos=1)
    sub.wait_for(f"{topic}/result", lambda p: len(sub.on(f"{topic}/result")) > n, timeout)
    return json.loads(sub.on(f"{topic}/result")[-1])


def test_strict_request_values_and_deep_json_get_clear_answers(tmp_path, broker, subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    proc = start_daemon(_cfg(tmp_path, broker, state_dir=str(tmp_path / "state")))
    ctl = _client(broker.port)
    deep = "[" * 100_000 + "]" * 100_000
    try:
        sub.wait_for("detections", timeout=30)
        persist = _ask(sub, ctl, "cmd/set", '{"id": "id-persist", "patch": {"detect": {"confidence": 0.3}}, '
                       '"persist": "false"}', "id-persist")
        quality = {q: _ask(sub, ctl, "cmd/snapshot", f'{{"id": "id-q{i}", "quality": {q}}}', f"id-q{i}")
                   for i, q in enumerate(['"abc"', "1e400", "0", "101", "true"])}
        annotate = _ask(sub, ctl, "cmd/snapshot", '{"id": "id-annotate", "annotate": "yes"}', "id-annotate")
        good = _ask(sub, ctl, "cmd/snapshot", '{"id": "id-good", "quality": 50, "annotate": true}', "id-good")
        deep_cmd = _ask_raw(sub, ctl, "cmd/stats", deep)
        deep_arm = _ask_raw(sub, ctl, "arm/claim", deep)
        alive = _ask(sub, ctl, "cmd/resume", '{"id": "id-alive"}', "id-alive")
    finally:
        ctl.loop_stop()
        log = _stop(proc)
    assert persist["ok"] is False and '"persist" must be true or false' in persist["error"], persist
    assert not (tmp_path / "state" / "overrides.yaml").exists()
    for q, reply in quality.items():
        # 1e400 is infinite as a float: refused before any command sees it (non-finite numbers never get stored)
        expected = "only finite numbers" if q == "1e400" else '"quality" must be an integer from 1 to 100'
        assert reply["ok"] is False and expected in reply["error"], (q, reply)
    assert annotate["ok"] is False and '"annotate" must be true or false' in annotate["error"]
    assert good["ok"] is True
    for reply in (deep_cmd, deep_arm):
        assert reply["ok"] is False and reply["error"].startswith("malformed request"), reply
    assert alive["ok"] and "internal error" not in log and "RecursionError" not in log


def _model_with_corrupt_manifest(tmp_path, model_dir):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "metadata.json"):
        (folder / name).symlink_to(model_dir / name)
    (folder / "manifest.json").write_text('{"artifacts": [{"runtime": "openvino", ')  # cut short by a full disk
    return folder


def test_corrupt_manifest_does_not_disable_an_intact_onnx(tmp_path, broker, subscriber_factory, model_dir):
    folder = _model_with_corrupt_manifest(tmp_path, model_dir)
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    proc = start_daemon(_cfg(tmp_path, broker, model={"path": str(folder)}))
    try:
        det = json.loads(sub.wait_for("detections", timeout=60))
        err = json.loads(sub.wait_for("errors", lambda p: b"manifest.json" in p, timeout=10))
    finally:
        _stop(proc)
    assert det["model"]["name"] and err["source"] == "model" and str(folder / "manifest.json") in err["message"]
    cfg = _cfg(tmp_path, broker, model={"path": str(folder)})
    check = subprocess.run([*RIPEYE, "config", "check", str(cfg)], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 1 and str(folder / "manifest.json") in check.stderr, check


def _threads(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_idle_http_connections_are_bounded_and_closed(tmp_path, broker, model_dir):
    port = free_port()
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "port": port, "idle_timeout_s": 1,
                                                     "max_connections": 8}))
    web = f"http://127.0.0.1:{port}"
    sockets = []
    try:
        _wait_health(web, 200)
        time.sleep(1.0)
        before = _threads(proc.pid)
        for _ in range(200):  # connect and say nothing, like a port scanner or a stuck client
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        during = _threads(proc.pid)
        deadline = time.time() + 10
        open_ = sockets
        while open_ and time.time() < deadline:  # the server closes each one: past the limit at once, others idle
            readable, _, _ = select.select(open_, [], [], 0.5)
            for s in readable:
                try:
                    s.recv(4096)
                except OSError:
                    pass
                s.close()
            open_ = [s for s in open_ if s.fileno() != -1]
        status = _healthz(web)[0]
    finally:
        for s in sockets:
            s.close()
        _stop(proc)
    assert during - before <= 8 + 2, f"{during - before} threads added for 200 idle connections"
    assert not open_, f"{len(open_)} idle connections still open after the idle timeout"
    assert status == 200
