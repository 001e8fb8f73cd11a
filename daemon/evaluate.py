"""Accuracy with pycocotools through the daemon's own pre/post-processing: mAP50-95, mAP50, per-class AP."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import cv2

from daemon.config import DetectConfig
from daemon.vision import WHITE_BALANCE

# Ultralytics' validator settings, so numbers compare with its own `val`.
EVAL_CONF = 0.001
EVAL_IOU = 0.7
EVAL_MAX_DET = 300


def category_lookup(coco: dict, class_map: dict[str, str]) -> dict[str, int]:
    """Model class name → COCO category id, through the dataset→model class map."""
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    out = {}
    for src, dst in class_map.items():
        if src not in by_name:
            raise ValueError(f"class map names category {src!r}, not in the annotations")
        out[dst] = by_name[src]
    return out


def detections_to_coco(records: Iterable[dict], coco: dict, class_map: dict[str, str]) -> list[dict]:
    """`ripeye detect --json` records → COCO result entries (xywh boxes, category ids of the annotations)."""
    ids = {Path(im["file_name"]).name: im["id"] for im in coco["images"]}
    cats = category_lookup(coco, class_map)
    results = []
    for rec in records:
        image_id = ids.get(Path(rec["image"]).name)
        if image_id is None:
            continue
        for d in rec["detections"]:
            if d["class"] not in cats:
                continue
            x1, y1, x2, y2 = d["box"]
            results.append({"image_id": image_id, "category_id": cats[d["class"]],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d["confidence"]})
    return results


def coco_metrics(coco_json: Path, results: list[dict], class_map: dict[str, str]) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_json))
    used_cats = sorted(category_lookup(gt.dataset, class_map).values())
    if not results:
        return {"mAP50-95": 0.0, "mAP50": 0.0, "per_class": {}, "images": len(gt.getImgIds()), "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = used_cats
        ev.params.maxDets = [1, 10, EVAL_MAX_DET]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    names = {v: k for k, v in category_lookup(gt.dataset, class_map).items()}
    per_class = {}
    for k, cat in enumerate(used_cats):
        p = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        per_class[names[cat]] = {
            "AP50-95": round(float(p[p > -1].mean()) if (p > -1).any() else 0.0, 4),
            "AP50": round(float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0, 4),
        }
    # Read the precision array directly: COCOeval.summarize() looks for maxDets=100 and we keep 300 like Ultralytics.
    all_p, p50_all = precision[:, :, :, 0, -1], precision[0, :, :, 0, -1]
    map50_95 = float(all_p[all_p > -1].mean()) if (all_p > -1).any() else 0.0
    map50 = float(p50_all[p50_all > -1].mean()) if (p50_all > -1).any() else 0.0
    return {"mAP50-95": round(map50_95, 4), "mAP50": round(map50, 4),
            "per_class": per_class, "images": len(gt.getImgIds()), "detections": len(results)}


def run_detector(detector, images: list[Path], conf: float = EVAL_CONF, iou: float = EVAL_IOU,
                 white_balance: str = "none") -> list[dict]:
    """The same records `ripeye detect --json` prints."""
    records = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        h, w = image.shape[:2]
        tensor, lb = detector.preprocess(image, white_balance)
        dets = detector.postprocess(detector.infer(tensor), lb, conf, iou, EVAL_MAX_DET)
        records.append({"image": str(path), "width": w, "height": h, "detections": [d.to_json(w, h) for d in dets]})
    return records


def evaluate_detector(detector, coco_json: Path, images_dir: Path, class_map: dict[str, str],
                      limit: Optional[int] = None, white_balance: str = "none") -> dict:
    coco = json.loads(Path(coco_json).read_text())
    files = [Path(images_dir) / im["file_name"] for im in coco["images"]][:limit]
    records = run_detector(detector, files, white_balance=white_balance)
    return coco_metrics(Path(coco_json), detections_to_coco(records, coco, class_map), class_map)


def main(args) -> int:
    import sys

    from daemon.train import parse_class_map

    class_map = parse_class_map(args.class_map)
    coco_json = Path(args.data)
    coco = json.loads(coco_json.read_text())
    if args.detections:
        lines = Path(args.detections).read_text().splitlines() if args.detections != "-" else sys.stdin.readlines()
        records = [json.loads(line) for line in lines if line.strip()]
        metrics = coco_metrics(coco_json, detections_to_coco(records, coco, class_map), class_map)
        source = f"detections from {args.detections}"
    else:
        from daemon.detector import load_detector
        from daemon.runtimes.base import RuntimeOptions

        images = Path(args.images) if args.images else coco_json.parent.parent / coco_json.stem
        try:
            detector = load_detector(args.artifact, args.backend, args.precision,
                                     RuntimeOptions(threads=args.threads), imgsz=args.imgsz)
        except ValueError as exc:  # e.g. no variant of that input size: the message names the sizes present
            print(f"ripeye eval: {exc}", file=sys.stderr)
            return 2
        metrics = evaluate_detector(detector, coco_json, images, class_map, white_balance=args.white_balance)
        source = f"{detector.backend} {detector.runtime.precision} {detector.runtime.artifact}"
        if args.white_balance != "none":
            source += f", white balance {args.white_balance}"
    if args.json:
        print(json.dumps({"source": source, **metrics}, indent=2))
    else:
        print(f"{source}: {metrics['images']} images, {metrics['detections']} detections")
        print(f"mAP50-95 {metrics['mAP50-95']:.4f}   mAP50 {metrics['mAP50']:.4f}")
        for name, ap in metrics["per_class"].items():
            print(f"  {name:10s} AP50-95 {ap['AP50-95']:.4f}  AP50 {ap['AP50']:.4f}")
    return 0


def add_arguments(p) -> None:
    p.add_argument("artifact", nargs="?", default=None, help="model folder or artifact file (not with --detections)")
    p.add_argument("--data", required=True, help="COCO annotations JSON")
    p.add_argument("--images", help="image folder (default: <dataset>/<split> beside annotations/<split>.json)")
    p.add_argument("--detections", help="JSON lines from `ripeye detect --json` (or - for stdin) instead of a model")
    p.add_argument("--class-map", default=None, help="DATASET=MODEL,... (default: Laboro Tomato mapping)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--imgsz", type=int, default=0,
                   help="input-size variant of the model folder (default: the size it recommends, else its own)")
    default = DetectConfig.model_fields["white_balance"].default
    p.add_argument("--white-balance", default=default, choices=list(WHITE_BALANCE),
                   help=f"the daemon's detect.white_balance step before the model (default {default}, the daemon's)")
    p.add_argument("--json", action="store_true")
