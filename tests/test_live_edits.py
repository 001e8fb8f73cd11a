"""Live config edits against a running daemon and a real mosquitto: picked and claimed state survive a tracker
rebuild, an edit naming a missing file or a malformed model is refused whole, merge-patch nulls and non-finite
numbers, and the live view's token and port follow the file (issue 27, items 4-7)."""

import json
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
import yaml

from tests.conftest import REPO, RIPEYE, daemon_log, free_port, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop

BASE = "ripeye/testbox"


def _client(port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _edit(path, **sections):
    data = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data))
    return data


def _next(sub, suffix, n, predicate=lambda m: True, timeout=15.0) -> dict:
    """The first message on `suffix` after the first n that satisfies predicate (JSON)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for m in sub.json(suffix)[n:]:
            if predicate(m):
                return m
        time.sleep(0.05)
    raise AssertionError(f"nothing new on {suffix} within {timeout} s: {sub.json(suffix)[n:]}")


def _arm(client, sub, action, tid, arm_id="left"):
    n = len(sub.on(f"arm/{arm_id}/result"))
    client.publish(f"{BASE}/arm/{arm_id}/{action}", json.dumps({"arm_id": arm_id, "track_id": tid}), qos=1)
    sub.wait_for(f"arm/{arm_id}/result", lambda p: len(sub.on(f"arm/{arm_id}/result")) > n, timeout=10)
    return sub.json(f"arm/{arm_id}/result")[-1]


def test_picked_and_claimed_survive_an_edit_that_rebuilds_the_tracker(tmp_path, broker, subscriber_factory,
                                                                      model_dir):
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    # scene cuts off: a cut in the clip withdraws every target by design, which is not what is tested here
    path = _cfg(tmp_path, broker, targets={"claim_timeout_s": 30, "picked_window_s": 0},
                tracking={"scene_cut_threshold": 0})
    proc = start_daemon(path)
    arm = _client(broker.port)
    try:
        granted: list[int] = []
        deadline = time.time() + 60
        while len(granted) < 2 and time.time() < deadline:  # claim the two newest offers that are still there
            sub.wait_for("targets", lambda p: b'"available"' in p, timeout=60)
            offers = [m["track_id"] for m in sub.json("targets")[-20:] if m["state"] == "available"]
            for tid in dict.fromkeys(reversed(offers)):
                if tid not in granted and _arm(arm, sub, "claim", tid)["granted"]:
                    granted.append(tid)
                    break
            time.sleep(0.2)
        picked, claimed = granted
        assert _arm(arm, sub, "picked", picked)["ok"]
        n = len(sub.messages)
        # the README's calibration walk-through adds a homography; history rebuilds the classes kept per track and
        # match_threshold rebuilds ByteTrack itself
        _edit(path, tracking={"history": 10, "match_threshold": 0.7},
              calibration={"homography": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
        sub.wait_for("config", lambda p: json.loads(p)["tracking"]["history"] == 10, timeout=15)
        time.sleep(4)
        after = [json.loads(p) for t, p, _ in sub.messages[n:] if t == f"{BASE}/targets"]
        again = _arm(arm, sub, "picked", picked)
    finally:
        arm.loop_stop()
        _stop(proc)
    assert after, "no targets after the edit"
    assert not [m for m in after if m["track_id"] in (picked, claimed) and m["state"] == "available"], after
    assert not [m for m in after if m["track_id"] == claimed and m["state"] == "lost"], after
    assert any("arm_xy" in m for m in after)  # the homography was applied
    assert again["ok"] and again.get("duplicate")  # picked is remembered across the edit


def test_an_edit_naming_a_missing_file_or_a_malformed_model_keeps_the_last_good_state(tmp_path, broker,
                                                                                     subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    port = free_port()
    path = _cfg(tmp_path, broker, http={"enabled": True, "port": port})
    bad_model = tmp_path / "bad-model"
    bad_model.mkdir()
    (bad_model / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    meta = json.loads((model_dir / "metadata.json").read_text())
    (bad_model / "metadata.json").write_text(json.dumps({**meta, "input_size": 640}))
    proc = start_daemon(path)
    try:
        sub.wait_for("detections", timeout=60)
        good = sub.json("config")[-1]
        edits = [({"mqtt": {"tls_ca_certs": str(tmp_path / "missing-ca.crt")}}, "mqtt.tls_ca_certs"),
                 ({"mqtt": {"username": "u", "password_file": str(tmp_path / "missing-pw")}}, "mqtt.password_file"),
                 ({"model": {"path": str(bad_model)}}, "model.path"),
                 ({"model": {"imgsz": 512}}, "model.imgsz")]  # a size the folder does not ship (dropped in session 24)
        for sections, key in edits:
            n = len(sub.on("errors"))
            original = path.read_text()
            _edit(path, **sections)
            err = _next(sub, "errors", n, lambda m: "keeping the last good config" in m["message"])
            assert err["key"] == key, err
            path.write_text(original)  # undo: nothing to apply, still running
            time.sleep(1.5)
            m = len(sub.on("detections"))
            sub.wait_for("detections", lambda p, m=m: len(sub.on("detections")) > m, timeout=10)
        assert sub.on("status")[-1] == b"online"
        assert sub.json("config")[-1] == good  # the retained config never showed a value that did not run
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read())["ok"] is True
        meta_err = next(e for e in sub.json("errors") if e.get("key") == "model.path")
        assert "input_size" in meta_err["message"] and "metadata.json" in meta_err["message"]
    finally:
        out = _stop(proc)
    assert "Traceback" not in out, out


def test_config_check_and_run_report_missing_files_and_malformed_models(tmp_path, model_dir):
    import subprocess

    bad_model = tmp_path / "bad-model"
    bad_model.mkdir()
    (bad_model / "model.onnx").write_bytes(b"x")
    (bad_model / "metadata.json").write_text(json.dumps({"input_size": [640, 640], "sources": "abc"}))
    cases = [({"mqtt": {"tls_ca_certs": str(tmp_path / "nope.crt")}}, "mqtt.tls_ca_certs"),
             ({"model": {"path": str(bad_model)}}, "sources")]
    for data, needle in cases:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"source": {"uri": "sample"}, **data}))
        check = subprocess.run([*RIPEYE, "config", "check", str(cfg)], capture_output=True, text=True, cwd=REPO)
        assert check.returncode == 2 and needle in check.stderr and "Traceback" not in check.stderr, check.stderr
    cfg.write_text(yaml.safe_dump({"source": {"uri": "sample"}, **cases[0][0]}))
    run = subprocess.run([*RIPEYE, "run", "--config", str(cfg)], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert run.returncode == 2 and "mqtt.tls_ca_certs" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_set_null_removes_the_override_and_non_finite_numbers_are_refused(tmp_path, broker, subscriber_factory,
                                                                          model_dir):
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    state = tmp_path / "state"
    path = _cfg(tmp_path, broker, detect={"confidence": 0.3}, state_dir=str(state))
    proc = start_daemon(path)
    ctl = _client(broker.port)

    def ask(body):
        n = len(sub.on("cmd/set/result"))
        ctl.publish(f"{BASE}/cmd/set", body, qos=1)
        sub.wait_for("cmd/set/result", lambda p: len(sub.on("cmd/set/result")) > n, timeout=15)
        return sub.json("cmd/set/result")[-1]

    try:
        sub.wait_for("detections", timeout=60)
        assert ask(json.dumps({"patch": {"detect": {"confidence": 0.4}}, "persist": True}))["ok"]
        assert sub.json("config")[-1]["detect"]["confidence"] == 0.4
        removed = ask(json.dumps({"patch": {"detect": None}, "persist": True}))
        assert removed["ok"], removed
        assert sub.json("config")[-1]["detect"]["confidence"] == 0.3  # back to the file's value, not the default
        assert not (state / "overrides.yaml").exists()  # nothing left to override: no `{}` left behind
        # the white balance before the model is a live key too: frames keep coming through it, a bad value is named
        assert ask(json.dumps({"patch": {"detect": {"white_balance": "grey_world"}}}))["ok"]
        assert sub.json("config")[-1]["detect"]["white_balance"] == "grey_world"
        m = len(sub.on("detections"))
        sub.wait_for("detections", lambda p, m=m: len(sub.on("detections")) > m + 3, timeout=15)
        reply = ask(json.dumps({"patch": {"detect": {"white_balance": "cloudy"}}}))
        assert reply["ok"] is False and "detect.white_balance" in reply["error"], reply
        assert ask(json.dumps({"patch": {"detect": {"white_balance": None}}}))["ok"]
        assert sub.json("config")[-1]["detect"]["white_balance"] == "auto"  # the default again
        for body in ('{"patch": {"stats": {"interval_s": 1e400}}}', '{"patch": {"detect": {"iou": NaN}}}',
                     '{"patch": {"targets": {"claim_timeout_s": Infinity}}}'):
            reply = ask(body)
            assert reply["ok"] is False and "finite" in reply["error"], reply
        n = len(sub.on("config"))
        _edit(path, detect={"confidence": 0.35})  # file edits still apply
        _next(sub, "config", n, lambda m: m["detect"]["confidence"] == 0.35)
        n = len(sub.on("errors"))
        _edit(path, stats={"interval_s": float("inf")})  # YAML .inf
        err = _next(sub, "errors", n)
        assert err["key"] == "stats.interval_s", err
    finally:
        ctl.loop_stop()
        _stop(proc)


def _status(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _until(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def test_http_port_and_token_follow_the_config(tmp_path, broker, subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port, f"{BASE}/#")
    token = tmp_path / "token"
    token.write_text("first-token\n")
    old_port, new_port = free_port(), free_port()
    path = _cfg(tmp_path, broker, http={"enabled": True, "port": old_port, "token_file": str(token)})
    proc = start_daemon(path)
    try:
        old = f"http://127.0.0.1:{old_port}"
        assert _until(lambda: _status(old + "/metrics", "first-token") == 200, 60)
        token.write_text("second-token\n")
        assert _until(lambda: _status(old + "/metrics", "second-token") == 200, 5)
        assert _status(old + "/metrics", "first-token") == 401
        _edit(path, http={"port": new_port})
        new = f"http://127.0.0.1:{new_port}"
        assert _until(lambda: _status(new + "/metrics", "second-token") == 200, 15)

        def old_refuses() -> bool:
            try:
                _status(old + "/metrics", "second-token")
            except OSError:  # connection refused: nothing listens there any more
                return True
            return False

        assert _until(old_refuses, 5), "the old port still serves after the edit"
        _next(sub, "config", 0, lambda m: m["http"]["port"] == new_port, timeout=5)
    finally:
        out = _stop(proc)
    assert "Traceback" not in daemon_log(proc), out
