"""`ripeye run` end to end against a real mosquitto on a free loopback port, with the shipped model and sample clip."""

import json
import signal
import subprocess
import time

import jsonschema
import pytest

from daemon.schema import DETECTIONS_MESSAGE, ERROR_MESSAGE, STATS_MESSAGE
from tests.conftest import REPO, RIPEYE, daemon_log, start_daemon, write_config


def _cfg(tmp_path, broker, **sections):
    data = {"device_id": "testbox", "source": {"uri": "sample"}, "mqtt": {"port": broker.port,
            "reconnect_min_s": 0.5, "reconnect_max_s": 1}, "stats": {"interval_s": 1},
            "runtime": {"threads": 1}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return write_config(tmp_path / "ripeye.yaml", data)


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return daemon_log(proc)


def test_publishes_schema_valid_detections_status_stats_config(tmp_path, broker, subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    proc = start_daemon(_cfg(tmp_path, broker))
    try:
        sub.wait_for("status", lambda p: p == b"online")
        sub.wait_for("detections", timeout=30)
        sub.wait_for("stats", timeout=10)
        time.sleep(1.0)
        dets = sub.json("detections")
        for msg in dets:
            jsonschema.validate(msg, DETECTIONS_MESSAGE)
            assert not any("xyz_mm" in d for d in msg["detections"])  # a source without depth: as before schema 2
        assert [m["frame_id"] for m in dets] == sorted(m["frame_id"] for m in dets)
        assert dets[-1]["image"] == {"width": 640, "height": 640}
        assert dets[-1]["model"]["version"]
        stats = sub.json("stats")[-1]
        jsonschema.validate(stats, STATS_MESSAGE)
        assert stats["backend"] == dets[-1]["backend"] and stats["camera"]["state"] == "running"
        config = json.loads(sub.wait_for("config"))
        assert config["device_id"] == "testbox"
        late = subscriber_factory(broker.port, "ripeye/testbox/status")  # retained: a late subscriber sees it
        late.wait_for("status", lambda p: p == b"online", timeout=5)
        assert all(r for t, p, r in late.messages)
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert sub.wait_for("status", lambda p: p == b"offline", timeout=5)


def test_two_requests_in_flight_publish_every_frame_in_order(tmp_path, broker, subscriber_factory, model_dir):
    """With runtime.inflight 2 requests finish out of order; detections must still go out in frame order, none lost
    (the clip is played losslessly)."""
    sub = subscriber_factory(broker.port, "ripeye/testbox/detections")
    proc = start_daemon(_cfg(tmp_path, broker, runtime={"threads": 2, "inflight": 2},
                             source={"uri": "sample", "realtime": False}))
    try:
        sub.wait_for("detections", timeout=30)
        deadline = time.time() + 30
        while len(sub.json("detections")) < 150 and time.time() < deadline:
            time.sleep(0.2)
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    ids = [m["frame_id"] for m in sub.json("detections")]
    assert len(ids) >= 150
    assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_status_offline_through_last_will_when_killed(tmp_path, broker, subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, "ripeye/testbox/status")
    proc = start_daemon(_cfg(tmp_path, broker))
    try:
        sub.wait_for("status", lambda p: p == b"online", timeout=20)
        n = len(sub.messages)
        proc.kill()
        proc.wait()
        sub.wait_for("status", lambda p: p == b"offline", timeout=10)
        assert len(sub.messages) > n
    finally:
        _stop(proc)
    # The will is retained: a late subscriber sees offline too.
    late = subscriber_factory(broker.port, "ripeye/testbox/status")
    assert late.wait_for("status", timeout=5) == b"offline"


def test_survives_broker_restart(tmp_path, broker, subscriber_factory, model_dir):
    proc = start_daemon(_cfg(tmp_path, broker))
    try:
        sub = subscriber_factory(broker.port, "ripeye/testbox/#")
        sub.wait_for("detections", timeout=30)
        broker.stop()
        time.sleep(2.0)
        assert proc.poll() is None, "daemon died when the broker went away"
        broker.start()
        sub2 = subscriber_factory(broker.port, "ripeye/testbox/#")
        t0 = time.time()
        sub2.wait_for("status", lambda p: p == b"online", timeout=10)
        sub2.wait_for("detections", timeout=10)
        assert time.time() - t0 < 10
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out


def test_broker_down_at_start_does_not_block_detection(tmp_path, subscriber_factory, model_dir):
    from tests.conftest import Broker

    b = Broker(tmp_path)  # not started yet
    proc = start_daemon(_cfg(tmp_path, b))
    try:
        time.sleep(3.0)
        assert proc.poll() is None
        b.start()
        sub = subscriber_factory(b.port, "ripeye/testbox/#")
        sub.wait_for("detections", timeout=15)
        # stats queued in the outbox while the broker was down may say 0: wait for a fresh one
        sub.wait_for("stats", lambda p: json.loads(p)["processed"] > 0, timeout=10)
    finally:
        _stop(proc)
        b.stop()


def test_missing_model_is_reported_and_daemon_stays_up(tmp_path, broker, subscriber_factory):
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    missing = tmp_path / "no-such-model"
    proc = start_daemon(_cfg(tmp_path, broker, model={"path": str(missing)}))
    try:
        err = json.loads(sub.wait_for("errors", lambda p: b"no-such-model" in p, timeout=20))
        jsonschema.validate(err, ERROR_MESSAGE)
        assert err["source"] == "model" and err["key"] == "model.path"
        sub.wait_for("status", lambda p: p == b"online")
        assert proc.poll() is None
    finally:
        _stop(proc)


def test_corrupt_artifact_falls_back_to_next_backend(tmp_path, broker, subscriber_factory, model_dir):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("openvino", "ncnn", "onnxruntime", "*.pt"))
    (folder / "manifest.json").write_text(json.dumps({"artifacts": [
        {"runtime": "openvino", "precision": "fp32", "files": ["broken.xml"], "accepted": True}]}))
    (folder / "broken.xml").write_text("<net>not really</net>")
    (folder / "broken.bin").write_bytes(b"\x00")
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    # imgsz 640: the folder's own artifacts, whichever size its metadata recommends
    proc = start_daemon(_cfg(tmp_path, broker, model={"path": str(folder), "precision": "fp32", "imgsz": 640},
                             runtime={"backend": "openvino"}))
    try:
        sub.wait_for("errors", lambda p: b"broken.xml" in p, timeout=20)
        det = json.loads(sub.wait_for("detections", timeout=20))
        assert det["backend"] in ("openvino", "onnxruntime")  # the ONNX source loaded after the broken IR
    finally:
        _stop(proc)


def test_camera_that_cannot_open_retries_and_reports(tmp_path, broker, subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    proc = start_daemon(_cfg(tmp_path, broker, source={"uri": str(tmp_path / "gone.mp4"),
                                                         "reconnect_initial_s": 0.2, "reconnect_max_s": 0.8}))
    try:
        sub.wait_for("errors", lambda p: b"gone.mp4" in p, timeout=20)
        stats = json.loads(sub.wait_for("stats", lambda p: b'"reconnecting"' in p, timeout=10))
        assert stats["camera"]["state"] == "reconnecting" and "gone.mp4" in stats["camera"]["last_error"]
        # the file appears: capture recovers and detections flow
        import shutil

        shutil.copy(REPO / "daemon" / "assets" / "sample.mp4", tmp_path / "gone.mp4")
        sub.wait_for("detections", timeout=20)
        assert len([p for p in sub.on("errors") if b"gone.mp4" in p]) >= 2  # retried with backoff
    finally:
        _stop(proc)


def test_invalid_config_exits_nonzero_with_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect:\n  iou: -1\nmqtt:\n  hots: x\n")
    r = subprocess.run([*RIPEYE, "run", "--config", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "detect.iou" in r.stderr and "mqtt.hots" in r.stderr and str(bad) in r.stderr


@pytest.mark.parametrize("extra", [["--source", "sample"]])
def test_cli_overrides_validate(tmp_path, broker, subscriber_factory, model_dir, extra):
    sub = subscriber_factory(broker.port, "ripeye/testbox/detections")
    proc = start_daemon(_cfg(tmp_path, broker, source={"uri": "/nonexistent.mp4"}), *extra)
    try:
        sub.wait_for("detections", timeout=30)
    finally:
        _stop(proc)
