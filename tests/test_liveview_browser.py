"""The operator's live view in a real browser (Debian's chromium, driven by selenium through chromium-driver) against
the daemon on the sample clip and a real mosquitto: the panel lists what `targets` announced, Pause pressed in the
page stops detections on MQTT and /healthz says who paused it, Resume brings them back, the snapshot downloads;
commands need a same-origin JSON request and, beyond loopback, the token (issue 32)."""

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import free_port, start_daemon
from tests.test_control_plane import _healthz
from tests.test_daemon_mqtt import _cfg, _stop

BASE = "ripeye/testbox"


def _browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromium-driver are needed (./install.sh --dev installs them from apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1300,760", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_operator_sees_the_targets_mqtt_announced_and_pauses_from_the_page(tmp_path, broker, subscriber_factory,
                                                                           model_dir):
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    arrivals: list[tuple[float, dict]] = []
    sub.client.on_message = (lambda c, u, m: (sub.messages.append((m.topic, m.payload, bool(m.retain))),
                                              arrivals.append((time.time(), json.loads(m.payload)))
                                              if m.topic == f"{BASE}/targets" else None))
    port = free_port()
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "port": port},
                             capture={"enabled": True, "dir": str(tmp_path / "capture"), "sample_per_hour": 0}))
    arm = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    arm.connect("127.0.0.1", broker.port)
    arm.loop_start()
    web = f"http://127.0.0.1:{port}"
    browser = None
    try:
        sub.wait_for("targets", lambda p: b'"available"' in p, timeout=60)
        browser = _browser(tmp_path)
        browser.get(web + "/")

        def panel_rows():  # read in one go: the panel re-renders every poll
            return browser.execute_script("return [...document.querySelectorAll('#targets tr')].map("
                                          "r => [+r.dataset.id, r.cells[1].textContent, r.cells[2].textContent])")

        rows = _until(lambda: [r for r in panel_rows() if r[1] == "available"], 30, "available targets in the panel")
        seen_at = time.time()
        announced = {m["track_id"] for t, m in arrivals if seen_at - 6 <= t <= seen_at and m["state"] == "available"}
        assert {tid for tid, _, _ in rows} <= announced, (rows, announced)  # every one of them announced just now
        # a target an arm claims shows as claimed, by that arm (claimed from what the page lists, so it is in view)
        tid = rows[-1][0]
        arm.publish(f"{BASE}/arm/left/claim", json.dumps({"arm_id": "left", "track_id": tid}), qos=1)
        sub.wait_for("arm/left/result", timeout=10)
        if sub.json("arm/left/result")[-1]["granted"]:
            claimed = _until(lambda: [r for r in panel_rows() if r[0] == tid and r[1] != "available"], 10,
                             "the claim in the panel")
            assert claimed[0][1:] in (["claimed", "left"], ["lost", ""]), claimed  # claimed, or gone from view
        time.sleep(1.0)  # the stream catches up with the claim
        # the README's picture (RIPEYE_SCREENSHOT_DIR=docs), before the test below adds an error to the panel
        shots = Path(os.environ.get("RIPEYE_SCREENSHOT_DIR", tmp_path))
        browser.save_screenshot(str(shots / "liveview.png"))
        # what the panel shows of errors is text, never markup (an unknown command's name comes from anyone)
        arm.publish(f"{BASE}/cmd/<img src=x onerror=window.pwned=1>", "{}", qos=1)
        _until(lambda: "<img src=x" in browser.find_element("id", "errors").text, 15, "the error in the panel")
        assert browser.find_elements("css selector", "#errors img") == []
        assert browser.execute_script("return window.pwned") is None
        status = browser.find_element("id", "status").text
        assert "running" in status and "mqtt: connected" in status and "fps" in status, status

        browser.find_element("id", "reason").send_keys("arm service")
        browser.find_element("id", "pause").click()
        _until(lambda: browser.find_element("id", "answer").get_attribute("data-ok") == "true", 10, "pause answered")
        paused_at = time.time()
        status, health = _healthz(web)
        assert status == 503 and "paused by cmd/pause" in health["reason"] and "arm service" in health["reason"]
        assert "live view 127.0.0.1" in health["reason"], health  # who: the page, from which address
        time.sleep(3)
        n = len(sub.on("detections"))
        time.sleep(3)
        assert len(sub.on("detections")) == n, "detections kept coming while paused"
        _until(lambda: "PAUSED" in browser.find_element("id", "status").text, 10, "the panel to say paused")
        browser.save_screenshot(str(tmp_path / "paused.png"))

        browser.find_element("id", "resume").click()
        sub.wait_for("detections", lambda p: len(sub.on("detections")) > n, timeout=20)
        browser.find_element("id", "capture").click()  # kept for labelling: the same answer as cmd/capture
        sub.wait_for("capture", lambda p: json.loads(p)["trigger"] == "operator", timeout=20)
        browser.find_element("id", "rollback").click()  # no previous model here: refused, as cmd/model/rollback is
        _until(lambda: "nothing to roll back to" in browser.find_element("id", "answer").text, 10, "rollback answer")
        with urllib.request.urlopen(web + "/snapshot.jpg", timeout=10) as r:
            jpeg = r.read()
        assert browser.find_element("css selector", 'a[href="/snapshot.jpg"]').get_attribute("download")
    finally:
        if browser:
            browser.quit()
        arm.loop_stop()
        _stop(proc)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 100
    assert paused_at > 0


def _post(url, body, headers):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_commands_need_the_token_and_a_same_origin_json_request(tmp_path, broker, model_dir):
    port = free_port()
    (tmp_path / "token").write_text("s3cret\n")
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "port": port,
                                                     "token_file": str(tmp_path / "token")}))
    web = f"http://127.0.0.1:{port}"
    ok_headers = {"Content-Type": "application/json", "X-Ripeye-Request": "1", "Authorization": "Bearer s3cret"}
    try:
        def up() -> bool:
            try:
                return _post(web + "/api/cmd/stats", {}, ok_headers)[0] == 200
            except OSError:  # not listening yet
                return False

        _until(up, 60, "the live view")
        no_token = _post(web + "/api/cmd/pause", {}, {k: v for k, v in ok_headers.items() if k != "Authorization"})
        form = _post(web + "/api/cmd/pause", {}, {"Content-Type": "application/x-www-form-urlencoded",
                                                   "Authorization": "Bearer s3cret"})
        no_header = _post(web + "/api/cmd/pause", {}, {k: v for k, v in ok_headers.items() if k != "X-Ripeye-Request"})
        cross = _post(web + "/api/cmd/pause", {}, {**ok_headers, "Origin": "http://evil.example"})
        bad = _post(web + "/api/cmd/pause", {"reason": 7}, ok_headers)  # the same answer as on MQTT
        state = json.loads(urllib.request.urlopen(urllib.request.Request(
            web + "/api/state", headers={"Authorization": "Bearer s3cret"}), timeout=5).read())
    finally:
        _stop(proc)
    assert no_token[0] == 401
    assert form[0] == 403 and no_header[0] == 403 and cross[0] == 403
    assert state["paused"] is False  # none of the refused requests paused it
    assert bad[0] == 400 and bad[1]["ok"] is False and '"reason" must be a string' in bad[1]["error"]
    assert len(json.dumps(state)) < 1500  # one panel update: well under 1 KB per 2 s poll with a few targets
