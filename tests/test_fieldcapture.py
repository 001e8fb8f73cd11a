"""Field capture (issue 28, item 1): the store's durability and bound, and the daemon keeping failed picks, uncertain
fruit, the operator's frames and random samples on the sample clip with a real mosquitto and an arm failing."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np

from daemon.fieldstore import PARTIAL, FieldStore
from tests.conftest import REPO, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop

BASE = "ripeye/testbox"


def _whole(sample) -> bool:
    labels = json.loads((sample / "labels.json").read_text())
    image = cv2.imread(str(sample / "image.jpg"))
    return image is not None and image.shape[1] == labels["image"]["width"]


def test_store_writes_whole_samples_and_evicts_the_oldest(tmp_path):
    store = FieldStore(tmp_path)
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for i in range(5):
        store.write("uncertain" if i % 2 else "failed", f"2026120{i}T000000-f{i}-{i}",
                    {"image.jpg": jpeg, "labels.json": json.dumps({"image": {"width": 8}}).encode()})
    (tmp_path / "failed" / f"{PARTIAL}cut-by-a-power-loss").mkdir()  # what a power cut mid-write leaves
    again = FieldStore(tmp_path)
    assert not (tmp_path / "failed" / f"{PARTIAL}cut-by-a-power-loss").exists()
    assert again.counts() == {"failed": 3, "uncertain": 2} and again.bytes == store.bytes
    per_sample = store.bytes // 5
    assert again.evict(per_sample * 3) == 2
    left = sorted(p.name for p, _ in again.samples)
    assert left[0].startswith("20261202") and len(left) == 3  # the two oldest went, across triggers


def test_sigkill_while_writing_leaves_only_whole_samples(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, cv2
        sys.path.insert(0, {str(REPO)!r})
        from daemon.fieldstore import FieldStore
        store = FieldStore(__import__("pathlib").Path({str(tmp_path)!r}))
        jpeg = cv2.imencode(".jpg", np.random.randint(0, 255, (480, 640, 3), np.uint8))[1].tobytes()
        i = 0
        while True:
            i += 1
            store.write("sample", f"20261205T000000-f{{i}}-{{i}}",
                        {{"image.jpg": jpeg, "labels.json": json.dumps({{"image": {{"width": 640}}}}).encode()}})
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(20):  # let it write a few, then cut it off mid-stream
        proc.stdout.readline()
    time.sleep(0.013)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    samples = [p for p in (tmp_path / "sample").iterdir()]
    whole = [p for p in samples if not p.name.startswith(PARTIAL)]
    assert len(whole) >= 20 and all(_whole(p) for p in whole)
    FieldStore(tmp_path)  # the next start removes whatever the kill left half-written
    assert all(not p.name.startswith(PARTIAL) for p in (tmp_path / "sample").iterdir())


def test_the_daemon_keeps_failed_picks_uncertain_fruit_operator_frames_and_samples(tmp_path, broker,
                                                                                   subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    store = tmp_path / "store"
    proc = start_daemon(_cfg(tmp_path, broker, capture={"enabled": True, "dir": str(store), "sample_per_hour": 3600,
                                                        "per_hour": {"uncertain": 5, "class_change": 5}}))
    arm = subprocess.Popen([sys.executable, str(REPO / "examples" / "arm_client.py"), "--port", str(broker.port),
                            "--device", "testbox", "--arm-id", "left", "--fail-rate", "1.0", "--pick-time", "0.3",
                            "--seconds", "60"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import paho.mqtt.client as mqtt

    ctl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    ctl.connect("127.0.0.1", broker.port)
    ctl.loop_start()
    try:
        sub.wait_for("detections", timeout=60)
        ctl.publish(f"{BASE}/cmd/capture", json.dumps({"note": "leaf over the fruit", "id": "c1"}), qos=1)
        reply = json.loads(sub.wait_for("cmd/capture/result", timeout=10))
        deadline = time.time() + 45
        while time.time() < deadline:
            kept = {json.loads(p)["trigger"] for p in sub.on("capture")}
            if {"failed", "uncertain", "operator", "sample"} <= kept:
                break
            time.sleep(0.5)
        time.sleep(1.5)
        sub.wait_for("stats", lambda p: b'"failed"' in p, timeout=10)
        stats = [json.loads(p) for p in sub.on("stats") if b'"capture"' in p][-1]
    finally:
        arm.terminate()
        ctl.loop_stop()
        _stop(proc)
    assert reply["ok"] and reply["queued"], reply
    assert {"failed", "uncertain", "operator", "sample"} <= kept, kept
    failed = [json.loads((p / "labels.json").read_text()) for p in (store / "failed").iterdir()]
    assert {f["which"] for f in failed} == {"offered", "latest"}, failed  # the offer's frame and the track's last
    assert all(f["arm_id"] == "left" and f["reason"] and f["model"]["version"] for f in failed)
    operator = json.loads(next((store / "operator").iterdir()).joinpath("labels.json").read_text())
    assert operator["note"] == "leaf over the fruit" and operator["detections"], operator
    for sample in (p for t in store.iterdir() for p in t.iterdir()):
        assert _whole(sample), sample
        labels = json.loads((sample / "labels.json").read_text())
        h, w = cv2.imread(str(sample / "image.jpg")).shape[:2]
        assert all(0 <= d["box"][0] < d["box"][2] <= w and 0 <= d["box"][1] < d["box"][3] <= h
                   for d in labels["detections"]), labels  # draft labels in the full frame's pixels
    assert len(list((store / "uncertain").iterdir())) <= 5  # the hourly bound holds
    assert stats["capture"]["kept"]["failed"] >= 2 and stats["capture"]["mb"] > 0, stats["capture"]


def test_a_full_disk_stops_capture_with_one_error_and_never_detection(tmp_path, broker, subscriber_factory,
                                                                      model_dir):
    import pytest

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    try:
        proc = start_daemon(_cfg(tmp_path, broker, capture={"enabled": True, "dir": str(small), "max_mb": 100,
                                                            "sample_per_hour": 36000,
                                                            "per_hour": {"sample": 10000}}))
        try:
            sub.wait_for("errors", lambda p: b"disk full" in p, timeout=60)
            n = len(sub.on("detections"))
            time.sleep(4)
            assert len(sub.on("detections")) >= n + 3  # detection goes on
        finally:
            _stop(proc)
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    full = [json.loads(p) for p in sub.on("errors") if b"disk full" in p]
    assert len(full) == 1 and full[0]["key"] == "capture.dir", full
