"""The systemd unit (verify, security exposure), sd_notify READY/WATCHDOG from a running daemon, install.sh."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from daemon import config
from daemon.pipeline import Daemon
from tests.conftest import REPO, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop

UNIT = REPO / "systemd" / "ripeye.service"


def _analyze():
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return exe


def _unit_with_real_binary(tmp_path) -> Path:
    """The unit as installed, with ExecStart pointing at this checkout's ripeye so `verify` can check it exists."""
    ripeye = Path(sys.executable).parent / "ripeye"
    text = UNIT.read_text().replace("/opt/ripeye/venv/bin/ripeye", str(ripeye))
    path = tmp_path / "ripeye.service"
    path.write_text(text)
    return path


def test_unit_verifies(tmp_path):
    r = subprocess.run([_analyze(), "verify", str(_unit_with_real_binary(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ripeye.service" not in r.stderr, r.stderr  # no warnings about our unit


def test_unit_security_exposure_at_most_3(tmp_path):
    r = subprocess.run([_analyze(), "security", "--offline=true", str(_unit_with_real_binary(tmp_path))],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for ripeye.service: ([\d.]+)", r.stdout + r.stderr)
    assert m, r.stdout[-500:] + r.stderr[-500:]
    assert float(m.group(1)) <= 3.0


def test_unit_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "User=ripeye",
                 "SupplementaryGroups=video", "ProtectSystem=strict", "ProtectHome=true", "PrivateTmp=true",
                 "NoNewPrivileges=true", "StateDirectory=ripeye", "CacheDirectory=ripeye"):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M) and re.search(r"^StartLimitBurst=\d+", text, re.M)


def test_ready_and_watchdog_pings_over_notify_socket(tmp_path, broker, model_dir):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    proc = start_daemon(_cfg(tmp_path, broker), env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "4000000"})
    got = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline and sum(m.startswith("WATCHDOG=1") for m in got) < 3:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        ready = [m for m in got if m.startswith("READY=1")]
        assert ready and "STATUS=processing" in ready[0]
        assert got.index(ready[0]) >= 0 and sum(m == "WATCHDOG=1" for m in got) >= 3
    finally:
        _stop(proc)
        sock.close()


def test_watchdog_health_rules():
    d = Daemon(config.validate({"mqtt": {"enabled": False}}))

    class Cap:
        state = "running"

    d.capture = Cap()
    d.detector = object()
    d.last_frame_done = time.monotonic()
    assert d.healthy()
    d.last_frame_done = time.monotonic() - 60  # frames should flow and do not: stuck
    assert not d.healthy()
    d.paused.set()
    assert d.healthy()  # paused on purpose
    d.paused.clear()
    Cap.state = "reconnecting"  # the camera is gone and being retried: handled, not stuck
    assert d.healthy()


def test_unit_lets_the_boards_cameras_and_gpus_through():
    """Each device rule is a class or a node (systemd ignores a directory such as /dev/dma_heap), libcamera's
    dma_heap and the V4L2/media nodes are allowed, and Jetson's argus socket reaches the private /tmp."""
    rules = re.findall(r"^DeviceAllow=(\S+) (\S+)$", UNIT.read_text(), re.M)
    assert rules and all(target.startswith(("char-", "block-")) for target, _ in rules), rules
    assert {t for t, _ in rules} >= {"char-dma_heap", "char-video4linux", "char-media", "char-usb_device"}
    assert "BindPaths=-/tmp/argus_socket" in UNIT.read_text().splitlines()


def test_udev_rule_gives_the_video_group_the_depth_cameras_only():
    """libusb opens /dev/bus/usb/* (root-only by default): the rule hands the service's video group OAK devices
    (booted and bootloader ids) and RealSense D4xx/L5xx ids, not other Intel USB devices. A real board must confirm
    the camera opens under the service after a replug."""
    import fnmatch

    rules = [line for line in (REPO / "systemd" / "99-ripeye-depth-cameras.rules").read_text().splitlines()
             if line and not line.startswith("#")]

    def granted(vendor: str, product: str) -> bool:
        for line in rules:
            attrs = dict(re.findall(r'ATTRS\{(\w+)\}=="([^"]+)"', line))
            assert 'MODE="0660"' in line and 'GROUP="video"' in line and 'SUBSYSTEM=="usb"' in line
            if attrs["idVendor"] == vendor and any(fnmatch.fnmatch(product, pat)
                                                   for pat in attrs.get("idProduct", "*").split("|")):
                return True
        return False

    assert all(granted("03e7", p) for p in ("2485", "f63b"))  # OAK: bootloader, booted
    # D415, D435, D435i, D405, D455, L515
    assert all(granted("8086", p) for p in ("0ad3", "0b07", "0b3a", "0b5b", "0b5c", "0b64"))
    assert not any(granted("8086", p) for p in ("0026", "0aaa", "0a2b", "1234"))  # Intel Bluetooth and others


@pytest.mark.slow
def test_install_sh_into_a_staging_root(tmp_path):
    root = tmp_path / "root"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run = lambda *a: subprocess.run(["bash", str(REPO / "install.sh"), *a], capture_output=True, text=True,  # noqa: E731
                                    env=env, timeout=900)
    r = run("--service", "--root", str(root), "--extra", "onnxruntime")
    assert r.returncode == 0, r.stderr[-2000:]
    ripeye = root / "opt/ripeye/venv/bin/ripeye"
    assert ripeye.exists()
    cfg_file = root / "etc/ripeye/ripeye.yaml"
    data = yaml.safe_load(cfg_file.read_text())
    assert data["model"]["path"] == "/opt/ripeye/app/models/tomato-yolo11n" and data["state_dir"] == "/var/lib/ripeye"
    unit = (root / "etc/systemd/system/ripeye.service").read_text()
    assert (root / "etc/udev/rules.d/99-ripeye-depth-cameras.rules").is_file()
    assert "ExecStart=/opt/ripeye/venv/bin/ripeye run --config /etc/ripeye/ripeye.yaml" in unit
    assert (root / "opt/ripeye/app/models/tomato-yolo11n/model.onnx").is_file()
    # the installed daemon runs (without torch) and checks its own installed config
    check = subprocess.run([str(ripeye), "config", "check", str(cfg_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    imported = subprocess.run([str(root / "opt/ripeye/venv/bin/python"), "-c",
                               "import daemon.pipeline, sys; print('torch' in sys.modules)"], capture_output=True,
                              text=True)
    assert imported.stdout.strip() == "False"
    # a user's edit survives a second install (idempotent)
    cfg_file.write_text(cfg_file.read_text() + "\n# my edit\n")
    r = run("--service", "--root", str(root), "--extra", "onnxruntime")
    assert r.returncode == 0 and "kept existing" in r.stdout and "# my edit" in cfg_file.read_text()
    # uninstall keeps the config; purge removes it
    r = run("--uninstall", "--root", str(root))
    assert r.returncode == 0 and not (root / "opt/ripeye").exists() and cfg_file.exists()
    assert not (root / "etc/systemd/system/ripeye.service").exists()
    r = run("--uninstall", "--purge", "--root", str(root))
    assert r.returncode == 0 and not cfg_file.exists()


def test_install_sh_rejects_unknown_options():
    r = subprocess.run(["bash", str(REPO / "install.sh"), "--frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option --frobnicate" in r.stderr
