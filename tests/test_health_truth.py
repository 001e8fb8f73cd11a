"""Health that tells the truth (issue 27, items 8-11): the MQTT link's state in /healthz, /metrics and the log; an
unreadable image skipped, not looped on; slow-header clients cut off with a slot kept for loopback probes; the
device id escaped, /healthz terse to strangers, HEAD answered, one model retry per interval."""

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import cv2
import pytest

from daemon.config import Config
from daemon.pipeline import Daemon
from tests.conftest import Broker, free_port, start_daemon, write_config
from tests.test_daemon_mqtt import _cfg, _stop

BASE = "ripeye/testbox"


def _get(url, token=None, method="GET"):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _health_until(url, predicate, timeout=30.0):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            status, body = _get(url + "/healthz")
            last = (status, json.loads(body))
            if predicate(last[1]):
                return last
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"/healthz never matched; last {last}")


def _link_case(tmp_path, mqtt: dict, expect_state: str, expect_text: str):
    port = free_port()
    cfg = write_config(tmp_path / f"{expect_state}.yaml", {
        "device_id": "testbox", "source": {"uri": "sample"}, "runtime": {"threads": 1},
        "http": {"enabled": True, "port": port},
        "mqtt": {"reconnect_min_s": 0.5, "reconnect_max_s": 1, **mqtt}})
    proc = start_daemon(cfg)
    web = f"http://127.0.0.1:{port}"
    try:
        status, body = _health_until(web, lambda b: (b.get("mqtt") or {}).get("state") == expect_state
                                     and "camera" not in b["reason"] and "model" not in b["reason"], timeout=40)
        metrics = _get(web + "/metrics")[1].decode()
    finally:
        log = _stop(proc)
    assert status == 503 and body["ok"] is False and f"mqtt {expect_state}" in body["reason"], body
    assert expect_text in body["mqtt"]["last_error"], body
    assert "ripeye_mqtt_connected 0.0" in metrics
    assert "mqtt: cannot connect to" in log and expect_text in log, log


def test_a_broker_on_the_wrong_port_shows_in_health_metrics_and_log(tmp_path, model_dir):
    _link_case(tmp_path, {"port": free_port()}, "unreachable", "refused")


def test_a_refused_login_shows_in_health(tmp_path, model_dir):
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd is needed (./install.sh --dev installs mosquitto)")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "device", "right"], check=True, capture_output=True)
    b = Broker(tmp_path)
    b.conf.write_text(f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
                      f"persistence false\nlistener {b.port} 127.0.0.1\nuser root\n")
    b.start()
    (tmp_path / "wrong").write_text("wrong\n")
    try:
        _link_case(tmp_path, {"port": b.port, "username": "device", "password_file": str(tmp_path / "wrong")},
                   "refused", "refused the connection")
    finally:
        b.stop()


def test_tls_to_a_plain_port_shows_in_health(tmp_path, broker, model_dir):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.crt")], check=True,
                   capture_output=True)
    _link_case(tmp_path, {"port": broker.port, "tls": True, "tls_ca_certs": str(tmp_path / "ca.crt")},
               "unreachable", "TLS")


def test_an_unreadable_image_in_a_folder_is_skipped_and_reported(tmp_path, broker, subscriber_factory, model_dir):
    from daemon.config import SAMPLE_CLIP

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "000-empty.jpg").write_bytes(b"")  # first in name order
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    for i in range(3):
        ok, frame = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"{i + 1:03d}.jpg"), frame)
    cap.release()
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    proc = start_daemon(_cfg(tmp_path, broker, source={"uri": str(folder), "fps": 5}))
    try:
        sub.wait_for("errors", lambda p: b"000-empty.jpg" in p, timeout=40)
        sub.wait_for("detections", lambda p: json.loads(p)["frame_id"] >= 6, timeout=30)  # two loops and more
        time.sleep(1.5)
    finally:
        _stop(proc)
    reports = [e for e in sub.json("errors") if "000-empty.jpg" in e["message"]]
    assert len(reports) == 1 and "0 bytes" in reports[0]["message"], reports  # said once, not every loop
    assert sub.json("stats")[-1]["camera"]["state"] == "running"


def _host_address() -> str:
    """A non-loopback address of this machine, for clients the server must not take for loopback ones."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        address = ""
    if not address or address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address on this machine")
    return address


def _trickle(address, port, stop, closed_after, i):
    """A slowloris client: one header byte every 0.5 s until the server closes the connection."""
    started = time.time()
    try:
        with socket.create_connection((address, port), timeout=30) as s:
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                if stop.is_set():
                    return
                s.sendall(bytes([byte]))
                time.sleep(0.5)
    except OSError:
        pass
    closed_after[i] = time.time() - started


def test_slow_header_clients_are_cut_off_and_loopback_probes_still_answer(tmp_path, broker, model_dir):
    address = _host_address()
    port = free_port()
    (tmp_path / "token").write_text("t0ken\n")
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "host": "0.0.0.0", "port": port,
                                                     "token_file": str(tmp_path / "token"), "max_connections": 4,
                                                     "header_timeout_s": 3}))
    stop = threading.Event()
    closed_after: dict[int, float] = {}
    try:
        _health_until(f"http://127.0.0.1:{port}", lambda b: True, timeout=40)
        attackers = [threading.Thread(target=_trickle, args=(address, port, stop, closed_after, i), daemon=True)
                     for i in range(8)]
        for t in attackers:
            t.start()
        time.sleep(1.5)  # every ordinary slot is held by a trickling client now
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status in (200, 503) and "ready" in json.loads(body), (status, body)  # a loopback probe answers
        stranger = _get(f"http://{address}:{port}/healthz")
        assert stranger[0] == 503 and stranger[1] == b""  # a remote client finds the slots full
        for t in attackers:
            t.join(timeout=15)
    finally:
        stop.set()
        _stop(proc)
    held = sorted(closed_after.values())
    assert held and max(held) < 3 + 3, held  # cut off at header_timeout_s, not left trickling


def test_device_id_escaped_healthz_terse_to_strangers_and_head_answered(tmp_path, broker, model_dir):
    address = _host_address()
    port = free_port()
    (tmp_path / "token").write_text("t0ken\n")
    proc = start_daemon(_cfg(tmp_path, broker, device_id="<img src=x onerror=alert(1)>",
                             http={"enabled": True, "host": "0.0.0.0", "port": port,
                                   "token_file": str(tmp_path / "token")},
                             source={"uri": "rtsp://grower:secret@10.9.8.7:554/greenhouse-3"}))
    web = f"http://{address}:{port}"
    try:
        _health_until(f"http://127.0.0.1:{port}", lambda b: "camera" in b.get("reason", ""), timeout=40)
        page = _get(web + "/", "t0ken")[1].decode()
        stranger = json.loads(_get(web + "/healthz")[1])
        insider = json.loads(_get(web + "/healthz", "t0ken")[1])
        head = _get(web + "/", "t0ken", method="HEAD")
        head_health = _get(web + "/healthz", method="HEAD")
    finally:
        _stop(proc)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert set(stranger) == {"ok", "ready", "watchdog_ok"}, stranger
    assert "camera" in insider["reason"] and insider["camera"] == "reconnecting", insider  # the token shows all
    assert head[0] == 200 and head[1] == b"" and head_health[0] in (200, 503) and head_health[1] == b""


def test_a_model_that_cannot_load_is_retried_once_per_interval(tmp_path):
    cfg = Config.model_validate({"model": {"path": str(tmp_path / "missing")}, "mqtt": {"enabled": False}})
    d = Daemon(cfg)
    d.MODEL_RETRY_S = 0.5
    tries = []
    d._load_detector = lambda *a: tries.append(time.monotonic()) or False
    t = threading.Thread(target=d._housekeeping_loop, daemon=True)
    t.start()
    time.sleep(2.6)
    d.stop_event.set()
    t.join(timeout=5)
    assert 4 <= len(tries) <= 5, tries  # one try per 0.5 s interval (the old check fired twice per interval)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert min(gaps) >= 0.45, gaps
