"""Close-up benchmark: is the fruit in front of an eye-in-hand camera found with the right ripeness? (issue 30, item 2)

    .venv/bin/python bench/closeups.py models/tomato-yolo11n --data test=/root/v4/laboro-split/annotations/test.json \\
        --data valid=../shared/datasets/laboro-tomato-big/annotations/valid.json --out bench/results/closeups-v3.json

From each set's photos, crops around single fruits at least 64 px wide (daemon/closeups.py): the fruit spans a random
30-90 % of a 4:3 window's width (less for fruit under 86 px, so that no window is under 96 px of the photo), classes
taken in turn, at most 4 per photo, seeded. Each crop goes through the daemon's own pre- and post-processing at the
daemon's default thresholds (detect.confidence 0.25, iou 0.45, agnostic NMS). A crop counts as *right* when the
detection that overlaps the target fruit most (IoU >= 0.5) has its class; *found* when there is such a detection at
all. The photos are 640 px, so a crop is upscaled up to ~7x: blurrier than a real close-up, which makes this harder,
not easier.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from daemon import closeups  # noqa: E402
from daemon.config import DetectConfig  # noqa: E402
from daemon.detector import load_detector  # noqa: E402
from daemon.harvest import box_iou  # noqa: E402
from daemon.runtimes.base import RuntimeOptions  # noqa: E402
from daemon.train import parse_class_map  # noqa: E402

ASPECT = 4 / 3
FRACTIONS = (0.3, 0.9)


def build_crops(coco: dict, class_map: dict, count: int, seed: int) -> list[dict]:
    """The benchmark's crops of one set: photo, window, target box (in the crop) and class; seeded."""
    cats = {c["id"]: class_map[c["name"]] for c in coco["categories"] if c["name"] in class_map}
    names = list(dict.fromkeys(class_map.values()))
    by_id = {im["id"]: im for im in coco["images"]}
    per_image: dict[str, list] = {im["file_name"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] in cats:
            x, y, w, h = ann["bbox"]
            per_image[by_id[ann["image_id"]]["file_name"]].append(
                (names.index(cats[ann["category_id"]]), (x, y, x + w, y + h)))
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    rng = random.Random(seed)
    crops = []
    for name, idx in closeups.pick_targets(per_image, count, seed, min_width=64.0, per_photo=4):
        cls, box = per_image[name][idx]
        lo, hi = closeups.fraction_range(box[2] - box[0], *FRACTIONS)
        window = None
        for _ in range(20):
            window = closeups.window_around(box, *sizes[name], rng.uniform(lo, hi), ASPECT, rng)
            if window is not None:
                break
        if window is None:
            continue
        (target,), _ = closeups.boxes_in_window(np.array([box]), window, min_visible=0.99)
        crops.append({"photo": name, "window": [window.x1, window.y1, window.x2, window.y2],
                      "target": [round(float(v), 2) for v in target], "class": names[cls],
                      "width_fraction": round((box[2] - box[0]) / window.width, 3)})
    return crops


def score(det, crops: list[dict], folder: Path, detect: DetectConfig) -> dict:
    outcome: Counter = Counter()
    per_class: dict[str, Counter] = {}
    confusion: dict[str, Counter] = {}
    photos: dict[str, np.ndarray] = {}
    for c in crops:
        if c["photo"] not in photos:
            photos[c["photo"]] = cv2.imread(str(folder / c["photo"]))
            if photos[c["photo"]] is None:
                raise SystemExit(f"cannot read {folder / c['photo']}")
        x1, y1, x2, y2 = c["window"]
        frame = photos[c["photo"]][y1:y2, x1:x2]
        tensor, lb = det.preprocess(frame)
        dets = det.postprocess(det.infer(tensor), lb, detect.confidence, detect.iou, detect.max_detections,
                               detect.agnostic_nms)
        best, best_iou = None, 0.0
        for d in dets:
            o = box_iou(d.box, c["target"])
            if o > best_iou:
                best, best_iou = d, o
        found = best is not None and best_iou >= 0.5
        got = best.class_name if found else "missed"
        right = found and got == c["class"]
        outcome["right" if right else "wrong_class" if found else "missed"] += 1
        per_class.setdefault(c["class"], Counter())["right" if right else "not"] += 1
        confusion.setdefault(c["class"], Counter())[got] += 1
    n = len(crops)
    return {"crops": n, "right": outcome["right"], "right_rate": round(outcome["right"] / n, 4) if n else None,
            "found_rate": round((outcome["right"] + outcome["wrong_class"]) / n, 4) if n else None,
            "wrong_class": outcome["wrong_class"], "missed": outcome["missed"],
            "per_class_right_rate": {k: round(v["right"] / sum(v.values()), 4) for k, v in sorted(per_class.items())},
            "per_class_crops": {k: sum(v.values()) for k, v in sorted(per_class.items())},
            "confusion": {k: dict(v) for k, v in sorted(confusion.items())}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", action="append", required=True,
                   help="[LABEL=]COCO annotations JSON, photos in <root>/<split>/ (repeatable)")
    p.add_argument("--count", type=int, default=160, help="crops per set (fewer where a set has fewer fruit to crop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--imgsz", type=int, default=0)
    p.add_argument("--save-crops", default=None, help="also write the crops as JPEGs here (to look at them)")
    p.add_argument("--out")
    args = p.parse_args()
    class_map = parse_class_map(None)
    det = load_detector(args.model, args.backend, args.precision, RuntimeOptions(), imgsz=args.imgsz)
    detect = DetectConfig()
    sets, all_crops, t0 = {}, [], time.time()
    for spec in args.data:
        label, _, path = spec.rpartition("=")
        coco_json = Path(path)
        label = label or coco_json.stem
        coco = json.loads(coco_json.read_text())
        folder = coco_json.parent.parent / coco_json.stem
        crops = build_crops(coco, class_map, args.count, args.seed)
        sets[label] = {"data": str(coco_json), **score(det, crops, folder, detect)}
        all_crops += [(folder, c) for c in crops]
        if args.save_crops:
            out = Path(args.save_crops) / label
            out.mkdir(parents=True, exist_ok=True)
            for n, c in enumerate(crops):
                x1, y1, x2, y2 = c["window"]
                cv2.imwrite(str(out / f"{n:03d}-{c['class']}.jpg"), cv2.imread(str(folder / c["photo"]))[y1:y2, x1:x2])
        s = sets[label]
        print(f"{label:8s} {s['crops']} crops: right {s['right_rate']:.3f}  found {s['found_rate']:.3f}  per class "
              + " ".join(f"{k} {v:.2f}" for k, v in s["per_class_right_rate"].items()), flush=True)
    total = sum(s["crops"] for s in sets.values())
    right = sum(s["right"] for s in sets.values())
    result = {"machine": os.uname().nodename, "command": " ".join(sys.argv), "model": args.model,
              "runtime": f"{det.backend} {det.runtime.precision}", "input_size": list(det.input_size),
              "thresholds": {"confidence": detect.confidence, "iou": detect.iou, "agnostic_nms": detect.agnostic_nms},
              "seconds": round(time.time() - t0), "sets": sets,
              "all": {"crops": total, "right": right, "right_rate": round(right / total, 4) if total else None}}
    print(f"all      {total} crops: right {result['all']['right_rate']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
