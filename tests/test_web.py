"""The optional HTTP server: live view page in a real headless Chromium, Prometheus metrics, health check."""

import json
import shutil
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from tests.conftest import free_port, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


@pytest.fixture
def web_daemon(tmp_path, broker, model_dir):
    port = free_port()
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "port": port},
                             detect={"confidence": 0.05}))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if _get(base + "/healthz")[0] == 200 and b"ripeye_frames_total 0.0" not in _get(base + "/metrics")[2]:
                break
        except OSError:
            pass
        time.sleep(0.3)
    yield base
    _stop(proc)


def test_metrics_and_healthz(web_daemon):
    status, ctype, body = _get(web_daemon + "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("ripeye_fps", "ripeye_frames_total", "ripeye_stage_latency_ms_bucket", "ripeye_dropped_frames",
                 "ripeye_mqtt_reconnects"):
        assert name in text
    frames = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("ripeye_frames_total ")))
    assert frames > 0
    status, _, body = _get(web_daemon + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["ok"] and health["camera"] == "running"


def test_mjpeg_stream_sends_frames(web_daemon):
    with urllib.request.urlopen(web_daemon + "/stream.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = r.read(200_000)
    start = data.index(b"\xff\xd8")
    end = data.index(b"\xff\xd9", start) + 2
    img = cv2.imdecode(np.frombuffer(data[start:end], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (640, 640, 3)


def test_page_in_headless_chromium_shows_stream_with_boxes(web_daemon, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "page.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,800", "--hide-scrollbars",
           "--timeout=4000", f"--screenshot={shot}", web_daemon + "/"]
    subprocess.run(cmd, capture_output=True, timeout=90)
    img = cv2.imread(str(shot))
    assert img is not None, "no screenshot"
    # The page background is #111; the stream fills a 640×640 area with photo content and coloured boxes.
    lit = (img.max(axis=2) > 40).mean()
    assert lit > 0.3, f"stream not visible (lit fraction {lit:.2f})"
    # Boxes are straight runs of the annotation colours: keep pixels near those colours, then only horizontal
    # segments ≥ 25 px long (fruit edges are curved and not one flat colour).
    from daemon.vision import COLOURS

    near = np.zeros(img.shape[:2], np.uint8)
    for bgr in COLOURS.values():
        near |= (np.abs(img.astype(int) - np.array(bgr)).max(axis=2) < 40).astype(np.uint8)
    lines = cv2.morphologyEx(near, cv2.MORPH_OPEN, np.ones((1, 25), np.uint8))
    n_lines, _ = cv2.connectedComponents(lines)
    assert n_lines - 1 >= 4, "no boxes drawn on the stream"
    cv2.imwrite(str(tmp_path / "checked.png"), img)
