"""Cost of depth: the daemon's FPS on sample-3d's frames with depth (located) vs the same colour frames without
depth, and the locate step's own time per frame, measured inside the running daemon.

    CI=true .venv/bin/python bench/depth_bench.py --rounds 3 --seconds 10 --out bench/results/depth.json

Each round runs the real Daemon in this process (MQTT and the live view off; tracking and targets on, so the
output path is the production one) once per variant, interleaved. Every variant holds sample-3d's 3 frames
--repeat times over (played as it is, a 3-frame recording makes the daemon restart playback every 3 frames and
measures the rewinds): `depth` with its depth registered to colour (read as it is and Located); `depth-d435-like`
with the depth a separate D435-like depth camera sees (bench/depth_recording.py D435_LIKE_*: another size and focal
length, 15 mm baseline), so each box's depth samples are mapped into the colour frame; `realsense-no-depth` colour
only (the same camera with depth off: what turning depth on costs); each compressed, as the recorder writes by
default and sample-3d is, and `-uncompressed` (reading is then about a copy, as from a live camera: the
camera-like comparison); and `bmp-no-depth`, the frames from a BMP folder. All play as fast as inference takes them
(realtime off, looped). FPS = frames processed in the measuring window / window length, after a warm-up; a round
in which playback stalled (the capture thread reporting a failure) is counted in `stalled_rounds` and played again.
Each depth variant's ratio is against colour only with the same compression: of the medians, and per round
(`ratio_per_round`, the two played in the same round, so drift on a shared machine shows as their spread);
`--only` plays some variants, e.g. the camera-like pair for more rounds in the same time. Where the CPU goes:
`cpu_ms_per_frame_by_thread_median`, each thread's CPU time over the window per processed frame (/proc), the
daemon's threads by name and every native one (OpenVINO's workers, librealsense's playback) as `native`.
The locate time is Locate.run + Located.annotate timed around each call in the output thread, summed per frame, per
depth variant, as thread CPU time (the work the step adds) and as wall time (which also holds waits for the GIL
while another thread runs Python or a pyrealsense2 call that keeps the GIL).
Before the rounds, the capture side alone: `rs_align_ms` is rs.align(rs.stream.color) over one frameset of each
depth variant (what the capture thread did per frame before it stopped aligning; wall and thread CPU, median of 30
calls), and `read_ms_median_of_3` the source's read() per frame on each recording: playing a compressed recording
decompresses every frame, the depth stream's too, which a live camera does not do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
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


def variants(out: Path, repeat: int) -> dict[str, Path]:
    """Recordings of sample-3d's frames, `repeat` times over (sample-3d holds 3 frames: played as it is, the
    daemon would spend its time restarting playback at every rewind, with or without depth), each compressed (as
    the recorder writes by default and sample-3d is) and uncompressed (reading is then a copy, as from a live
    camera): with depth registered to colour, with depth as a D435-like depth camera sees it, and colour only (the
    same camera with depth off); and the frames as BMP files (decoding a BMP costs next to nothing)."""
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
    played = {}  # the order they play in, each round
    for name, (frames, kw) in kinds.items():
        for suffix, compress in (("", True), ("-uncompressed", False)):
            played[name + suffix] = out / f"{name}{suffix}.db3"
            write_recording(played[name + suffix], frames * repeat, cam, compress=compress, **kw)
    played["bmp-no-depth"] = folder
    return played


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


def thread_cpu_ms() -> dict[int, float]:
    """CPU ms so far of every thread of this process (Linux /proc), by native thread id."""
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) * tick_ms  # utime + stime
    return out


def cpu_per_frame(before: dict[int, float], after: dict[int, float], frames: int) -> dict[str, float]:
    """CPU ms per processed frame by thread: the daemon's Python threads by name, the runtimes' and librealsense's
    own threads together as `native`."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid, ms in after.items():
        name = re.sub(r"-\d+$", "", names.get(tid, "native"))
        out[name] = out.get(name, 0.0) + (ms - before.get(tid, 0.0)) / max(frames, 1)
    return {k: round(v, 2) for k, v in sorted(out.items())}


def measure(uri: str, seconds: float, warmup: float, threads: int) -> tuple[float, int, dict[str, float]]:
    """(FPS over the window, capture failures in it: a playback that stalled for 5 s spoils the round, CPU ms per
    frame by thread)."""
    cfg = config_mod.validate({"device_id": "bench", "source": {"uri": uri, "realtime": False, "loop": True},
                               "mqtt": {"enabled": False}, "runtime": {"threads": threads},
                               "targets": {"min_age_ms": 0}})
    d = Daemon(cfg)
    d.start()
    try:
        time.sleep(warmup)
        n0, f0, t0, c0 = d.stages.processed, d.capture.read_failures, time.perf_counter(), thread_cpu_ms()
        time.sleep(seconds)
        frames, elapsed = d.stages.processed - n0, time.perf_counter() - t0
        return frames / elapsed, d.capture.read_failures - f0, cpu_per_frame(c0, thread_cpu_ms(), frames)
    finally:
        d.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeat", type=int, default=100, help="times sample-3d's 3 frames are recorded over")
    p.add_argument("--only", default="", help="comma-separated variants to play (default: all), e.g. "
                   "depth-uncompressed,realsense-no-depth-uncompressed for more rounds of the camera-like pair")
    p.add_argument("--out", type=Path, help="write the figures (JSON) here too")
    args = p.parse_args()
    locate_s: list[tuple[float, float]] = []
    timed_locate(locate_s)
    depth_variants = [f"{k}{s}" for k in ("depth", "depth-d435-like") for s in ("", "-uncompressed")]
    located: dict[str, list[tuple[float, float]]] = {name: [] for name in depth_variants}
    with tempfile.TemporaryDirectory() as tmp:
        paths = variants(Path(tmp), args.repeat)
        if args.only:
            wanted = args.only.split(",")
            unknown = sorted(set(wanted) - set(paths))
            if unknown:
                p.error(f"--only: unknown variant(s) {unknown}; known: {sorted(paths)}")
            paths = {name: uri for name, uri in paths.items() if name in wanted}
        depth_variants = [name for name in depth_variants if name in paths]
        located = {name: located[name] for name in depth_variants}
        fps: dict[str, list[float]] = {name: [] for name in paths}
        stalled: dict[str, int] = {name: 0 for name in paths}
        cpu: dict[str, list[dict]] = {name: [] for name in paths}
        align = {name: align_ms(paths[name]) for name in ("depth", "depth-d435-like") if name in paths}
        reads: dict[str, list[dict]] = {name: [] for name in paths if name != "bmp-no-depth"}
        for _ in range(3):  # interleaved, like the rounds
            for name in reads:
                reads[name].append(read_ms(paths[name]))
        for r in range(args.rounds):
            for name, uri in paths.items():
                for _ in range(3):  # a round whose playback stalled is counted and played again
                    locate_s.clear()
                    value, failures, per_thread = measure(str(uri), args.seconds, args.warmup, args.threads)
                    if not failures:
                        break
                    stalled[name] += 1
                    print(f"round {r + 1} {name}: playback stalled ({failures}), again", file=sys.stderr)
                fps[name].append(round(value, 2))
                cpu[name].append(per_thread)
                located.get(name, []).extend(locate_s)
                print(f"round {r + 1} {name}: {fps[name][-1]} fps", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in fps.items()}
    cpu_median = {name: {k: round(statistics.median(r.get(k, 0.0) for r in rounds), 2)
                         for k in sorted({k for r in rounds for k in r})} for name, rounds in cpu.items()}
    figures = {"repeat": args.repeat, "fps_rounds": fps, "fps_median": med, "stalled_rounds": stalled,
               "cpu_ms_per_frame_by_thread_median": cpu_median,
               "rs_align_ms": align,
               "read_ms_median_of_3": {name: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")}
                                       for name, rs in reads.items()}}
    for name, times in located.items():
        cpu_ms = sorted(c * 1000 for c, _ in times)
        wall_ms = sorted(w * 1000 for _, w in times)
        colour_only = "realsense-no-depth" + ("-uncompressed" if name.endswith("-uncompressed") else "")
        ratios = {}
        if colour_only in med:
            # the two of a round were played minutes apart at most: the spread of these ratios is the drift's
            per_round = [round(a / b, 3) for a, b in zip(fps[name], fps[colour_only])]
            ratios = {"ratio_vs_colour_only": round(med[name] / med[colour_only], 3), "colour_only": colour_only,
                      "ratio_per_round": per_round, "ratio_per_round_median": statistics.median(per_round)}
        if "bmp-no-depth" in med:
            ratios["ratio_vs_bmp_no_depth"] = round(med[name] / med["bmp-no-depth"], 3)
        figures[name] = {
            **ratios,
            "locate_frames": len(cpu_ms),
            "locate_cpu_ms_median": round(statistics.median(cpu_ms), 3) if cpu_ms else None,
            "locate_cpu_ms_p95": round(cpu_ms[int(0.95 * (len(cpu_ms) - 1))], 3) if cpu_ms else None,
            "locate_wall_ms_median": round(statistics.median(wall_ms), 3) if wall_ms else None,
        }
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
