"""Build the bundled demo clip from the valid split: each photo shown for a while with a slow camera-like pan."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/datasets/laboro-tomato-big")
    p.add_argument("--out", default="daemon/assets/sample.mp4")
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--frames-per-image", type=int, default=20)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--size", type=int, default=640)
    args = p.parse_args()
    root = Path(args.data)
    coco = json.loads((root / "annotations" / "valid.json").read_text())
    ripe_ids = {c["id"] for c in coco["categories"] if c["name"] == "b_fully_ripened"}
    ripe_count: dict[int, int] = {}
    for a in coco["annotations"]:
        if a["category_id"] in ripe_ids:
            ripe_count[a["image_id"]] = ripe_count.get(a["image_id"], 0) + 1
    # Prefer photos with ripe fruit (what the arm acts on), then by name for determinism.
    images = sorted(coco["images"], key=lambda im: (-min(ripe_count.get(im["id"], 0), 3), im["file_name"]))
    chosen = images[: args.images]
    writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (args.size, args.size))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {args.out}")
    crop = int(args.size * 0.9)
    for im in chosen:
        img = cv2.imread(str(root / "valid" / im["file_name"]))
        img = cv2.resize(img, (args.size, args.size))
        travel = args.size - crop
        for i in range(args.frames_per_image):
            t = i / max(args.frames_per_image - 1, 1)
            x = y = int(round(travel * t))
            frame = cv2.resize(img[y:y + crop, x:x + crop], (args.size, args.size), interpolation=cv2.INTER_LINEAR)
            writer.write(np.ascontiguousarray(frame))
    writer.release()
    names = [im["file_name"] for im in chosen]
    Path(args.out).with_suffix(".txt").write_text(
        "Sample clip: Laboro Tomato valid split (CC BY-NC-SA 4.0, Laboro.AI), made by bench/make_sample_clip.py\n"
        + "".join(f"{n}\n" for n in names))
    print(f"wrote {args.out}: {len(chosen)} photos × {args.frames_per_image} frames at {args.fps} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
