"""`ripeye bench`: every available runtime × precision on the same images — size, mAP, latency, FPS, peak RSS."""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from daemon import vision
from daemon.model import load_bundle, select_size
from daemon.runtimes.base import usable_cores

# (label, backend, artifact kind, precision): kinds as in daemon.model
CONFIGS = [
    ("PyTorch FP32", "pytorch", "pt", "fp32"),
    ("ONNX Runtime FP32", "onnxruntime", "onnx", "fp32"),
    ("ONNX Runtime INT8", "onnxruntime", "onnxruntime", "int8"),
    ("OpenVINO FP32", "openvino", "openvino", "fp32"),
    ("OpenVINO INT8", "openvino", "openvino", "int8"),
    ("NCNN FP32", "ncnn", "ncnn", "fp32"),
    ("NCNN FP16", "ncnn", "ncnn", "fp16"),
]


class PyTorchRuntime:
    """The trained .pt through Ultralytics' nn.Module, in FP32: the baseline (needs the `train` extra)."""

    name = "pytorch"

    def __init__(self, path: Path, threads: int):
        self.torch = importlib.import_module("torch")  # the daemon never imports torch; only this baseline does
        ultralytics = importlib.import_module("ultralytics")
        if threads:
            self.torch.set_num_threads(threads)
        self.model = ultralytics.YOLO(str(path)).model.float().eval()
        self.precision, self.device, self.artifact = "fp32", "CPU", path

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(tensor))
        return (out[0] if isinstance(out, (list, tuple)) else out).numpy()

    def close(self) -> None:
        pass


def find_artifact(bundle, kind: str, precision: str) -> Optional[Path]:
    if kind == "pt":
        p = bundle.root / "model.pt"
        return p if p.is_file() else None
    for a in bundle.artifacts:
        if a.kind == kind and a.precision == precision and a.accepted and a.path.is_file():
            return a.path
    return None


def artifact_size(path: Path) -> int:
    files = [path]
    if path.suffix in (".xml", ".param"):
        files.append(path.with_suffix(".bin"))
    return sum(f.stat().st_size for f in files if f.is_file())


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries that over from the parent across
    fork+exec, so every worker would report at least the parent's size."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> dict:
    """Runs in its own process so peak RSS belongs to one runtime alone."""
    from daemon import runtimes
    from daemon.detector import Detector
    from daemon.runtimes.base import RuntimeOptions

    bundle = load_bundle(spec["model"])
    path = Path(spec["artifact"])
    size = tuple(spec["imgsz"]) if spec.get("imgsz") else bundle.input_size
    images = [cv2.imread(p) for p in spec["images"]]
    tensors = [vision.preprocess(im, size)[0] for im in images]
    t0 = time.perf_counter()
    if spec["backend"] == "pytorch":
        rt = PyTorchRuntime(path, spec["threads"])
    else:
        rt = runtimes.get(spec["backend"])(path, RuntimeOptions(threads=spec["threads"]), spec["precision"])
    load_s = time.perf_counter() - t0
    for i in range(spec["warmup"]):
        rt.infer(tensors[i % len(tensors)])
    lat = []
    for i in range(spec["reps"]):
        t = tensors[i % len(tensors)]
        s = time.perf_counter()
        rt.infer(t)
        lat.append((time.perf_counter() - s) * 1000)
    result = {"load_s": round(load_s, 2), "median_ms": round(statistics.median(lat), 2),
              "p90_ms": round(float(np.percentile(lat, 90)), 2)}
    result["fps"] = round(1000 / result["median_ms"], 1)
    if spec.get("data"):
        from daemon.evaluate import evaluate_detector
        from daemon.train import parse_class_map

        det = Detector(bundle, rt, bundle.class_names, size)
        m = evaluate_detector(det, Path(spec["data"]), Path(spec["data_images"]), parse_class_map(None))
        result.update({"mAP50-95": m["mAP50-95"], "mAP50": m["mAP50"], "per_class": m["per_class"]})
    if spec.get("inflight", 1) > 1 and spec["backend"] in ("openvino", "onnxruntime"):
        result.update(throughput(spec, tensors))
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result


def throughput(spec: dict, tensors: list[np.ndarray]) -> dict:
    """Frames/s with N requests in flight (N threads sharing one compiled model / session)."""
    from daemon import runtimes
    from daemon.runtimes.base import RuntimeOptions

    n = spec["inflight"]
    rt = runtimes.get(spec["backend"])(Path(spec["artifact"]), RuntimeOptions(threads=spec["threads"], inflight=n),
                                       spec["precision"])
    frames = max(spec["reps"], 4 * n)
    for t in tensors[: 2 * n]:
        rt.infer(t)
    counter = iter(range(frames))
    lock = threading.Lock()
    lat: list[float] = []

    def run():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            s = time.perf_counter()
            rt.infer(tensors[i % len(tensors)])
            lat.append((time.perf_counter() - s) * 1000)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"inflight": n, "inflight_fps": round(frames / wall, 1),
            "inflight_median_ms": round(statistics.median(lat), 2)}


def run_one(spec: dict, timeout: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "daemon.bench", "--worker", json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "CI": "true"})
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine_name() -> str:
    from daemon.hardware import classify, probe

    p = classify(probe())
    return f"{p.description} ({platform.machine()}, {os.cpu_count()} logical CPUs)"


def to_markdown(report: dict) -> str:
    rows = report["results"]
    sizes = report["imgsz"] if isinstance(report["imgsz"], list) else [report["imgsz"]]
    classes = next((list(r["per_class"]) for r in rows if r.get("per_class")), [])

    def ref(row: dict, label: str, size: int) -> Optional[dict]:
        return next((r for r in rows if r["label"] == label and r.get("imgsz", size) == size and "median_ms" in r),
                    None)

    lines = [
        f"Machine: {report['machine']}; input {', '.join(f'{n}×{n}' for n in sizes)}, batch 1, {report['threads']} "
        f"threads; {report['warmup']} warm-up runs, median of {report['reps']} timed runs on {report['n_images']} "
        f"images; mAP on {report['data_name']} ({report['n_eval']} images). Size in MiB (like Ultralytics). "
        f"Speed-up: against PyTorch FP32 at the same input size; vs {max(sizes)}: the same format at "
        f"{max(sizes)}×{max(sizes)}.",
        "",
        "| Format | Input | Size (MiB) | mAP50-95 | mAP50 | " + "".join(f"{c} AP50 | " for c in classes)
        + "Median (ms) | p90 (ms) | FPS | Speed-up | "
        f"vs {max(sizes)} | FPS, {report['inflight']} in flight | Peak RSS (MiB) |",
        "|---|---|---|---|---|" + "---|" * len(classes) + "---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = r.get("imgsz", sizes[0])
        if "error" in r or "median_ms" not in r:
            lines.append(f"| {r['label']} | {size} | – | – | – | " + "– | " * len(classes)
                         + f"– | – | – | – | – | – | {r.get('error', r.get('skipped', ''))} |")
            continue
        base, biggest = ref(r, "PyTorch FP32", size), ref(r, r["label"], max(sizes))
        speed = f"{base['median_ms'] / r['median_ms']:.2f}×" if base else "–"
        vs_big = f"{biggest['median_ms'] / r['median_ms']:.2f}×" if biggest else "–"
        m95 = f"{r['mAP50-95']:.4f}" if "mAP50-95" in r else "–"
        m50 = f"{r['mAP50']:.4f}" if "mAP50" in r else "–"
        per_class = "".join(f"{r['per_class'][c]['AP50']:.4f} | " if r.get("per_class") else "– | " for c in classes)
        lines.append(
            f"| {r['label']} | {size} | {r['size_mb']:.2f} | {m95} | {m50} | {per_class}{r['median_ms']:.1f} | "
            f"{r['p90_ms']:.1f} | {r['fps']:.1f} | {speed} | {vs_big} | {r.get('inflight_fps', '–')} | "
            f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Latency vs mAP50-95: one point per format and input size, each format's sizes joined (the frontier)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rows = [r for r in report["results"] if "median_ms" in r and "mAP50-95" in r]
    for label in dict.fromkeys(r["label"] for r in rows):
        series = sorted((r for r in rows if r["label"] == label), key=lambda r: r["median_ms"])
        xs, ys = [r["median_ms"] for r in series], [r["mAP50-95"] for r in series]
        ax.plot(xs, ys, "-o", alpha=0.7, label=label)
        for r in series:
            ax.annotate(str(r.get("imgsz", "")), (r["median_ms"], r["mAP50-95"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlabel("median latency (ms, batch 1)")
    ax.set_ylabel("mAP50-95 (valid split)")
    ax.set_title(f"{report['model']}: input size / speed / accuracy on {report['machine'][:60]}\n"
                 "points labelled with the input size", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args) -> int:
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    bundle = load_bundle(args.model)
    data = Path(args.data) if args.data else None
    data_images = Path(args.images) if args.images else (data.parent.parent / data.stem if data else None)
    if data_images and data_images.is_dir():
        timing_images = sorted(str(p) for p in data_images.glob("*.jpg"))[: args.n_images]
    else:
        from daemon.config import SAMPLE_CLIP

        cap = cv2.VideoCapture(str(SAMPLE_CLIP))
        timing_images = []
        tmp = Path(args.out) / "frames"
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(args.n_images):
            ok, frame = cap.read()
            if not ok:
                break
            f = tmp / f"{i:03d}.jpg"
            cv2.imwrite(str(f), frame)
            timing_images.append(str(f))
    threads = args.threads or usable_cores()
    wanted = [c for c in CONFIGS if not args.only or any(o.lower() in c[0].lower() for o in args.only.split(","))]
    try:
        sizes = [int(x) for x in str(args.imgsz).split(",") if x.strip() and int(x)]
        variants = {size: load_bundle(select_size(args.model, size)) for size in sizes} or {
            bundle.input_size[0]: bundle}
        sizes = list(variants)
    except ValueError as exc:
        print(f"ripeye bench: {exc}", file=sys.stderr)
        return 2
    results = []
    for size, variant in variants.items():
        for label, backend, kind, precision in wanted:
            # the PyTorch row is the variant's own weights when it was trained at its size; otherwise the .pt of the
            # main folder (it takes any input size: the same weights the variant's ONNX was exported from)
            path = find_artifact(variant, kind, precision)
            if path is None and kind == "pt":
                path = find_artifact(bundle, kind, precision)
            row = {"label": label, "backend": backend, "precision": precision, "imgsz": size}
            tag = f"{label} @{size}"
            if path is None:
                row["skipped"] = f"no {kind} {precision} artifact"
                results.append(row)
                print(f"[bench] {tag}: skipped ({row['skipped']})", file=sys.stderr)
                continue
            if backend == "pytorch":
                try:
                    importlib.import_module("ultralytics")
                except ImportError:
                    row["skipped"] = "train extra not installed"
                    results.append(row)
                    print(f"[bench] {tag}: skipped (torch/ultralytics not installed)", file=sys.stderr)
                    continue
            spec = {"model": str(variant.root), "artifact": str(path), "backend": backend, "precision": precision,
                    "images": timing_images, "threads": threads, "warmup": args.warmup, "reps": args.reps,
                    "imgsz": [size, size],
                    "data": str(data) if data else None, "data_images": str(data_images) if data_images else None,
                    "inflight": args.inflight}
            print(f"[bench] {tag} ...", file=sys.stderr, flush=True)
            row.update(run_one(spec))
            row["artifact"] = str(path.relative_to(bundle.root)) if path.is_relative_to(bundle.root) else str(path)
            row["size_mb"] = round(artifact_size(path) / 2**20, 2)
            print(f"[bench] {tag}: {row.get('median_ms', row.get('error'))} ms", file=sys.stderr, flush=True)
            results.append(row)
    report = {"machine": machine_name(), "created_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "model": bundle.name, "model_version": bundle.version, "imgsz": sizes,
              "threads": threads, "warmup": args.warmup, "reps": args.reps, "n_images": len(timing_images),
              "inflight": args.inflight, "data_name": data.name if data else "none",
              "n_eval": len(json.loads(data.read_text())["images"]) if data else 0, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (out / "bench.md").write_text(md)
    try:
        plot(report, out / "bench.png")
    except ImportError:
        print("[bench] matplotlib not installed: no plot", file=sys.stderr)
    print(md)
    return 0


def add_arguments(p) -> None:
    from daemon.config import DEFAULT_MODEL_DIR

    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--data", help="COCO annotations JSON for mAP (images beside it as <root>/<split>)")
    p.add_argument("--images", help="images of --data")
    p.add_argument("--imgsz", default="0", help="input sizes, e.g. 320,416,640: the model folder's variants "
                                              "(sizes/<N>/; default: the folder's own size)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--n-images", type=int, default=16, help="distinct images cycled through the timed runs")
    p.add_argument("--inflight", type=int, default=2, help="requests in flight for the throughput column")
    p.add_argument("--only", help="comma-separated substrings of format labels to run")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--worker", help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="ripeye bench")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
