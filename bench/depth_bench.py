"""Cost of depth: the daemon's FPS on the sample-3d recording (colour + depth, aligned, located) vs the same colour
frames without depth, and the locate step's own time per frame, measured inside the running daemon.

    CI=true .venv/bin/python bench/depth_bench.py --rounds 3 --seconds 10

Each round runs the real Daemon in this process (MQTT and the live view off; tracking and targets on, so the
output path is the production one) once per variant, interleaved: `depth` plays daemon/assets/sample-3d.db3 through
pyrealsense2 (read, rs.align, Locate); `realsense-no-depth` the same colour frames as a colour-only RealSense
recording (the camera with depth off: what turning depth on costs); `bmp-no-depth` the same frames from a BMP folder
(a source that costs next to nothing to read; playing a recording decompresses every frame, which a live camera
does not). Both are played as fast as inference takes them (realtime off, looped). FPS = frames
processed in the measuring window / window length, after a warm-up. The locate time is Locate.run +
Located.annotate timed around each call in the output thread, summed per frame, as thread CPU time (the work the
step adds) and as wall time (which also holds waits for the GIL while another thread runs Python or a pyrealsense2
call that keeps the GIL).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from daemon import config as config_mod  # noqa: E402
from daemon import depth as depth_mod  # noqa: E402
from daemon.capture import SourceError, make_source  # noqa: E402
from daemon.config import SAMPLE_3D, SourceConfig  # noqa: E402
from daemon.pipeline import Daemon  # noqa: E402


def colour_only(out: Path) -> tuple[Path, Path]:
    """The recording's colour frames as BMP files (decoding a BMP costs next to nothing) and as a colour-only
    RealSense recording (the same camera with depth off)."""
    from depth_recording import Camera, write_recording

    source = make_source(SourceConfig(uri=str(SAMPLE_3D)))
    source.open()
    images = []
    try:
        while True:
            try:
                images.append(source.read())
            except SourceError:
                break
    finally:
        source.close()
    folder = out / "bmp"
    folder.mkdir()
    for n, image in enumerate(images, 1):
        cv2.imwrite(str(folder / f"{n:03d}.bmp"), image)
    h, w = images[0].shape[:2]
    recording = out / "colour-only.db3"
    write_recording(recording, [(im, None) for im in images], Camera(width=w, height=h, fx=source.intrinsics.fx,
                    fy=source.intrinsics.fy, ppx=source.intrinsics.ppx, ppy=source.intrinsics.ppy,
                    fps=int(source.native_fps)), depth=False)
    return folder, recording


def timed_locate(times: list[tuple[float, float]]) -> None:
    """Time Locate.run + Located.annotate per frame with depth (both run once per frame, in the output thread):
    (thread CPU seconds, wall seconds). Wall time also holds waits for the GIL other threads hold."""
    run, annotate = depth_mod.Locate.run, depth_mod.Located.annotate
    pending = {"cpu": 0.0, "wall": 0.0}

    def run_timed(self, *a, **k):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = run(self, *a, **k)
        pending["cpu"], pending["wall"] = time.thread_time() - c0, time.perf_counter() - t0
        return out

    def annotate_timed(self, *a, **k):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = annotate(self, *a, **k)
        times.append((pending["cpu"] + time.thread_time() - c0, pending["wall"] + time.perf_counter() - t0))
        return out

    depth_mod.Locate.run, depth_mod.Located.annotate = run_timed, annotate_timed


def measure(uri: str, seconds: float, warmup: float, threads: int) -> float:
    cfg = config_mod.validate({"device_id": "bench", "source": {"uri": uri, "realtime": False, "loop": True},
                               "mqtt": {"enabled": False}, "runtime": {"threads": threads},
                               "targets": {"min_age_ms": 0}})
    d = Daemon(cfg)
    d.start()
    try:
        time.sleep(warmup)
        n0, t0 = d.stages.processed, time.perf_counter()
        time.sleep(seconds)
        return (d.stages.processed - n0) / (time.perf_counter() - t0)
    finally:
        d.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    locate_s: list[tuple[float, float]] = []
    timed_locate(locate_s)
    fps: dict[str, list[float]] = {"depth": [], "realsense-no-depth": [], "bmp-no-depth": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder, recording = colour_only(Path(tmp))
        for r in range(args.rounds):
            for name, uri in (("depth", "sample-3d"), ("realsense-no-depth", str(recording)),
                              ("bmp-no-depth", str(folder))):
                fps[name].append(round(measure(uri, args.seconds, args.warmup, args.threads), 2))
                print(f"round {r + 1} {name}: {fps[name][-1]} fps", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in fps.items()}
    cpu_ms = sorted(c * 1000 for c, _ in locate_s)
    wall_ms = sorted(w * 1000 for _, w in locate_s)
    print(json.dumps({
        "fps_rounds": fps, "fps_median": med,
        "ratio_depth_vs_realsense_no_depth": round(med["depth"] / med["realsense-no-depth"], 3),
        "ratio_depth_vs_bmp_no_depth": round(med["depth"] / med["bmp-no-depth"], 3),
        "locate_frames": len(cpu_ms),
        "locate_cpu_ms_median": round(statistics.median(cpu_ms), 3) if cpu_ms else None,
        "locate_cpu_ms_p95": round(cpu_ms[int(0.95 * (len(cpu_ms) - 1))], 3) if cpu_ms else None,
        "locate_wall_ms_median": round(statistics.median(wall_ms), 3) if wall_ms else None,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
