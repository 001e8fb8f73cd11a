"""`ripeye compare CURRENT CANDIDATE`: the promotion report — accuracy on each data set, latency, INT8 gate verdict.

Both models run through the daemon's own pre- and post-processing on the same backend and precision (default ONNX
Runtime FP32 on model.onnx, the source of truth every model folder has), so the difference is the weights. The exit
status is the verdict: 0 when the candidate is nowhere worse than the current model by more than --tolerance points
of mAP50 or mAP50-95 on any data set, 1 when it is, 2 when something could not be evaluated.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import cv2

from daemon import evaluate, fielddata

METRICS = ("mAP50", "mAP50-95")


def parse_data(spec: str) -> tuple[str, Path]:
    """'LABEL=path/to/coco.json' or a bare path (labelled by its file and folder names)."""
    label, sep, path = spec.partition("=")
    if not sep or not label or "/" in label:
        path, label = spec, f"{Path(spec).parent.parent.name}/{Path(spec).stem}"
    return label, Path(path)


def images_of(coco_json: Path, coco: dict) -> list[Path]:
    """The data set's images: <root>/<split>/ beside annotations/<split>.json (the layout every tool here writes)."""
    folder = coco_json.parent.parent / coco_json.stem
    return [folder / im["file_name"] for im in coco["images"]]


def gate_verdict(model_dir: Path) -> dict:
    """The INT8 accuracy gate as `ripeye optimize` recorded it, if its manifest is for this model.onnx."""
    manifest = model_dir / "manifest.json"
    if not model_dir.is_dir() or not manifest.is_file():
        return {"verdict": "not optimized", "detail": "no manifest.json: run `ripeye optimize` on it"}
    info = json.loads(manifest.read_text())
    onnx = model_dir / "model.onnx"
    current = hashlib.sha256(onnx.read_bytes()).hexdigest() if onnx.is_file() else None
    if (info.get("source_onnx") or {}).get("sha256") != current:
        return {"verdict": "stale", "detail": "manifest.json is for another model.onnx: run `ripeye optimize` again"}
    int8 = [a for a in info.get("artifacts", []) if a.get("precision") == "int8"]
    if not int8:
        return {"verdict": "no int8", "detail": "no INT8 artifact in manifest.json"}
    gate = info.get("accuracy_gate") or {}
    return {"verdict": "accepted" if any(a.get("accepted") for a in int8) else "rejected",
            "max_drop_points": gate.get("max_drop_points"),
            "int8": {a["runtime"]: {"accepted": a.get("accepted"), **{k: (a.get("metrics") or {}).get(k)
                                                                      for k in METRICS}} for a in int8}}


def latency_ms(detectors: dict, images: list[Path], frames: int) -> dict:
    """Median ms per frame (preprocess + inference + decode) of each model, alternating frame by frame so both
    meet the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in detectors}
    decoded = [cv2.imread(str(p)) for p in images[:max(1, min(len(images), 8))]]
    for det in detectors.values():  # warm-up
        tensor, lb = det.preprocess(decoded[0])
        det.postprocess(det.infer(tensor), lb, 0.25, 0.45, 300)
    for i in range(frames):
        image = decoded[i % len(decoded)]
        for name, det in detectors.items():
            t0 = time.perf_counter()
            tensor, lb = det.preprocess(image)
            det.postprocess(det.infer(tensor), lb, 0.25, 0.45, 300)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(statistics.median(t), 2) for name, t in times.items()}


def verdict(results: dict, tolerance: float) -> list[str]:
    """Where the candidate is worse than the current model by more than `tolerance` points."""
    worse = []
    for label, r in results.items():
        for m in METRICS:
            drop = 100 * (r["current"][m] - r["candidate"][m])
            if drop > tolerance:
                worse.append(f"{label}: {m} {r['current'][m]:.4f} -> {r['candidate'][m]:.4f} "
                             f"({-drop:+.1f} points, tolerance {tolerance:g})")
    return worse


def main(args) -> int:
    from daemon.detector import load_detector
    from daemon.runtimes.base import RuntimeOptions
    from daemon.train import parse_class_map

    models = {"current": Path(args.current), "candidate": Path(args.candidate)}
    try:
        detectors = {name: load_detector(path, args.backend, args.precision, RuntimeOptions(threads=args.threads),
                                         imgsz=args.imgsz)
                     for name, path in models.items()}
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ripeye compare: cannot load a model: {exc}", file=sys.stderr)
        return 2
    results, all_images = {}, []
    for spec in args.data:
        label, coco_json = parse_data(spec)
        try:
            coco = json.loads(coco_json.read_text())
            class_map = fielddata.identity_or(parse_class_map(args.class_map), coco)
            images = images_of(coco_json, coco)
            missing = [str(p) for p in images if not p.is_file()]
            if missing:
                raise ValueError(f"{len(missing)} image(s) missing, e.g. {missing[0]}")
            results[label] = {"data": str(coco_json), "images": len(images)}
            for name, det in detectors.items():
                records = evaluate.run_detector(det, images)
                results[label][name] = evaluate.coco_metrics(
                    coco_json, evaluate.detections_to_coco(records, coco, class_map), class_map)
        except (OSError, ValueError, KeyError) as exc:
            print(f"ripeye compare: --data {spec}: {exc}", file=sys.stderr)
            return 2
        all_images += images
    report = {
        "models": {name: {"path": str(path), "version": det.bundle.version,
                          "runtime": f"{det.backend} {det.runtime.precision}"}
                   for (name, path), det in zip(models.items(), detectors.values())},
        "results": results,
        "latency_ms_median": latency_ms(detectors, all_images, args.frames) if args.frames else None,
        "int8_gate": {name: gate_verdict(path if path.is_dir() else path.parent) for name, path in models.items()},
        "tolerance_points": args.tolerance,
    }
    report["worse"] = verdict(results, args.tolerance)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["worse"] else 0


def _points(a: float, b: float) -> str:
    return f"{100 * (b - a):+.1f}"


def print_report(report: dict, out=None) -> None:
    out = out or sys.stdout
    cur, cand = report["models"]["current"], report["models"]["candidate"]
    print(f"current   {cur['path']} ({cur['runtime']})\ncandidate {cand['path']} ({cand['runtime']})", file=out)
    for label, r in report["results"].items():
        a, b = r["current"], r["candidate"]
        print(f"\n{label} ({r['images']} images, {r['data']})", file=out)
        width = max(12, *(len(c) + 5 for c in a["per_class"]))
        print(f"  {'':{width}s} {'current':>8s} {'candidate':>9s} {'points':>7s}", file=out)
        for m in METRICS:
            print(f"  {m:{width}s} {a[m]:8.4f} {b[m]:9.4f} {_points(a[m], b[m]):>7s}", file=out)
        for cls in a["per_class"]:
            x, y = a["per_class"][cls]["AP50"], b["per_class"].get(cls, {}).get("AP50", 0.0)
            print(f"  {cls + ' AP50':{width}s} {x:8.4f} {y:9.4f} {_points(x, y):>7s}", file=out)
    lat = report["latency_ms_median"]
    if lat:
        print(f"\nlatency on this machine (median ms a frame, {cur['runtime']}): current {lat['current']}, "
              f"candidate {lat['candidate']}", file=out)
    for name, gate in report["int8_gate"].items():
        print(f"INT8 gate, {name}: {gate['verdict']}" + (f" ({gate['detail']})" if gate.get("detail") else ""),
              file=out)
    if report["worse"]:
        print("\nverdict: WORSE — " + "; ".join(report["worse"]), file=out)
    else:
        print(f"\nverdict: not worse than the current model beyond {report['tolerance_points']:g} points on any set",
              file=out)


def add_arguments(p) -> None:
    p.add_argument("current", help="the model folder running now (e.g. models/tomato-yolo11n)")
    p.add_argument("candidate", help="the retrained model folder")
    p.add_argument("--data", action="append", required=True,
                   help="[LABEL=]annotations/<split>.json (COCO; its images in <root>/<split>/); repeat for each set, "
                        "e.g. the base valid split and the field holdout `ripeye train` wrote")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="points of mAP50 or mAP50-95 the candidate may lose on any set (default 1)")
    p.add_argument("--class-map", default=None, help="DATASET=MODEL,... for sets not in the model's class names "
                                                     "(default: Laboro Tomato mapping)")
    p.add_argument("--backend", default="onnxruntime", help="runtime for both models (default onnxruntime)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--imgsz", type=int, default=0, help="input-size variant (default: each folder's own size)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--frames", type=int, default=30, help="frames timed per model for latency (0: skip)")
    p.add_argument("--json", default=None, help="also write the report here as JSON")


def run(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="ripeye compare")
    add_arguments(p)
    return main(p.parse_args(argv))
