"""End-to-end benchmark: the daemon's processed FPS vs the backend's raw inference FPS, start-up time, RSS.

Runs `ripeye run` as a subprocess on the sample clip (played as fast as inference takes frames, losslessly) against
a private mosquitto on a free loopback port, reads its `stats` messages, and compares with inference alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.config import DEFAULT_MODEL_DIR, SAMPLE_CLIP  # noqa: E402
from daemon.detector import load_detector  # noqa: E402
from daemon.runtimes.base import RuntimeOptions  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from local_broker import start_broker  # noqa: E402


def raw_fps(backend: str, model: str, precision: str, threads: int, inflight: int) -> dict:
    det = load_detector(model, backend, precision, RuntimeOptions(threads=threads, inflight=inflight))
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    tensors = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        tensors.append(det.preprocess(frame)[0])
    for t in tensors[:5]:
        det.infer(t)
    t0 = time.perf_counter()
    if inflight > 1:
        it = iter(tensors)
        lock = threading.Lock()

        def run():
            while True:
                with lock:
                    t = next(it, None)
                if t is None:
                    return
                det.infer(t)

        ths = [threading.Thread(target=run) for _ in range(inflight)]
        [t.start() for t in ths]
        [t.join() for t in ths]
    else:
        for t in tensors:
            det.infer(t)
    wall = time.perf_counter() - t0
    return {"backend": det.backend, "precision": det.runtime.precision, "frames": len(tensors),
            "fps": round(len(tensors) / wall, 2)}


class Watcher:
    def __init__(self, port: int):
        self.msgs: list[tuple[float, str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self.msgs.append((time.perf_counter(), m.topic, m.payload))
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("bench/#")
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def first(self, suffix: str, after: float = 0.0, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t, topic, p in list(self.msgs):
                if topic.endswith(suffix) and t >= after:
                    return t, p
            time.sleep(0.01)
        raise TimeoutError(f"no {suffix} message")


def daemon_run(cfg: dict, port: int, watcher: Watcher, seconds: float, workdir: Path) -> dict:
    path = workdir / f"cfg-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=REPO,
                            env={**os.environ, "CI": "true"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t_first, _ = watcher.first("/detections", after=t0, timeout=120)
        time.sleep(seconds)
        stats = [json.loads(p) for t, topic, p in watcher.msgs if topic.endswith("/stats") and t > t_first]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    out = {"first_detection_s": round(t_first - t0, 2)}
    if len(stats) >= 3:
        a, b = stats[1], stats[-1]  # skip the first window (warm-up)
        out["fps"] = round((b["processed"] - a["processed"]) / (b["at"] - a["at"]), 2)
        out["rss_mb"] = b["rss_mb"]
        out["dropped_frames"] = b["dropped_frames"]
        out["latency_ms"] = b["latency_ms"]
    return out


def summarise(config: tuple, runs: list[dict], single: list[dict]) -> dict:
    """Medians over the rounds; `vs_single` compares with the same backend's raw single-stream FPS."""
    backend, precision, inflight = config
    raw = [r["raw"]["fps"] for r in runs]
    fps = [r["fps"] for r in runs if "fps" in r]
    row = {"backend": backend, "precision": precision, "inflight": inflight, "raw_fps_rounds": raw,
           "fps_rounds": fps, "raw_fps": round(statistics.median(raw), 2)}
    if fps:
        last = [r for r in runs if "fps" in r][-1]
        row.update({"fps": round(statistics.median(fps), 2), "ratio": round(statistics.median(fps) / row["raw_fps"], 3),
                    "total_latency_ms": statistics.median(r["latency_ms"]["total"]["median"] for r in runs
                                                          if "latency_ms" in r),
                    "rss_mb": last["rss_mb"], "dropped_frames": last["dropped_frames"],
                    "latency_ms": last["latency_ms"]})
        if single:
            row["vs_single"] = round(row["fps"] / statistics.median(r["raw"]["fps"] for r in single), 3)
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--backends", default="openvino:int8,openvino:fp32,onnxruntime:fp32,ncnn:fp32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--starts", type=int, default=3, help="cold starts timed for start-to-first-detection")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration (medians quoted)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ripeye-e2e-"))
    broker, port = start_broker(work)
    watcher = Watcher(port)
    configs = [(b, prec, n) for b, prec in (item.split(":") for item in args.backends.split(","))
               for n in (1, 2) if n == 1 or b == "openvino"]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    try:
        # Rounds interleave the configurations so that drift on a shared machine hits them all alike.
        for r in range(args.rounds):
            for backend, precision, inflight in configs:
                raw = raw_fps(backend, args.model, precision, args.threads, inflight)
                cfg = {"device_id": "e2e", "source": {"uri": str(SAMPLE_CLIP), "realtime": False},
                       "model": {"path": args.model, "precision": precision},
                       "runtime": {"backend": backend, "threads": args.threads, "inflight": inflight},
                       "mqtt": {"port": port, "topic_prefix": "bench"}, "stats": {"interval_s": 2}}
                run = {"raw": raw, **daemon_run(cfg, port, watcher, args.seconds, work)}
                runs[(backend, precision, inflight)].append(run)
                print(f"[e2e] round {r + 1}: {backend} {precision} x{inflight}: raw {raw['fps']} FPS, "
                      f"daemon {run.get('fps', '–')} FPS", file=sys.stderr, flush=True)
        rows = [summarise(c, runs[c], runs.get((c[0], c[1], 1), [])) for c in configs]
        starts = []
        for _ in range(args.starts):
            cfg = {"device_id": "e2e", "source": {"uri": str(SAMPLE_CLIP)}, "model": {"path": args.model},
                   "mqtt": {"port": port, "topic_prefix": "bench"}, "stats": {"interval_s": 1}}
            starts.append(daemon_run(cfg, port, watcher, 0.1, work)["first_detection_s"])
        idle_cfg = {"device_id": "e2e", "source": {"uri": "/dev/video99"}, "model": {"path": args.model},
                    "mqtt": {"port": port, "topic_prefix": "bench"}, "stats": {"interval_s": 1}}
        path = work / "idle.yaml"
        path.write_text(yaml.safe_dump(idle_cfg))
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=REPO,
                                env={**os.environ, "CI": "true"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(6)
        idle = [json.loads(p) for t, topic, p in watcher.msgs if topic.endswith("/stats")][-1]["rss_mb"]
        proc.terminate()
        proc.wait()
    finally:
        watcher.c.loop_stop()
        broker.terminate()
    from daemon.bench import machine_name

    report = {"machine": machine_name(), "created_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "seconds": args.seconds, "rounds": args.rounds, "rows": rows, "start_to_first_detection_s": starts,
              "start_median_s": statistics.median(starts), "idle_rss_mb": idle}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Machine: {report['machine']}; sample clip played losslessly as fast as inference takes it; "
             f"daemon FPS from its own stats over {args.seconds:.0f} s after warm-up; medians of {args.rounds} "
             "interleaved rounds (each round: raw inference, then the daemon).", "",
             "| Backend | Precision | In flight | Raw inference FPS | Daemon FPS | Daemon / raw "
             "| Daemon / raw single stream | Median total latency (ms) | RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['inflight']} | {r['raw_fps']} | {r.get('fps', '–')} | "
                     f"{r.get('ratio', '–')} | {r.get('vs_single', '–')} | {r.get('total_latency_ms', '–')} | "
                     f"{r.get('rss_mb', '–')} |")
    lines += ["", f"Start to first published detection (shipped model, auto backend): median "
              f"{report['start_median_s']:.2f} s of {starts}; idle RSS (no camera): {idle} MiB."]
    (out / "e2e.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
