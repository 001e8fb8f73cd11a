"""The Raspberry Pi OS path on arm64, emulated (qemu-user): `install.sh --service --extra ncnn,oakd` in a Debian
bookworm arm64 root (Raspberry Pi OS Bookworm's base) with apt's picamera2 stood in, then NCNN detections compared
with x86's, and the OAK-D source's depthai (aarch64 wheel) imported, its pipeline built and a device looked for.

Functional only, never timed (emulation is ~50x slower). The root and the aarch64 wheels are built once by
`.ci/arm64-root` into RIPEYE_CI_CACHE (default /var/cache/ripeye-ci); each run works on an overlay of that root, so
the cache stays clean. picamera2 is a stand-in module in the system dist-packages (Raspberry Pi's apt archive is
not reachable here): it checks that the venv can import what apt installs, not the camera.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from daemon.config import SAMPLE_CLIP
from tests.conftest import REPO

pytestmark = pytest.mark.arm64

CACHE = Path(os.environ.get("RIPEYE_CI_CACHE", "/var/cache/ripeye-ci"))
ROOTFS = CACHE / "bookworm-arm64"
WHEELS = CACHE / "wheels-cp311-aarch64"
BOARD = REPO / "tests" / "fixtures" / "hardware" / "pi5"

PICAMERA2_STANDIN = '''"""Stand-in for apt's python3-picamera2: can the venv import the system's packages?"""
class Picamera2:
    @staticmethod
    def global_camera_info():
        return []
'''

# Runs as root in a private mount namespace: overlay the cached root, give it the Pi 5's cpuinfo and device-tree
# model (onnxruntime reads cpuinfo at import; the host's x86 one confuses it), then install and detect inside.
SCRIPT = r'''
set -euo pipefail
work="$1"; rootfs="$2"; wheels="$3"; board="$4"
m="$work/merged"
mkdir -p "$work/upper" "$work/ovl" "$m"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl" "$m"
mkdir -p "$m/usr/lib/python3/dist-packages/picamera2" "$m/sys/firmware/devicetree/base" "$m/wheels" "$m/work"
cp "$work/picamera2.py" "$m/usr/lib/python3/dist-packages/picamera2/__init__.py"
cp "$board/proc/device-tree/model" "$m/sys/firmware/devicetree/base/model"
mount --bind "$wheels" "$m/wheels"
mount --bind "$work/in" "$m/work"
mount -t proc proc "$m/proc"
mount --bind "$board/proc/cpuinfo" "$m/proc/cpuinfo"
mount --bind /dev "$m/dev"
export QEMU_CPU=cortex-a76 PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 CI=true
export RIPEYE_INSTALL_LOG=/work/install.log
chroot "$m" /usr/bin/env -C /work/src bash ./install.sh --service --root /staging --extra ncnn,oakd
py=/staging/opt/ripeye/venv/bin/python
chroot "$m" "$py" -c 'import picamera2, ncnn; print("imports ok")'
chroot "$m" "$py" /work/oakd_check.py
chroot "$m" /usr/bin/env -C /work "$py" -m daemon detect --backend ncnn --precision fp16 --threads 2 --json \
  --model /staging/opt/ripeye/app/models/tomato-yolo11n photos > "$work/in/arm64.jsonl"
chroot "$m" /usr/bin/env -C /work "$py" -m daemon doctor --config /staging/etc/ripeye/ripeye.yaml \
  > "$work/in/doctor.txt" || true
'''


# The OAK-D source on aarch64: depthai's wheel imports, the pipeline daemon/oakd.py boots is built (no device needed),
# and opening the source looks for a device and says none is there (no USB device in the emulated root).
OAKD_CHECK = '''
import depthai
from daemon import oakd
from daemon.capture import SourceError, make_source
from daemon.config import SourceConfig
pipeline = oakd.build_pipeline(depthai, 640, 360, 30.0)
nodes = pipeline.serializeToJson()["pipeline"]["nodes"]
print("oakd pipeline", depthai.__version__, sorted(n["name"] for _, n in nodes))
try:
    make_source(SourceConfig(uri="oakd")).open()
except SourceError as exc:
    print("oakd open:", exc)
'''


def _detect(jsonl: str) -> dict:
    out = {}
    for line in jsonl.splitlines():
        rec = json.loads(line)
        out[Path(rec["image"]).name] = rec["detections"]
    return out


BORDERLINE = 0.01  # confidence


def test_pi_service_install_imports_picamera2_and_ncnn_matches_x86(tmp_path):
    if os.geteuid() != 0 or not (ROOTFS / "usr/bin/python3").exists() or not WHEELS.is_dir():
        pytest.skip(f"needs root and the arm64 root and wheels from .ci/arm64-root in {CACHE}")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("the aarch64 binfmt handler is not registered (.ci/arm64-root does it)")
    src = tmp_path / "in" / "src"
    src.mkdir(parents=True)
    subprocess.run(f"tar -C {REPO} --exclude=__pycache__ -cf - daemon models config pyproject.toml README.md "
                   f"install.sh .ci systemd | tar -C {src} -xf -", shell=True, check=True)
    photos = tmp_path / "in" / "photos"
    photos.mkdir()
    video = cv2.VideoCapture(str(SAMPLE_CLIP))
    for i in range(3):  # three frames of the shipped clip, a second apart, as photos
        video.set(cv2.CAP_PROP_POS_FRAMES, i * 30)
        ok, image = video.read()
        assert ok
        cv2.imwrite(str(photos / f"photo{i}.jpg"), image)
    video.release()
    (tmp_path / "picamera2.py").write_text(PICAMERA2_STANDIN)
    (tmp_path / "in" / "oakd_check.py").write_text(OAKD_CHECK)
    r = subprocess.run(["unshare", "-m", "bash", "-c", SCRIPT, "bash", str(tmp_path), str(ROOTFS), str(WHEELS),
                        str(BOARD)], capture_output=True, text=True, timeout=1200)
    log = tmp_path / "in" / "install.log"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    assert "board: pi; runtime extra: ncnn,oakd" in r.stdout and "imports ok" in r.stdout
    assert ("oakd pipeline 2.29.0.0 ['ColorCamera', 'MonoCamera', 'MonoCamera', 'StereoDepth', 'Sync', 'XLinkOut']"
            in r.stdout), r.stdout[-3000:]
    assert "oakd open: cannot start OAK-D (first) 640x360: No available devices" in r.stdout, r.stdout[-3000:]
    doctor = (tmp_path / "in" / "doctor.txt").read_text()
    assert "hardware: raspberry-pi" in doctor and "ncnn" in doctor, doctor

    x86 = subprocess.run([sys.executable, "-m", "daemon", "detect", "--backend", "ncnn", "--precision", "fp16",
                          "--json", *sorted(map(str, photos.iterdir()))], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "CI": "true"}, check=True)
    arm, ref = _detect((tmp_path / "in" / "arm64.jsonl").read_text()), _detect(x86.stdout)
    assert sorted(arm) == sorted(ref) == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    def partner(b, theirs):  # the nearest box of b's class on the other side and its largest corner gap
        same_class = [a for a in theirs if a["class"] == b["class"]]
        return min(((max(abs(p - q) for p, q in zip(a["box"], b["box"])), a) for a in same_class),
                   key=lambda g: g[0], default=(1e9, None))

    # how far the two CPUs' confidences differ for the same box (FP16 storage rounds differently on ARM and x86)
    spread = max((abs(b["confidence"] - a["confidence"]) for name in ref for b in ref[name]
                  for gap, a in [partner(b, arm[name])] if gap <= 1.5), default=0.0)
    margin = max(BORDERLINE, 2 * spread)
    for name in ref:
        # each box of one side has a box of its class within 1.5 px on the other, both ways; a box whose confidence
        # is within `margin` of detect's 0.25 threshold may fall either side of it on another CPU (seen: an arm64
        # half_ripe at 0.252 that x86 scored just below 0.25; an x86 unripe at 0.262), so only those may lack one
        for ours, theirs in ((ref[name], arm[name]), (arm[name], ref[name])):
            for b in ours:
                gap = partner(b, theirs)[0]
                assert gap <= 1.5 or b["confidence"] < 0.25 + margin, (name, b, gap, margin)
        assert abs(len(arm[name]) - len(ref[name])) <= 2, (name, len(arm[name]), len(ref[name]))
    shutil.rmtree(tmp_path / "in" / "src")
