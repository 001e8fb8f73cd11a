"""What the daemon sees and does inside its systemd sandbox: a proc mounted `subset=pid` (the unit's ProcSubset=pid)
gives the same hardware facts and tune key as a shell, and `source.uri: auto` without a camera publishes nothing."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, RIPEYE, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop

FACTS = ("import json; from daemon.hardware import classify, probe; from daemon.tune import hardware_key; "
         "p = classify(probe(check_runtimes=False)); "
         "print(json.dumps({'kind': p.kind, 'identity': p.identity, 'chain': p.chain, 'key': hardware_key()}))")


def _sandboxed(*argv) -> subprocess.CompletedProcess:
    """argv in a private mount namespace whose /proc is mounted subset=pid, as ProcSubset=pid does for the unit."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    script = 'mount -t proc -o subset=pid proc /proc && test ! -e /proc/cpuinfo && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "CI": "true"}, timeout=120)


def test_hardware_facts_and_tune_key_are_the_same_under_procsubset_pid():
    shell = subprocess.run([sys.executable, "-c", FACTS], capture_output=True, text=True, cwd=REPO, check=True)
    sandbox = _sandboxed(sys.executable, "-c", FACTS)
    assert sandbox.returncode == 0, sandbox.stderr
    assert json.loads(sandbox.stdout) == json.loads(shell.stdout)


def test_doctor_names_the_same_hardware_under_procsubset_pid(tmp_path):
    cfg = _cfg(tmp_path, type("B", (), {"port": 1883})())
    first = lambda out: next(line for line in out.splitlines() if line.startswith("hardware:")).split(" — ")[0]  # noqa: E731
    shell = subprocess.run([*RIPEYE, "doctor", "--config", str(cfg)], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "CI": "true"}, timeout=120)
    sandbox = _sandboxed(*RIPEYE, "doctor", "--config", str(cfg))
    assert "hardware:" in sandbox.stdout, sandbox.stdout + sandbox.stderr
    assert first(sandbox.stdout) == first(shell.stdout)


def test_auto_without_a_camera_publishes_nothing_and_says_so(tmp_path, broker, subscriber_factory, model_dir):
    """Also: `backend: measured` without a tune result for this hardware says so on `errors`."""
    if any(os.path.exists(f"/dev/video{i}") for i in range(8)):
        pytest.skip("this machine has a camera")
    sub = subscriber_factory(broker.port, "ripeye/testbox/#")
    cfg = _cfg(tmp_path, broker, source={"uri": "auto", "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5},
               runtime={"backend": "measured", "cache_dir": str(tmp_path / "cache")})
    proc = start_daemon(cfg)
    try:
        sub.wait_for("errors", lambda p: b"no camera found" in p, timeout=60)
        sub.wait_for("stats", lambda p: json.loads(p)["camera"]["state"] == "reconnecting"
                     and "no camera found" in json.loads(p)["camera"]["last_error"], timeout=30)
        camera_errors = len([p for p in sub.on("errors") if b"no camera found" in p])
        time.sleep(1.5)
        assert len([p for p in sub.on("errors") if b"no camera found" in p]) > camera_errors  # still looking
        assert any(b"no `ripeye tune` result" in p for p in sub.on("errors"))
        assert not sub.on("detections")
    finally:
        log = _stop(proc)
    assert "sample.mp4" not in log
