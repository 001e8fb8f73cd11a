"""install.sh's board branches (Pi, Jetson, armv7l, x86), its one apt list, and its quiet step output.

The boards are stood in by their files (tests/fixtures/hardware, via RIPEYE_HW_ROOT), a fake `uname` and a fake
`python3` that records the venv and pip commands it is given: this machine has no Pi or Jetson, and a real pip run
per branch would take minutes (the real install is tested in test_service.py and the arm64 test).
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

BOARDS = REPO / "tests" / "fixtures" / "hardware"

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "python $*" >> "$FAKE_LOG"
if [ "$1" = -c ]; then
  case "$2" in
    *"import numpy"*) [ -n "${FAKE_SYSTEM_NUMPY:-}" ] && echo "$FAKE_SYSTEM_NUMPY" && exit 0; exit 1 ;;
    *"import picamera2"*) exit 1 ;;
    *"import cv2"*) [ -n "${FAKE_CV2:-}" ]; exit ;;
    *"import ensurepip"*) [ -z "${FAKE_NO_VENV_MODULE:-}" ]; exit ;;
    *"version_info < (3, 9)"*) [ -z "${FAKE_OLD_PYTHON:-}" ]; exit ;;
    *"version_info[:2]"*) echo "${FAKE_OLD_PYTHON:-3.11}"; exit 0 ;;
    *) exit 0 ;;
  esac
fi
if [ "$1 $2" = "-m venv" ]; then
  for dir; do :; done
  mkdir -p "$dir/bin" && cp "$0" "$dir/bin/python"; exit 0
fi
if [ "$1 $2" = "-m pip" ] && [ -n "${FAKE_PIP_FAIL:-}" ] && [[ "$*" == *"tracking]"* ]]; then
  for i in $(seq 1 200); do echo "pip chatter line $i"; done
  echo "ERROR: No matching distribution found for frobnitz" >&2
  exit 1
fi
echo "Collecting things (pip chatter)"; echo "WARNING: setuptools chatter" >&2
"""

# apt-get records what it was asked for; with FAKE_APT_BUSY=N its first N runs fail on apt's lists lock the way apt
# 2.6 does when unattended-upgrades holds it (DPkg::Lock::Timeout does not cover that lock).
FAKE_APT_GET = r"""#!/usr/bin/env bash
echo "apt-get $*" >> "$FAKE_LOG"
n=$(( $(cat "$FAKE_LOG.apt-runs" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$FAKE_LOG.apt-runs"
if [ "$n" -le "${FAKE_APT_BUSY:-0}" ]; then
  echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (unattended-upgr)" >&2
  echo "E: Unable to lock directory /var/lib/apt/lists/" >&2
  exit 100
fi
"""


@pytest.fixture
def fake_board(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "uname").write_text('#!/bin/sh\n[ "$1" = -m ] && echo "$FAKE_MACHINE" || /bin/uname "$@"\n')
    # apt for the --dev test: dpkg says nothing is installed, apt-get records what it was asked for
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()

    def run(board, machine, *args, **env):
        full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": "python3",
                    "FAKE_LOG": str(log), "FAKE_MACHINE": machine, "RIPEYE_INSTALL_LOG": str(tmp_path / "pip.log"),
                    "RIPEYE_HW_ROOT": str(BOARDS / board) if board else str(tmp_path / "no-board"), **env}
        full_env.pop("PIP_EXTRA_INDEX_URL", None)
        r = subprocess.run(["bash", str(REPO / "install.sh"), *args], capture_output=True, text=True,
                           env=full_env, timeout=120)
        return r, log.read_text(), (tmp_path / "pip.log")

    run.root = tmp_path / "root"
    return run


def _pip_installs(calls):
    return [c for c in calls.splitlines() if " -m pip install" in c and "--upgrade pip" not in c]


def test_pi_venv_sees_apt_picamera2_and_keeps_the_system_numpy(fake_board):
    r, calls, _ = fake_board("pi5", "aarch64", "--service", "--root", str(fake_board.root),
                             FAKE_SYSTEM_NUMPY="1.24.2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board: pi; runtime extra: ncnn" in r.stdout
    assert "python -m venv --system-site-packages" in calls
    assert "not installing python3-picamera2" in r.stdout  # a staging root never runs apt
    app = _pip_installs(calls)[0]
    assert "[ncnn,tracking]" in app and " -c " in app
    constraints = Path(app.split(" -c ")[1].split()[0])
    assert constraints.read_text().strip() == "numpy==1.24.2"


def test_jetson_uses_jetpack_opencv_and_the_given_index(fake_board):
    r, calls, _ = fake_board("jetson-orin", "aarch64", "--service", "--root", str(fake_board.root),
                             "--extra-index-url", "https://example.invalid/jp6/cu126", FAKE_CV2="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board: jetson; runtime extra: jetson" in r.stdout
    assert "python -m venv --system-site-packages" in calls
    installs = _pip_installs(calls)
    assert "--extra-index-url https://example.invalid/jp6/cu126" in installs[0] and "[jetson,tracking]" in installs[0]
    assert "-m pip uninstall -y opencv-python-headless" in calls
    # the unit's drop-in allows this board's CUDA nodes by path (fixture: an Orin Nano's /dev)
    dropin = (fake_board.root / "etc/systemd/system/ripeye.service.d/jetson.conf").read_text()
    assert "[Service]" in dropin
    for node in ("/dev/nvmap", "/dev/nvgpu/igpu0/ctrl", "/dev/nvgpu/igpu0/channel"):
        assert f"DeviceAllow={node} rw" in dropin.splitlines(), node


def test_jetson_without_an_index_says_where_onnxruntime_gpu_comes_from(fake_board):
    r, _, _ = fake_board("jetson-orin", "aarch64", "--service", "--root", str(fake_board.root))
    assert r.returncode == 0 and "--extra-index-url" in r.stdout


def test_empty_nv_tegra_release_is_not_a_jetson_in_install_sh_or_hardware(fake_board, tmp_path):
    board = tmp_path / "odd-arm"
    (board / "etc").mkdir(parents=True)
    (board / "etc" / "nv_tegra_release").write_text("")
    r, calls, _ = fake_board(None, "aarch64", "--service", "--root", str(fake_board.root),
                             RIPEYE_HW_ROOT=str(board))
    assert "board: arm; runtime extra: ncnn" in r.stdout
    assert "--system-site-packages" not in calls
    assert not (fake_board.root / "etc/systemd/system/ripeye.service.d").exists()
    from daemon.hardware import classify, probe

    assert classify(probe(str(board), machine="aarch64", check_runtimes=False)).kind == "arm"


def test_armv7l_is_refused_before_anything_is_installed(fake_board):
    r, calls, _ = fake_board("pi4", "armv7l", "--service", "--root", str(fake_board.root))
    assert r.returncode == 3
    assert "32-bit ARM (armv7l) is not supported" in r.stdout and "64-bit Raspberry Pi OS" in r.stdout
    assert "-m venv" not in calls and not fake_board.root.exists()


def test_jetpack5_python38_is_refused_plainly(fake_board):
    r, calls, _ = fake_board("jetson-orin", "aarch64", "--service", "--root", str(fake_board.root),
                             FAKE_OLD_PYTHON="3.8")
    assert r.returncode == 3 and "JetPack 5's Python 3.8 is not supported" in r.stdout
    assert "-m venv" not in calls


def test_x86_venv_is_isolated(fake_board):
    r, calls, _ = fake_board("intel-pc", "x86_64", "--service", "--root", str(fake_board.root))
    assert r.returncode == 0 and "runtime extra: openvino" in r.stdout
    assert "python -m venv " in calls and "--system-site-packages" not in calls


def test_steps_are_one_line_each_and_pip_output_goes_to_the_log(fake_board):
    r, _, pip_log = fake_board("intel-pc", "x86_64", "--service", "--root", str(fake_board.root))
    assert r.returncode == 0
    assert "chatter" not in r.stdout + r.stderr
    assert all(line.startswith("install.sh: ") for line in r.stdout.splitlines())
    assert "pip chatter" in pip_log.read_text() and "setuptools chatter" in pip_log.read_text()


def test_a_failing_pip_step_prints_the_tail_of_its_log(fake_board):
    r, _, pip_log = fake_board("intel-pc", "x86_64", "--service", "--root", str(fake_board.root),
                               FAKE_PIP_FAIL="1")
    assert r.returncode == 1
    assert "FAILED: installing" in r.stdout and str(pip_log) in r.stdout
    assert "No matching distribution found for frobnitz" in r.stderr and "pip chatter line 200" in r.stderr
    assert "pip chatter line 1\n" not in r.stderr  # the tail, not the flood
    assert "pip chatter line 1\n" in pip_log.read_text()


def test_dev_installs_the_one_apt_list_that_ci_uses(fake_board):
    r, calls, _ = fake_board("intel-pc", "x86_64", "--dev", RIPEYE_DEV_VENV=str(fake_board.root / "venv"))
    assert r.returncode == 0, r.stdout + r.stderr
    apt = next(c for c in calls.splitlines() if c.startswith("apt-get") and " install " in c)
    for pkg in ("mosquitto", "mosquitto-clients", "chromium", "chromium-driver", "openssl", "systemd", "libusb-1.0-0"):
        assert f" {pkg}" in apt, pkg
    ci = (REPO / ".ci" / "run").read_text()
    assert "./install.sh --dev" in ci and "apt-get" not in ci  # CI has no list of its own


def test_missing_venv_module_is_installed_from_apt(fake_board):
    r, calls, _ = fake_board("intel-pc", "x86_64", "--dev", RIPEYE_DEV_VENV=str(fake_board.root / "venv"),
                             FAKE_NO_VENV_MODULE="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(c.startswith("apt-get") and c.endswith(" python3.11-venv") for c in calls.splitlines()), calls


def test_apt_waits_for_another_apt_and_says_so_once(fake_board):
    """A fresh Raspberry Pi OS runs unattended-upgrades right after boot: install.sh waits (bounded) for apt's locks
    instead of failing at once, with one line on the terminal."""
    r, calls, _ = fake_board("intel-pc", "x86_64", "--dev", RIPEYE_DEV_VENV=str(fake_board.root / "venv"),
                             FAKE_APT_BUSY="2", RIPEYE_APT_LOCK_TIMEOUT="120")
    assert r.returncode == 0, r.stdout + r.stderr
    waiting = [line for line in r.stdout.splitlines() if "another apt holds its lock" in line]
    assert waiting == ["install.sh: apt: another apt holds its lock (/var/lib/apt/lists/lock. It is held by process "
                       "4242 (unattended-upgr)); waiting up to 120 s for it (RIPEYE_APT_LOCK_TIMEOUT)"], r.stdout
    apt = [c for c in calls.splitlines() if c.startswith("apt-get")]
    assert [c.split()[-1] for c in apt[:3]] == ["update"] * 3 and " install " in apt[3]
    # every run waits for dpkg's lock too, for what is left of the same 120 s
    assert all(re.search(r" -o DPkg::Lock::Timeout=(\d+) ", c) for c in apt), apt
    assert all(int(re.search(r"Timeout=(\d+)", c).group(1)) <= 120 for c in apt)


def test_every_apt_get_goes_through_the_bounded_wait():
    """Only apt_get (in .ci/apt-packages.sh) runs apt-get; install.sh and the CI scripts call it."""
    runs = []
    for script in (REPO / "install.sh", *sorted((REPO / ".ci").iterdir())):
        for n, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"(^|[\s;|&(])apt-get\s", code):
                runs.append((script.name, n, code.strip()))
    assert len(runs) == 1 and runs[0][0] == "apt-packages.sh" and "DPkg::Lock::Timeout=" in runs[0][2], runs
