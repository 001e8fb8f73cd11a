"""Build a final-fit dataset root: a split's train and valid photos together as train, its test split untouched."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def merge_coco(first: dict, second: dict) -> dict:
    """One COCO dict holding both sets' images and boxes, ids renumbered; the categories must be the same."""
    if first["categories"] != second["categories"]:
        raise ValueError("the two sets name different categories")
    images, annotations = [], []
    for coco in (first, second):
        new_id = {}
        for im in coco["images"]:
            new_id[im["id"]] = len(images)
            images.append({**im, "id": len(images)})
        for ann in coco["annotations"]:
            annotations.append({**ann, "id": len(annotations), "image_id": new_id[ann["image_id"]]})
    names = [im["file_name"] for im in images]
    if len(set(names)) != len(names):
        raise ValueError("a file name is in both sets")
    return {**first, "images": images, "annotations": annotations}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("split", type=Path, help="a `ripeye dataset split` output (train/, valid/, test/, annotations/)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    src, out = args.split.resolve(), args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "annotations").mkdir(parents=True)
    coco = {s: json.loads((src / "annotations" / f"{s}.json").read_text()) for s in ("train", "valid", "test")}
    merged = merge_coco(coco["train"], coco["valid"])
    (out / "annotations" / "train.json").write_text(json.dumps(merged))
    # Ultralytics wants a val set each epoch; valid is trained on here, so its per-epoch score is not a selection
    # figure (export the last epoch, not best.pt)
    (out / "annotations" / "valid.json").write_text(json.dumps(coco["valid"]))
    (out / "annotations" / "test.json").write_text(json.dumps(coco["test"]))
    (out / "train").mkdir()
    for split in ("train", "valid"):
        for im in coco[split]["images"]:
            (out / "train" / im["file_name"]).symlink_to(src / split / im["file_name"])
    for split in ("valid", "test"):
        (out / split).symlink_to(src / split)
    record = json.loads((src / "dataset.json").read_text()) if (src / "dataset.json").is_file() else {}
    record["name"] = f"{record.get('name', src.name)}; final fit: train = train + valid"
    (out / "dataset.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out}: train {len(merged['images'])} photos ({len(coco['train']['images'])} train + "
          f"{len(coco['valid']['images'])} valid), {len(merged['annotations'])} boxes; test "
          f"{len(coco['test']['images'])} photos untouched")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
