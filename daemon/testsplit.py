"""Carve a recorded test split out of a COCO training set: whole scenes, stratified by class, never trained on.

The valid split chooses epochs and candidates, so its figures are mildly optimistic; a model's published accuracy is
measured once on photos no step has seen. `ripeye dataset split ROOT --out OUT` writes a dataset laid out like ROOT
(OUT/annotations/{train,valid,test}.json, OUT/{train,valid,test}/ holding links to ROOT's photos, OUT/dataset.json
with ROOT's provenance) whose train split lacks the test photos, and OUT/split.json: the seed, the fraction, the
source annotations' sha256, the per-class counts of each part and the test photos by name. `--record split.json`
rebuilds exactly that split (the committed record is the definition; the algorithm may change, the split does not).

Photos of one scene (near-duplicate thumbnails, or views one homography explains: daemon/fielddata.py) go to one
side together, so the test split does not measure memory of a neighbouring photo.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

from daemon import fielddata

RECORD = "split.json"


def class_counts(coco: dict, files: set[str] | None = None) -> dict:
    """Boxes and images per category name (over `files` only when given), plus the image count."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    keep = {im["id"]: im["file_name"] for im in coco["images"] if files is None or im["file_name"] in files}
    boxes: Counter = Counter()
    shown: dict[str, set] = {}
    for ann in coco["annotations"]:
        if ann["image_id"] in keep:
            name = names[ann["category_id"]]
            boxes[name] += 1
            shown.setdefault(name, set()).add(ann["image_id"])
    return {"images": len(keep), "boxes": dict(sorted(boxes.items())),
            "images_showing": {k: len(v) for k, v in sorted(shown.items())}}


def carve(coco: dict, groups: dict[str, int], fraction: float, seed: int, slack: float = 0.1) -> list[str]:
    """The test photos: whole scene groups in a seeded random order, each taken while no class's box count and not
    the photo count would pass `fraction` of the whole by more than `slack` (relative, at least one box); stops at
    the photo target. So every class is held out in about the same share as the photos are."""
    if not 0 < fraction < 1:
        raise ValueError(f"--fraction {fraction}: must be between 0 and 1")
    by_image = {im["id"]: im["file_name"] for im in coco["images"]}
    per_file: dict[str, Counter] = {name: Counter() for name in by_image.values()}
    for ann in coco["annotations"]:
        per_file[by_image[ann["image_id"]]][ann["category_id"]] += 1
    missing = set(per_file) - set(groups)
    if missing:
        raise ValueError(f"no scene group for {len(missing)} photo(s), e.g. {sorted(missing)[0]}")
    members: dict[int, list[str]] = {}
    for name in sorted(per_file):
        members.setdefault(groups[name], []).append(name)
    total = sum((per_file[n] for n in per_file), Counter())
    cap = {c: max(fraction * n * (1 + slack), fraction * n + 1) for c, n in total.items()}
    target = round(fraction * len(per_file))
    order = sorted(members)
    random.Random(seed).shuffle(order)
    taken: list[str] = []
    held: Counter = Counter()
    for g in order:
        if len(taken) >= target:
            break
        counts = sum((per_file[n] for n in members[g]), Counter())
        if len(taken) + len(members[g]) > target * (1 + slack):
            continue
        if any(held[c] + k > cap[c] for c, k in counts.items()):
            continue
        taken += members[g]
        held += counts
    return sorted(taken)


def subset(coco: dict, files: set[str]) -> dict:
    """The COCO dict restricted to `files` (images and their annotations; ids kept)."""
    images = [im for im in coco["images"] if im["file_name"] in files]
    ids = {im["id"] for im in images}
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scene_groups(root: Path, coco: dict) -> dict[str, int]:
    """A scene number per training photo (daemon/fielddata.py's grouping: thumbnails, then ORB + homography)."""
    names = [im["file_name"] for im in coco["images"]]
    images = [fielddata.grey(Path(root) / "train" / n) for n in names]
    near = fielddata.near_duplicate_groups([fielddata.thumbnail(im) for im in images])
    return dict(zip(names, fielddata.same_scene_groups(images, near)))


def _link_split(src_dir: Path, dst_dir: Path, files: list[str]) -> None:
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    dst_dir.mkdir(parents=True)
    for name in files:
        if not (src_dir / name).is_file():
            raise ValueError(f"{src_dir / name}: the photo is missing")
        (dst_dir / name).symlink_to((src_dir / name).resolve())


def write_split(root: Path, out: Path, record: dict) -> Path:
    """Lay out OUT (see the module text) from ROOT and a split record; returns OUT/split.json."""
    root, out = Path(root), Path(out)
    train = json.loads((root / "annotations" / "train.json").read_text())
    test_files = set(record["test"])
    unknown = test_files - {im["file_name"] for im in train["images"]}
    if unknown:
        raise ValueError(f"the split names {len(unknown)} photo(s) not in {root}/annotations/train.json, e.g. "
                         f"{sorted(unknown)[0]}")
    train_files = {im["file_name"] for im in train["images"]} - test_files
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    parts = {"train": (subset(train, train_files), root / "train"),
             "test": (subset(train, test_files), root / "train")}
    valid_json = root / "annotations" / "valid.json"
    if valid_json.is_file():
        parts["valid"] = (json.loads(valid_json.read_text()), root / "valid")
    for split, (coco, src) in parts.items():
        (out / "annotations" / f"{split}.json").write_text(json.dumps(coco) + "\n")
        _link_split(src, out / split, sorted(im["file_name"] for im in coco["images"]))
    provenance = fielddata.read_provenance(root)
    provenance["name"] = f"{provenance['name']} (test split carved, {RECORD})"
    (out / fielddata.PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    record = {**record, "counts": {split: class_counts(coco) for split, (coco, _) in parts.items()}}
    path = out / RECORD
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def make_record(root: Path, fraction: float, seed: int) -> dict:
    root = Path(root)
    train_json = root / "annotations" / "train.json"
    train = json.loads(train_json.read_text())
    groups = scene_groups(root, train)
    test = carve(train, groups, fraction, seed)
    return {"source": fielddata.read_provenance(root)["name"], "train_json_sha256": sha256_file(train_json),
            "fraction": fraction, "seed": seed, "scenes": len(set(groups.values())),
            "rule": "whole scene groups in seeded random order, each class's boxes and the photo count capped at "
                    "fraction x (1 + 0.1) of the whole (daemon/testsplit.py)",
            "test": test}


def read_record(path: Path, root: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--record {path}: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("test"), list):
        raise ValueError(f"--record {path}: needs a \"test\" list of photo names")
    want, have = record.get("train_json_sha256"), sha256_file(Path(root) / "annotations" / "train.json")
    if want and want != have:
        raise ValueError(f"--record {path} was carved from other annotations (train.json sha256 {want[:12]}…, "
                         f"{root} has {have[:12]}…)")
    return record


def cmd_split(args) -> int:
    root, out = Path(args.root), Path(args.out)
    try:
        if out.resolve() == root.resolve():
            raise ValueError("--out must not be the source dataset (it is read-only)")
        record = read_record(Path(args.record), root) if args.record else make_record(root, args.fraction, args.seed)
        path = write_split(root, out, record)
    except (OSError, ValueError) as exc:
        print(f"ripeye dataset split: {exc}", file=sys.stderr)
        return 2
    counts = json.loads(path.read_text())["counts"]
    for split, c in counts.items():
        print(f"{split:6s} {c['images']:4d} photos  boxes " + " ".join(f"{k} {v}" for k, v in c["boxes"].items()))
    print(f"wrote {out} ({path})")
    return 0


def add_arguments(sub) -> None:
    sp = sub.add_parser("split", help="carve a recorded, class-stratified test split (whole scenes) out of train")
    sp.add_argument("root", help="COCO dataset root (annotations/train.json, train/, valid/)")
    sp.add_argument("--out", required=True, help="the new dataset root (links to ROOT's photos)")
    sp.add_argument("--fraction", type=float, default=0.15, help="share of the training photos held out")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--record", default=None, help="rebuild the split this split.json records (ignores --fraction "
                                                   "and --seed)")
    sp.set_defaults(func=cmd_split)
