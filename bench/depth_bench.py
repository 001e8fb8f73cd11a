"""Cost of depth: the daemon's FPS on the sample-3d recording (colour + depth, located) vs the same colour frames
without depth, and the locate step's own time per frame, measured inside the running daemon.

    CI=true .venv/bin/python bench/depth_bench.py --rounds 3 --seconds 10

Each round runs the real Daemon in this process (MQTT and the live view off; tracking and targets on, so the
output path is the production one) once per variant, interleaved: `depth` plays daemon/assets/sample-3d.db3 through
pyrealsense2 (its depth is registered to colour, so it is read as it is and Located); `depth-d435-like` the same
frames with their depth as a separate D435-like depth camera sees it (bench/depth_recording.py D435_LIKE_*: another
size and focal length, 15 mm baseline), so each box's depth samples are mapped into the colour frame;
`realsense-no-depth` the same colour frames as a colour-only RealSense recording (the camera with depth off: what
turning depth on costs); `bmp-no-depth` the same frames from a BMP folder. All are played as fast as inference
takes them (realtime off, looped). FPS = frames processed in the measuring window / window length, after a
warm-up. The locate time is Locate.run + Located.annotate timed around each call in the output thread, summed per
frame, per depth variant, as thread CPU time (the work the step adds) and as wall time (which also holds waits for
the GIL while another thread runs Python or a pyrealsense2 call that keeps the GIL).
Before the rounds, the capture side alone: `rs_align_ms` is rs.align(rs.stream.color) over one frameset of each
depth variant (what the capture thread did per frame before it stopped aligning; wall and thread CPU, median of 30
calls), and `read_ms_median_of_3` the source's read() per frame on each recording, compressed (as the recorder
writes by default and sample-3d is) and uncompressed: playing a compressed recording decompresses every frame, the
depth stream's too, which a live camera does not do.
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


def variants(out: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Recordings of sample-3d's frames: (to play in the daemon, to time reads on).

    Played: the frames as BMP files (decoding a BMP costs next to nothing), as a colour-only RealSense recording
    (the same camera with depth off), and with their depth as a D435-like depth camera sees it. Read: the same ten
    times over (no rewind inside a measurement), compressed as the recorder writes by default and uncompressed."""
    from depth_recording import D435_LIKE_DEPTH, D435_LIKE_EXTRINSICS, Camera, depth_camera_view, write_recording

    source = make_source(SourceConfig(uri=str(SAMPLE_3D)))
    source.open()
    images, depths = [], []
    try:
        while True:
            try:
                images.append(source.read())
            except SourceError:
                break
            depths.append(source.take_depth().depth)
    finally:
        source.close()
    folder = out / "bmp"
    folder.mkdir()
    for n, image in enumerate(images, 1):
        cv2.imwrite(str(folder / f"{n:03d}.bmp"), image)
    h, w = images[0].shape[:2]
    cam = Camera(width=w, height=h, fx=source.intrinsics.fx, fy=source.intrinsics.fy, ppx=source.intrinsics.ppx,
                 ppy=source.intrinsics.ppy, fps=int(source.native_fps))
    d435 = {"depth_cam": D435_LIKE_DEPTH, "extrinsics": D435_LIKE_EXTRINSICS}
    kinds = {  # name: (frames, write_recording's keywords)
        "depth": (list(zip(images, depths)), {}),
        "depth-d435-like": ([(im, depth_camera_view(d, cam, D435_LIKE_DEPTH, *D435_LIKE_EXTRINSICS))
                             for im, d in zip(images, depths)], d435),
        "realsense-no-depth": ([(im, None) for im in images], {"depth": False}),
    }
    played = {"depth": SAMPLE_3D}  # the order they play in, each round
    read = {}
    for name, (frames, kw) in kinds.items():
        if name != "depth":
            played[name] = out / f"{name}.db3"
            write_recording(played[name], frames, cam, **kw)
        for suffix, compress in (("", True), ("-uncompressed", False)):
            read[name + suffix] = out / f"read-{name}{suffix}.db3"
            write_recording(read[name + suffix], frames * 10, cam, compress=compress, **kw)
    played["bmp-no-depth"] = folder
    return played, read


def read_ms(path: Path, reads: int = 25) -> dict:
    """The capture side's cost per frame of a recording: median wall ms of source.read() + take_depth() (what the
    capture thread does), and this process's CPU ms per frame over them (the playback thread's decoding too)."""
    source = make_source(SourceConfig(uri=str(path)))
    source.open()
    wall = []
    try:
        source.read()  # the first frame after open() also waits for playback to start
        c0 = time.process_time()
        for _ in range(reads):
            t0 = time.perf_counter()
            source.read()
            source.take_depth()
            wall.append(time.perf_counter() - t0)
        cpu = (time.process_time() - c0) / reads
    finally:
        source.close()
    return {"wall": round(statistics.median(wall) * 1000, 2), "cpu": round(cpu * 1000, 2)}


def align_ms(path: Path, calls: int = 30) -> dict:
    """Median ms of rs.align(rs.stream.color).process over one frameset of the recording at `path`."""
    import pyrealsense2 as rs

    source = make_source(SourceConfig(uri=str(path)))
    source.open()
    try:
        frames = source.pipeline.wait_for_frames(5000)
        align, wall, cpu = rs.align(rs.stream.color), [], []
        for _ in range(calls):
            c0, t0 = time.thread_time(), time.perf_counter()
            align.process(frames).get_depth_frame().get_data()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    finally:
        source.close()
    return {"wall": round(statistics.median(wall) * 1000, 3), "cpu": round(statistics.median(cpu) * 1000, 3)}


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
    located: dict[str, list[tuple[float, float]]] = {"depth": [], "depth-d435-like": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths, to_read = variants(Path(tmp))
        fps: dict[str, list[float]] = {name: [] for name in paths}
        align = {name: align_ms(paths[name]) for name in located}
        reads: dict[str, list[dict]] = {name: [] for name in to_read}
        for _ in range(3):  # interleaved, like the rounds
            for name, path in to_read.items():
                reads[name].append(read_ms(path))
        for r in range(args.rounds):
            for name, uri in paths.items():
                locate_s.clear()
                fps[name].append(round(measure(str(uri), args.seconds, args.warmup, args.threads), 2))
                located.get(name, []).extend(locate_s)
                print(f"round {r + 1} {name}: {fps[name][-1]} fps", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in fps.items()}
    figures = {"fps_rounds": fps, "fps_median": med, "rs_align_ms": align,
               "read_ms_median_of_3": {name: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")}
                                       for name, rs in reads.items()}}
    for name, times in located.items():
        cpu_ms = sorted(c * 1000 for c, _ in times)
        wall_ms = sorted(w * 1000 for _, w in times)
        figures[name] = {
            "ratio_vs_realsense_no_depth": round(med[name] / med["realsense-no-depth"], 3),
            "ratio_vs_bmp_no_depth": round(med[name] / med["bmp-no-depth"], 3),
            "locate_frames": len(cpu_ms),
            "locate_cpu_ms_median": round(statistics.median(cpu_ms), 3) if cpu_ms else None,
            "locate_cpu_ms_p95": round(cpu_ms[int(0.95 * (len(cpu_ms) - 1))], 3) if cpu_ms else None,
            "locate_wall_ms_median": round(statistics.median(wall_ms), 3) if wall_ms else None,
        }
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
