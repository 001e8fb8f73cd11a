"""Lighting benchmark: a model's accuracy on photos under greenhouse lamp casts, with and without a grey-world
white balance (`--balance auto`: the daemon's `detect.white_balance: auto` instead), through the daemon's own pre-
and post-processing (issue 30, item 3).

    .venv/bin/python bench/lighting.py models/tomato-yolo11n \\
        --data ../shared/datasets/laboro-tomato-big/annotations/valid.json --out bench/results/lighting-v3-valid.json

Each condition is every photo of the set under one lamp (daemon/lamps.py) at one strength; "clean" is the photos as
they are. Per-class AP50 is reported because ripeness is a colour judgement: a lamp can leave the boxes found and
still swap the classes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from daemon import evaluate  # noqa: E402
from daemon.config import DetectConfig  # noqa: E402
from daemon.detector import load_detector  # noqa: E402
from daemon.harvest import box_iou  # noqa: E402
from daemon.lamps import LAMPS, cast  # noqa: E402
from daemon.runtimes.base import RuntimeOptions  # noqa: E402
from daemon.train import parse_class_map  # noqa: E402
from daemon.vision import WHITE_BALANCE  # noqa: E402


def ripeness_of_found(coco: dict, class_map: dict, records: list[dict]) -> dict:
    """Are the classes still apart? Of the labelled fruit that a published detection finds (its best overlap,
    IoU >= 0.5), the share given the right ripeness, and the confusion counts (true -> called)."""
    cats = {c["id"]: class_map[c["name"]] for c in coco["categories"] if c["name"] in class_map}
    truth: dict[str, list] = {}
    by_id = {im["id"]: im["file_name"] for im in coco["images"]}
    for a in coco["annotations"]:
        if a["category_id"] in cats:
            x, y, w, h = a["bbox"]
            truth.setdefault(by_id[a["image_id"]], []).append((cats[a["category_id"]], (x, y, x + w, y + h)))
    confusion: dict[str, Counter] = {}
    for rec in records:
        dets = rec["detections"]
        for cls, box in truth.get(rec["image"], []):
            best = max(dets, key=lambda d: box_iou(d["box"], box), default=None)
            if best is not None and box_iou(best["box"], box) >= 0.5:
                confusion.setdefault(cls, Counter())[best["class"]] += 1
    found = sum(sum(c.values()) for c in confusion.values())
    right = sum(c[cls] for cls, c in confusion.items())
    return {"found": found, "right_class": round(right / found, 4) if found else None,
            "confusion": {k: dict(v) for k, v in sorted(confusion.items())}}


def run_condition(det, photos: dict, coco_json: Path, coco: dict, class_map: dict, lamp: str | None, strength: float,
                  balance: str) -> dict:
    records, published = [], []
    live = DetectConfig()
    for name, image in photos.items():
        frame = cast(image, lamp, strength) if lamp else image
        tensor, lb = det.preprocess(frame, balance)  # the daemon's detect.white_balance
        output = det.infer(tensor)
        dets = det.postprocess(output, lb, evaluate.EVAL_CONF, evaluate.EVAL_IOU, evaluate.EVAL_MAX_DET)
        # what the daemon would publish (its default thresholds, one box per fruit): for the ripeness check
        shown = det.postprocess(output, lb, live.confidence, live.iou, live.max_detections, live.agnostic_nms)
        h, w = frame.shape[:2]
        records.append({"image": name, "detections": [d.to_json(w, h) for d in dets]})
        published.append({"image": name, "detections": [d.to_json(w, h) for d in shown]})
    metrics = evaluate.coco_metrics(coco_json, evaluate.detections_to_coco(records, coco, class_map), class_map)
    return {**metrics, "ripeness": ripeness_of_found(coco, class_map, published)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True, help="COCO annotations JSON (images in <root>/<split>/)")
    p.add_argument("--lamps", default=",".join(LAMPS))
    p.add_argument("--strengths", default="0.5,1.0")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--imgsz", type=int, default=0)
    p.add_argument("--balance", default="grey_world", choices=[k for k in WHITE_BALANCE if k != "none"],
                   help="the detect.white_balance each condition is also run with (its column and JSON key)")
    p.add_argument("--out")
    args = p.parse_args()
    coco_json = Path(args.data)
    coco = json.loads(coco_json.read_text())
    class_map = parse_class_map(None)
    folder = coco_json.parent.parent / coco_json.stem
    photos = {im["file_name"]: cv2.imread(str(folder / im["file_name"])) for im in coco["images"]}
    det = load_detector(args.model, args.backend, args.precision, RuntimeOptions(), imgsz=args.imgsz)
    conditions = [(None, 0.0)] + [(lamp, float(s)) for lamp in args.lamps.split(",")
                                  for s in args.strengths.split(",")]
    rows, t0 = [], time.time()
    for lamp, strength in conditions:
        row = {"lamp": lamp or "clean", "strength": strength}
        for balance in ("none", args.balance):
            m = run_condition(det, photos, coco_json, coco, class_map, lamp, strength, balance)
            row[args.balance if balance != "none" else "as_seen"] = {
                "mAP50": m["mAP50"], "mAP50-95": m["mAP50-95"],
                "AP50": {c: v["AP50"] for c, v in m["per_class"].items()}, "ripeness_of_found": m["ripeness"]}
        rows.append(row)
        print(f"{row['lamp']:12s} {strength:4.2f}  mAP50 {row['as_seen']['mAP50']:.3f}  with {args.balance} "
              f"{row[args.balance]['mAP50']:.3f}   right ripeness of found "
              f"{row['as_seen']['ripeness_of_found']['right_class'] or 0:.3f}   AP50 as seen "
              + " ".join(f"{c} {v:.2f}" for c, v in row["as_seen"]["AP50"].items()), flush=True)
    clean = rows[0]["as_seen"]["mAP50"]
    for row in rows:
        for k in ("as_seen", args.balance):
            row[k]["vs_clean"] = round(row[k]["mAP50"] / clean, 3) if clean else None
    result = {"machine": os.uname().nodename, "command": " ".join(sys.argv), "model": args.model,
              "runtime": f"{det.backend} {det.runtime.precision}", "data": str(coco_json),
              "images": len(photos), "seconds": round(time.time() - t0), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
