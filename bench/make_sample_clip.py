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
    p.add_argument("--truth", default="tests/fixtures/sample_clip_truth.json",
                   help="where to write the per-frame ground-truth boxes (for tracking evaluation)")
    p.add_argument("--truth-only", action="store_true", help="write the ground truth, leave the clip as it is")
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
    names_by_cat = {c["id"]: c["name"] for c in coco["categories"]}
    class_map = {"b_fully_ripened": "ripe", "b_half_ripened": "half_ripe", "b_green": "unripe"}
    writer = None
    if not args.truth_only:
        writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (args.size, args.size))
        if not writer.isOpened():
            raise SystemExit(f"cannot write {args.out}")
    crop = int(args.size * 0.9)
    truth = []
    frame_no = 0
    for photo, im in enumerate(chosen):
        img = cv2.resize(cv2.imread(str(root / "valid" / im["file_name"])), (args.size, args.size))
        sx, sy = args.size / im["width"], args.size / im["height"]
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"] and names_by_cat[a["category_id"]]
                in class_map]
        travel = args.size - crop
        for i in range(args.frames_per_image):
            t = i / max(args.frames_per_image - 1, 1)
            x = y = int(round(travel * t))
            frame_no += 1
            k = args.size / crop
            boxes = []
            for a in anns:
                bx, by, bw, bh = a["bbox"]
                x1, y1 = (bx * sx - x) * k, (by * sy - y) * k
                x2, y2 = ((bx + bw) * sx - x) * k, ((by + bh) * sy - y) * k
                c1, c2 = max(0.0, x1), min(float(args.size), x2)
                d1, d2 = max(0.0, y1), min(float(args.size), y2)
                if c2 - c1 < 4 or d2 - d1 < 4:
                    continue  # panned out of view
                boxes.append({"object": f"{photo}:{a['id']}", "class": class_map[names_by_cat[a["category_id"]]],
                              "box": [round(c1, 1), round(d1, 1), round(c2, 1), round(d2, 1)]})
            truth.append({"frame": frame_no, "photo": photo, "boxes": boxes})
            if writer is not None:
                frame = cv2.resize(img[y:y + crop, x:x + crop], (args.size, args.size), interpolation=cv2.INTER_LINEAR)
                writer.write(np.ascontiguousarray(frame))
    if writer is not None:
        writer.release()
    Path(args.truth).write_text(json.dumps({"clip": args.out, "fps": args.fps, "frames": truth}) + "\n")
    names = [im["file_name"] for im in chosen]
    Path(args.out).with_suffix(".txt").write_text(
        "Sample clip: Laboro Tomato valid split (CC BY-NC-SA 4.0, Laboro.AI), made by bench/make_sample_clip.py\n"
        + "".join(f"{n}\n" for n in names))
    action = "kept" if args.truth_only else "wrote"
    print(f"wrote {args.truth}; {action} {args.out}: {len(chosen)} photos × {args.frames_per_image} frames "
          f"at {args.fps} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
