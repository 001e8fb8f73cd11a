"""Proof under faults against a real mosquitto: broker restarts, outages with a bounded queue, a camera that
disappears and returns, and a config file edited over and over while the daemon keeps publishing."""

import json
import shutil
import time

import cv2
import yaml

from tests.conftest import DATASET, Broker, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop


def test_broker_killed_and_restarted_ten_times(tmp_path, subscriber_factory, model_dir):
    broker = Broker(tmp_path)
    broker.start()
    proc = start_daemon(_cfg(tmp_path, broker))
    try:
        sub = subscriber_factory(broker.port, "ripeye/testbox/#")
        sub.wait_for("detections", timeout=30)
        reconnect_s = []
        for _ in range(10):
            broker.proc.kill()  # no clean shutdown: like a crashed broker
            broker.proc.wait()
            broker.proc = None
            time.sleep(1.0)
            assert proc.poll() is None
            broker.start()
            t0 = time.time()
            watcher = subscriber_factory(broker.port, "ripeye/testbox/status")
            watcher.wait_for("status", lambda p: p == b"online", timeout=10)  # retained, republished on reconnect
            fresh = subscriber_factory(broker.port, "ripeye/testbox/detections")
            fresh.wait_for("detections", timeout=10)
            reconnect_s.append(time.time() - t0)
        assert max(reconnect_s) < 2.0 + 0.5, reconnect_s  # 2 s backoff cap, plus the subscribers' own connect
        stats = json.loads(fresh.wait_for("detections"))
        assert stats["frame_id"] > 0
    finally:
        out = _stop(proc)
        broker.stop()
    assert proc.returncode == 0, out


def test_qos1_messages_queued_while_offline_are_delivered_and_bounded(tmp_path, subscriber_factory, model_dir):
    import paho.mqtt.client as mqtt

    store = tmp_path / "store"
    store.mkdir()
    # Persistent broker and a persistent QoS-1 session for the subscriber: whichever of the two clients gets back
    # first after the restart, the broker holds the flushed messages for the subscriber.
    broker = Broker(tmp_path, extra_conf=f"persistence true\npersistence_location {store}/\nuser root\n")
    broker.conf.write_text(broker.conf.read_text().replace("persistence false\n", ""))
    broker.start()
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="arm-1", clean_session=False)
    sub.reconnect_delay_set(0.1, 0.3)
    sub.on_message = lambda c, u, m: got.append({**json.loads(m.payload), "arrived": time.time()})
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("ripeye/testbox/detections", qos=1)
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    bound = 30  # messages
    # Targets off: their announcements share the outbox and outrank detections (the designed priority, unit-tested
    # in test_mqtt_link), so a model that announces more 'lost' targets on the clip would fill it before any
    # detection of the outage; this test is about the detections' queue.
    proc = start_daemon(_cfg(tmp_path, broker, mqtt={"qos": 1, "outbox_size": bound, "reconnect_min_s": 0.2,
                                                     "reconnect_max_s": 0.4}, targets={"enabled": False}))
    try:
        deadline = time.time() + 30
        while not got and time.time() < deadline:
            time.sleep(0.1)
        assert got
        broker.stop()
        t_down = time.time()
        time.sleep(6.0)  # the clip plays at 10 fps: far more detections than the outbox keeps
        t_up = time.time()
        broker.start()
        time.sleep(5.0)
        # what the daemon queued while the broker was away: detected after it went, delivered after it came back
        t_back = min(m["arrived"] for m in got if m["arrived"] > t_up)
        queued = [m for m in got if t_down + 0.5 < m["captured_at"] and m["published_at"] < t_back - 0.05]
        timeline = [(round(m["captured_at"] - t_down, 2), round(m["published_at"] - t_down, 2),
                     round(m["arrived"] - t_down, 2)) for m in got if m["arrived"] > t_down - 1]
        assert 1 <= len(queued) <= bound, (len(queued), timeline)  # delivered, and never more than the bound
        assert [m for m in queued if m["captured_at"] < t_up - 0.3], timeline  # some from inside the outage
        assert not [m for m in queued if m["captured_at"] < t_down + 1.5], "oldest detections must go first"
        ids = [m["frame_id"] for m in queued]
        assert ids == sorted(ids)
    finally:
        sub.loop_stop()
        _stop(proc)
        broker.stop()


def test_camera_folder_removed_mid_run_then_restored(tmp_path, broker, subscriber_factory, model_dir):
    folder = tmp_path / "cam"
    folder.mkdir()
    images = sorted((DATASET / "valid").glob("*.jpg"))[:3] if DATASET.exists() else []
    if not images:
        cap = cv2.VideoCapture(str(model_dir.parent.parent / "daemon" / "assets" / "sample.mp4"))
        for i in range(3):
            cv2.imwrite(str(folder / f"{i}.jpg"), cap.read()[1])
    for im in images:
        shutil.copy(im, folder)
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    proc = start_daemon(_cfg(tmp_path, broker, source={"uri": str(folder), "fps": 5, "reconnect_initial_s": 0.2,
                                                         "reconnect_max_s": 1.0}))
    try:
        sub.wait_for("detections", timeout=30)
        shutil.rmtree(folder)
        sub.wait_for("errors", lambda p: b"cam" in p and b'"camera"' in p, timeout=10)
        stats = json.loads(sub.wait_for("stats", lambda p: b'"reconnecting"' in p, timeout=10))
        assert stats["camera"]["state"] == "reconnecting"
        n = len(sub.on("detections"))
        shutil.copytree(backup, folder)
        deadline = time.time() + 10
        while len(sub.on("detections")) <= n + 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(sub.on("detections")) > n + 2
        assert proc.poll() is None
    finally:
        _stop(proc)


def test_config_edited_twenty_times(tmp_path, broker, subscriber_factory, model_dir):
    path = _cfg(tmp_path, broker)
    base = yaml.safe_load(path.read_text())
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    proc = start_daemon(path)
    try:
        sub.wait_for("detections", timeout=30)
        for i in range(20):
            n_det = len(sub.on("detections"))
            if i % 2 == 0:
                conf = round(0.3 + i / 100, 2)
                data = {**base, "detect": {"confidence": conf}}
                path.write_text(yaml.safe_dump(data))
                sub.wait_for("config", lambda p, c=conf: json.loads(p)["detect"]["confidence"] == c, timeout=5)
            else:
                bad = ["detect: {confidence: 3}\n", "detect: [unclosed\n", f"{yaml.safe_dump(base)}bogus_key: 1\n"][
                    i % 3]
                path.write_text(bad)
                sub.wait_for("errors", lambda p, k=len(sub.on("errors")): len(sub.on("errors")) > k, timeout=5)
            time.sleep(0.3)
            deadline = time.time() + 5
            while len(sub.on("detections")) <= n_det and time.time() < deadline:
                time.sleep(0.05)
            assert len(sub.on("detections")) > n_det, f"publishing stopped after edit {i}"
        errors = [json.loads(p) for p in sub.on("errors")]
        assert {e.get("key") for e in errors} >= {"detect.confidence", "bogus_key"}
        assert any("invalid YAML" in e["message"] and str(path) in e["message"] for e in errors)
        assert proc.poll() is None
    finally:
        _stop(proc)
