"""Throughput of N inference requests in flight against the best single stream, interleaved over several rounds.

    .venv/bin/python bench/inflight.py [--backend openvino --precision int8] [--inflight 2] [--rounds 7]

One run compares, on the same frames and through the daemon's own runtime classes:
  - one request in flight with 1 … all cores' threads (the best of these is "single stream");
  - one request in flight pinned to one thread (how fast one core is on its own);
  - N requests in flight sharing all cores (OpenVINO throughput streams / shared ORT session).
Configurations alternate round by round so that drift on a shared machine hits them all alike; medians are quoted.
On a C-core CPU, N in flight can reach about C × the one-thread rate at best, so its gain over the best single stream is
bounded by C / (the single stream's own speed-up on C threads): the report prints both, so the ratio can be read
against what the hardware allows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon import vision  # noqa: E402
from daemon.bench import find_artifact, machine_name, throughput  # noqa: E402
from daemon.config import DEFAULT_MODEL_DIR, SAMPLE_CLIP  # noqa: E402
from daemon.model import load_bundle  # noqa: E402
from daemon.runtimes.base import usable_cores  # noqa: E402

DATASET_VALID = REPO.parent / "shared" / "datasets" / "laboro-tomato-big" / "valid"


def frames(n: int) -> tuple[list, str]:
    """Real frames: the dataset's validation photos when present, else the bundled sample clip."""
    if DATASET_VALID.is_dir():
        files = sorted(DATASET_VALID.glob("*.jpg"))[:n]
        return [cv2.imread(str(f)) for f in files], f"{len(files)} photos from {DATASET_VALID.name}/"
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    out = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    return out, f"{len(out)} frames of the sample clip"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--backend", default="openvino")
    p.add_argument("--precision", default="int8")
    p.add_argument("--inflight", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--frames", type=int, default=200, help="inferences timed per configuration and round")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args()

    bundle = load_bundle(args.model)
    kind = {"openvino": "openvino", "onnxruntime": "onnxruntime"}.get(args.backend)
    artifact = find_artifact(bundle, kind, args.precision) if kind else None
    if artifact is None:
        print(f"no {args.backend} {args.precision} artifact in {bundle.root}", file=sys.stderr)
        return 2
    images, source = frames(32)
    tensors = [vision.preprocess(im, bundle.input_size)[0] for im in images]
    cores = usable_cores()
    configs = [(f"1 in flight, {t} thread{'s' if t > 1 else ''}", 1, t) for t in range(1, cores + 1)]
    configs.append((f"{args.inflight} in flight, {cores} threads", args.inflight, cores))
    fps: dict[str, list[float]] = {c[0]: [] for c in configs}
    latency: dict[str, list[float]] = {c[0]: [] for c in configs}
    base = {"model": str(bundle.root), "artifact": str(artifact), "backend": args.backend,
            "precision": args.precision, "reps": args.frames}
    for r in range(args.rounds):
        for label, inflight, threads in configs:
            res = throughput({**base, "inflight": inflight, "threads": threads}, tensors)
            fps[label].append(res["inflight_fps"])
            latency[label].append(res["inflight_median_ms"])
        print(f"[inflight] round {r + 1}/{args.rounds}: "
              + ", ".join(f"{k}: {v[-1]}" for k, v in fps.items()), file=sys.stderr, flush=True)

    median = {k: round(statistics.median(v), 1) for k, v in fps.items()}
    singles = {c[0]: median[c[0]] for c in configs if c[1] == 1}
    best_single = max(singles, key=singles.get)
    one_thread = configs[0][0]
    multi = configs[-1][0]
    # Per-round ratios too: the spread says how much one number on this machine can be trusted.
    per_round = [round(fps[multi][i] / max(fps[k][i] for k in singles), 3) for i in range(args.rounds)]
    report = {
        "machine": machine_name(), "created_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": bundle.name, "artifact": str(artifact.relative_to(bundle.root)), "backend": args.backend,
        "precision": args.precision, "imgsz": bundle.input_size[0], "frames": source, "rounds": args.rounds,
        "inferences_per_config_and_round": args.frames, "cores": cores,
        "median_fps": median, "median_latency_ms": {k: round(statistics.median(v), 2) for k, v in latency.items()},
        "fps_per_round": fps,
        "best_single_stream": best_single,
        "inflight_vs_best_single": round(median[multi] / median[best_single], 3),
        "inflight_vs_best_single_per_round": per_round,
        "single_stream_scaling": round(median[best_single] / median[one_thread], 3),
        "inflight_scaling": round(median[multi] / median[one_thread], 3),
        "ceiling": round(cores / (median[best_single] / median[one_thread]), 3),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inflight.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {median[k]} | {report['median_latency_ms'][k]} | {median[k] / median[one_thread]:.2f}× |"
                     for k in median)
    md = (f"Machine: {report['machine']}; {args.backend} {args.precision}, {report['imgsz']}×{report['imgsz']}, "
          f"{source}; {args.rounds} interleaved rounds of {args.frames} inferences per configuration; medians.\n\n"
          f"| Configuration | FPS | Median latency (ms) | vs one thread |\n|---|---|---|---|\n{rows}\n\n"
          f"{args.inflight} in flight vs the best single stream ({best_single}): "
          f"**{report['inflight_vs_best_single']}×** (per round: {', '.join(map(str, per_round))}). "
          f"Ceiling on {cores} cores: {cores} / {report['single_stream_scaling']} = {report['ceiling']}×.\n")
    (out / "inflight.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
