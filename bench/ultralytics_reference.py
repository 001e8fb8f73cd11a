"""Record Ultralytics' own predictions on the shipped ONNX as a test fixture (run once, with the `train` extra).

The daemon's pre/post-processing must reproduce these: same classes, boxes within 1 px (tests/test_parity.py).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/tomato-yolo11n/model.onnx")
    p.add_argument("--images", default="../shared/datasets/laboro-tomato-big/valid")
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.45)
    p.add_argument("--out", default="tests/fixtures/ultralytics_predictions.json")
    args = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    from ultralytics import YOLO, __version__

    model = YOLO(args.model, task="detect")
    files = sorted(Path(args.images).glob("*.jpg"))[: args.count]
    records = []
    for f in files:
        r = model.predict(str(f), imgsz=640, conf=args.conf, iou=args.iou, verbose=False)[0]
        records.append({
            "image": f.name,
            "detections": [{"class": r.names[int(c)], "confidence": round(float(s), 5),
                            "box": [round(float(v), 3) for v in b]}
                           for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())],
        })
    out = {"ultralytics": __version__, "model": Path(args.model).name, "conf": args.conf, "iou": args.iou,
           "imgsz": 640, "images_dir": "laboro-tomato-big/valid", "records": records}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {sum(len(r['detections']) for r in records)} detections on {len(records)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
