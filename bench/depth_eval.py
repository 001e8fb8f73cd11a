"""Score 3D positions end to end: the daemon plays a RealSense recording, MQTT messages are checked against truth.

    .venv/bin/python bench/depth_eval.py                       # the bundled sample-3d recording
    .venv/bin/python bench/depth_eval.py --recording /tmp/x.db3   # one made by bench/depth_recording.py

Starts a local mosquitto on a free port, runs `ripeye run` on the recording (not realtime, so no frame is dropped;
looped `--passes` times, so tracks live long enough to become targets) with a camera→arm transform, collects
`detections` and `targets`, and reports: per unoccluded
tomato matched by a detection (IoU ≥ 0.5), the 3D error against the synthetic truth (which includes the detector's
box error: a box centre 20 px off is 30 mm off at 0.9 m) and against the point the detection's own box centre looks
at on that tomato (the locate step alone); the hole-riddled tomato's
position (must be null); and the largest |arm_xyz − T·xyz_mm| over targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.config import SAMPLE_3D  # noqa: E402
from daemon.harvest import box_iou  # noqa: E402

# a plausible mount: camera looking along the arm's +x, 400 mm up, 120 mm ahead of the arm base, tilted 10°
_T = np.radians(10)
CAMERA_TO_ARM = np.array([[0, -np.sin(_T), np.cos(_T), 120.0], [-1, 0, 0, 0.0], [0, -np.cos(_T), -np.sin(_T), 400.0],
                          [0, 0, 0, 1]])


def score(detections: list[dict], targets: list[dict], truth: dict, camera_to_arm: np.ndarray,
          tolerance_mm: float = 15.0) -> dict:
    """Figures from the collected messages (detections: `detections` bodies; targets: `targets` bodies)."""
    frames = {f["frame"]: f for f in truth["frames"]}
    cam = truth["camera"]
    errors, locate_errors, hole_positions, missed = [], [], [], 0
    for msg in detections:
        frame = frames.get((msg["frame_id"] - 1) % len(frames) + 1)  # the recording loops
        if frame is None:
            continue
        for t in frame["tomatoes"]:
            if t["occluded"]:
                continue
            best = max(msg["detections"], key=lambda d: box_iou(d["box"], t["box"]), default=None)
            if best is None or box_iou(best["box"], t["box"]) < 0.5:
                missed += (not t["holes"])
                continue
            if t["holes"]:
                hole_positions.append(best.get("xyz_mm", "absent"))
            elif best.get("xyz_mm") is None:
                errors.append(float("inf"))
                locate_errors.append(float("inf"))
            else:
                errors.append(float(np.linalg.norm(np.subtract(best["xyz_mm"], t["xyz_mm"]))))
                # the locate step alone: where the detection's own box centre looks, at the tomato's true depth
                (u, v), z = best["center"], t["xyz_mm"][2]
                seen = ((u - cam["ppx"]) / cam["fx"] * z, (v - cam["ppy"]) / cam["fy"] * z, z)
                locate_errors.append(float(np.linalg.norm(np.subtract(best["xyz_mm"], seen))))
    rotation, translation = camera_to_arm[:3, :3], camera_to_arm[:3, 3]
    arm_dev = [float(np.abs(np.subtract(m["arm_xyz"], rotation @ m["xyz_mm"] + translation)).max())
               for m in targets if m.get("xyz_mm") is not None]
    errs = np.array(errors) if errors else np.array([np.inf])
    locate = np.array(locate_errors) if locate_errors else np.array([np.inf])
    return {
        "frames": len(detections),
        "unoccluded_matched": len(errors),
        "unoccluded_missed_by_detector": missed,
        "within_tolerance": int((errs <= tolerance_mm).sum()) if errors else 0,
        "within_tolerance_fraction": round(float((errs <= tolerance_mm).mean()), 3) if errors else 0.0,
        "error_mm_median": round(float(np.median(errs)), 2) if errors else None,
        "error_mm_p90": round(float(np.percentile(errs, 90)), 2) if errors else None,
        # the same, against the point the detection's box centre looks at: the locate step without box error
        "locate_within_tolerance_fraction": round(float((locate <= tolerance_mm).mean()), 3),
        "locate_error_mm_median": round(float(np.median(locate)), 2),
        "hole_tomato_positions": hole_positions,
        "targets_with_xyz": len(arm_dev),
        "targets_without_xyz": sum(1 for m in targets if m.get("xyz_mm") is None),
        "arm_xyz_max_deviation_mm": round(max(arm_dev), 3) if arm_dev else None,
    }


def run(recording: Path, port: int, workdir: Path, camera_to_arm: np.ndarray = CAMERA_TO_ARM, passes: int = 4,
        timeout_s: float = 120.0, imgsz: int = 0) -> tuple[dict, list[dict], list[dict]]:
    """Run the daemon on `recording` against a broker on `port`; return (figures, detections, targets)."""
    import yaml

    from tests.conftest import Subscriber, daemon_log, start_daemon

    truth = json.loads(Path(recording).with_suffix(".json").read_text())
    n_frames = len(truth["frames"]) * passes
    config = workdir / "depth-eval.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "depth-eval", "state_dir": str(workdir / "state"),
        "source": {"uri": str(recording), "realtime": False, "loop": True},
        "mqtt": {"port": port, "qos": 1}, "stats": {"interval_s": 60},
        "targets": {"min_age_ms": 0, "min_frames": 2},
        "calibration": {"camera_to_arm": camera_to_arm.tolist()}, "model": {"imgsz": imgsz},
    }))
    sub = Subscriber(port, "ripeye/depth-eval/#")
    proc = start_daemon(config)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and len(sub.on("detections")) < n_frames:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{daemon_log(proc)[-3000:]}")
            time.sleep(0.1)
        time.sleep(0.5)  # targets of the last frame follow its detections
        detections, targets = sub.json("detections"), sub.json("targets")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        sub.close()
    if len(detections) < n_frames:
        raise RuntimeError(f"{len(detections)} of {n_frames} frames published:\n{daemon_log(proc)[-3000:]}")
    detections = detections[:n_frames]
    return score(detections, targets, truth, camera_to_arm), detections, targets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recording", default=str(SAMPLE_3D))
    p.add_argument("--passes", type=int, default=4, help="times the recording is played")
    p.add_argument("--imgsz", type=int, default=0, help="model input size (model.imgsz; 0: the folder's default)")
    args = p.parse_args()
    from tests.conftest import Broker

    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp))
        broker.start()
        try:
            figures, _, _ = run(Path(args.recording), broker.port, Path(tmp), passes=args.passes, imgsz=args.imgsz)
        finally:
            broker.stop()
    print(json.dumps({"recording": args.recording, **figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
