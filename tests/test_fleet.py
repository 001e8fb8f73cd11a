"""`ripeye fleet` against three real daemons on the sample clip, one real mosquitto and a plain static HTTP server
(issue 29 item 6): `fleet ls` lists them with groups and versions; THE FIGURE: the canary given a bundle that
collapses rolls back within probation_s, the rollout stops at it and the other two never change model; a good
bundle then goes canary first, wave by wave, to all three. `fleet serve` prints URLs and hashes that download.

RIPEYE_FLEET_FIGURE=bench/results/fleet_rollout.json records the figure's run."""

import argparse
import functools
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from daemon import fleet
from tests.conftest import REPO, RIPEYE, Broker, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop
from tests.test_model_rollout import _bundle

GROUPS = {"d1": ["canary", "house-a"], "d2": ["house-a"], "d3": ["house-b"]}
PROBATION_S = 20


class FleetWatch:
    """Every detections and model message of every device, timestamped."""

    def __init__(self, port):
        self.got: list[tuple[float, str, str, dict]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe([("ripeye/+/detections", 0),
                                                                     ("ripeye/+/model", 1)])
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, c, u, m):
        _, device, suffix = m.topic.split("/", 2)
        try:
            self.got.append((time.time(), device, suffix, json.loads(m.payload)))
        except ValueError:
            pass

    def on(self, device, suffix, since=0.0):
        return [(t, b) for t, d, s, b in list(self.got) if d == device and s == suffix and t >= since]

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def three(tmp_path_factory, model_dir):
    """Three daemons (groups above) on one mosquitto, a static HTTP server for bundles, and a watcher."""
    tmp = tmp_path_factory.mktemp("fleet")
    broker = Broker(tmp)
    broker.start()
    www = tmp / "www"
    www.mkdir()
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    handler = functools.partial(quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watch = FleetWatch(broker.port)
    procs = {}
    try:
        for d, groups in GROUPS.items():
            (tmp / d).mkdir()
            procs[d] = start_daemon(_cfg(tmp / d, broker, device_id=d, groups=groups,
                                         state_dir=str(tmp / d / "state"), model={"probation_s": PROBATION_S},
                                         runtime={"threads": 1}, source={"uri": "sample", "fps": 4}))
        deadline = time.time() + 120
        while not all(watch.on(d, "detections") for d in GROUPS):
            assert time.time() < deadline, {d: p.poll() for d, p in procs.items()}
            time.sleep(0.5)
        yield {"tmp": tmp, "broker": broker, "served": (www, f"http://127.0.0.1:{server.server_address[1]}"),
               "watch": watch, "procs": procs, "up_at": time.time()}
    finally:
        for p in procs.values():
            _stop(p)
        watch.close()
        server.shutdown()
        broker.stop()


def _fleet(*args, timeout=180):
    return subprocess.run([*RIPEYE, "fleet", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CI": "true"})


def _version(watch, device):
    return watch.on(device, "detections")[-1][1]["model"]["version"]


def test_parse_duration_select_and_describe():
    assert fleet.parse_duration("10m") == 600 and fleet.parse_duration("30s") == 30
    assert fleet.parse_duration("1m30s") == 90 and fleet.parse_duration("45") == 45
    with pytest.raises(argparse.ArgumentTypeError):
        fleet.parse_duration("ten minutes")
    devs = {d: {"id": d, "config": {"groups": g}} for d, g in GROUPS.items()}
    assert fleet.select("canary", devs) == ["d1"]
    assert fleet.select("all", devs, exclude=("d1",)) == ["d2", "d3"]
    assert fleet.select("d3,house-a", devs) == ["d3", "d1", "d2"]
    with pytest.raises(ValueError, match="neither a device nor a group"):
        fleet.select("house-z", devs)
    row = fleet.describe({"id": "d1", "status": "offline", "config": {"groups": ["a"]}})
    assert row["health"] == "offline" and row["groups"] == ["a"]


def test_serve_prints_urls_and_hashes_that_download(tmp_path):
    (tmp_path / "m.tar").write_bytes(b"not really a bundle" * 100)
    proc = subprocess.Popen([*RIPEYE, "fleet", "serve", str(tmp_path), "--port", "0", "--host", "127.0.0.1"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        first, line = proc.stdout.readline(), proc.stdout.readline()
        url, sha = line.split()[0], line.split()[-1]
        assert "serving" in first and url.endswith("/m.tar"), (first, line)
        body = urllib.request.urlopen(url, timeout=10).read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert hashlib.sha256(body).hexdigest() == sha == hashlib.sha256((tmp_path / "m.tar").read_bytes()).hexdigest()


def test_ls_lists_three_daemons_with_groups_and_versions(three):
    port = str(three["broker"].port)
    out = _fleet("ls", "--port", port, "--json", "--wait", "5")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(GROUPS), rows
    for d, row in rows.items():
        assert row["groups"] == GROUPS[d] and row["status"] == "online" and row["health"] == "ok", row
        assert row["model"] == _version(three["watch"], d) and row["backend"], row
        assert row["fps"] and row["fps"] > 0, row
    text = _fleet("ls", "--port", port, "--wait", "3")
    assert text.returncode == 0 and text.stdout.splitlines()[0].split()[:3] == ["DEVICE", "GROUPS", "STATUS"]
    assert "canary,house-a" in text.stdout and len(text.stdout.splitlines()) == 4, text.stdout


def test_figure_rollout_stops_at_a_collapsing_canary(three, tmp_path):
    """THE FIGURE: a bundle that collapses goes to the canary; the canary rolls back within probation_s, the
    rollout stops there naming it, and d2, d3 never change model."""
    w, tmp = three["watch"], three["tmp"]
    bad = _bundle(tmp, three["served"], "bad", "v-bad", scores=0.1)
    old = {d: _version(w, d) for d in GROUPS}
    time.sleep(max(0.0, three["up_at"] + 15 - time.time()))  # the canary's baseline: its old model's ripe rate
    start = time.time()
    report = tmp_path / "report.json"
    args = ["rollout", str(three["served"][0] / "v-bad.tar"), "--url", bad["url"], "--canary", "canary",
            "--then", "all", "--healthy-for", "25s", "--port", str(three["broker"].port), "--report", str(report)]
    out = _fleet(*args)
    ended = time.time()
    time.sleep(2)  # detections in flight
    rep = json.loads(report.read_text())
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "stopped at d1" in out.stderr and "rolled back" in out.stderr, out.stderr
    assert rep["touched"] == ["d1"] and rep["untouched"] == ["d2", "d3"], rep
    _, model = w.on("d1", "model")[-1]
    events = {h["event"]: h for h in model["history"] if h["at"] >= start - 1}
    assert [e for e in events] == ["installing", "installed", "shadowed", "switched", "rolled-back"], events
    switch_to_back = events["rolled-back"]["at"] - events["switched"]["at"]
    assert switch_to_back <= PROBATION_S, switch_to_back
    assert model["active"]["version"] == old["d1"] and "collapsed" in events["rolled-back"]["why"]
    deadline = time.time() + 15  # frames already in the pipeline still carry v-bad
    while _version(w, "d1") != old["d1"] and time.time() < deadline:
        time.sleep(0.2)
    assert _version(w, "d1") == old["d1"]
    untouched = {}
    for d in ("d2", "d3"):
        installs = [h for _, m in w.on(d, "model") for h in m["history"] if h["event"] == "installing"]
        versions = {b["model"]["version"] for _, b in w.on(d, "detections", since=start)}
        assert installs == [] and versions == {old[d]}, (d, installs, versions)
        untouched[d] = {"installs": len(installs), "versions_seen": sorted(versions),
                        "detections_during": len(w.on(d, "detections", since=start))}
    steps = {(s["device"], s["step"]): s["at"] for s in rep["steps"]}
    figure = {
        "command": "ripeye fleet " + " ".join(a if not a.startswith("/") else os.path.basename(a) for a in args),
        "daemons": 3, "probation_s": PROBATION_S, "healthy_for_s": 25, "source": "sample clip at 4 fps, 1 thread",
        "old_version": old["d1"], "bad_version": "v-bad", "exit_code": out.returncode,
        "touched": rep["touched"], "untouched": rep["untouched"],
        "device_install_to_switch_s": round(events["switched"]["at"] - events["installing"]["at"], 2),
        "device_switch_to_rollback_s": round(switch_to_back, 2),
        "cli_install_sent_to_switch_seen_s": round(steps[("d1", "switched")] - steps[("d1", "install sent")], 2),
        "cli_switch_seen_to_rollback_seen_s": round(steps[("d1", "ROLLED BACK")] - steps[("d1", "switched")], 2),
        "rollout_wall_s": round(ended - start, 2), "rollback_why": events["rolled-back"]["why"],
        "shadow": {k: events["shadowed"].get(k) for k in ("frames", "agreement", "latency_ms")},
        "others": untouched, "stdout": out.stdout.splitlines(),
    }
    if os.environ.get("RIPEYE_FLEET_FIGURE"):
        path = REPO / os.environ["RIPEYE_FLEET_FIGURE"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**figure, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")


def test_good_bundle_goes_canary_first_then_wave_by_wave(three, tmp_path):
    w = three["watch"]
    _bundle(three["tmp"], three["served"], "good", "v-good")
    report = tmp_path / "report.json"  # served by the rollout itself this time
    out = _fleet("rollout", str(three["served"][0] / "v-good.tar"), "--serve-port", "0", "--canary", "d1",
                 "--then", "house-a,house-b", "--batch", "1", "--healthy-for", "3s",
                 "--port", str(three["broker"].port), "--report", str(report))
    assert out.returncode == 0, (out.stdout, out.stderr)
    rep = json.loads(report.read_text())
    assert rep["touched"] == ["d1", "d2", "d3"] and rep["url"].startswith("http://127.0.0.1:"), rep
    order = [(s["device"], s["step"]) for s in rep["steps"] if s["step"] in ("install sent", "healthy")]
    assert order == [("d1", "install sent"), ("d1", "healthy"), ("d2", "install sent"), ("d2", "healthy"),
                     ("d3", "install sent"), ("d3", "healthy")], order
    time.sleep(1)
    assert all(_version(w, d) == "v-good" for d in GROUPS)
