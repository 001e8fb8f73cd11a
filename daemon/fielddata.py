"""The extra datasets a training run adds to the base set: their provenance, and the field holdout carved from them.

A field set is a COCO dataset as `ripeye dataset import` writes it (OUT/annotations/<split>.json, OUT/<split>/...,
OUT/dataset.json with its source and licence). Frames of one scene captured moments apart are near duplicates: a
random split by image would put copies of one scene on both sides and the holdout would measure memory, not the
model. So images are grouped into scenes (alike thumbnails, then feature matches that one homography explains, for
a camera that panned or zoomed) and whole scenes are held out; images exported with
"holdout": true (the random `sample` trigger) are always held out, with everything that looks like them. No
selection step (Ultralytics' best-epoch choice validates on the base valid split only) ever sees the holdout.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

PROVENANCE_FILE = "dataset.json"
THUMB = 16            # thumbnail side (grey) that near-duplicate grouping compares
NEAR_DUPLICATE = 6.0  # mean absolute grey difference (0-255) below which two thumbnails are one scene
SCENE_FEATURES, SCENE_SIDE, SCENE_INLIERS = 500, 256, 150  # ORB features per image, at this size; inliers = same scene


def read_provenance(root: Path) -> dict:
    """{"name", "source", "licence"} of a dataset: its dataset.json, else its README's licence sentence.

    A dataset whose licence is not written down anywhere is refused: a model card must say what it was trained on.
    """
    root = Path(root)
    path = root / PROVENANCE_FILE
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from exc
        if not isinstance(info, dict) or not str(info.get("licence", "")).strip():
            raise ValueError(f"{path}: needs a \"licence\" (and a \"source\")")
        return {"name": str(info.get("name") or root.name), "source": str(info.get("source", "")),
                "licence": str(info["licence"])}
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        sentence = re.search(r"[^.\n]*licen[cs]ed[\s\S]*?\.(?=\s|$)", text, re.IGNORECASE)
        source = re.search(r"Provenance:\s*([\s\S]*?\.)(?=\s|$)", text)
        if sentence:
            return {"name": root.name, "licence": " ".join(sentence.group(0).split()).lstrip("- "),
                    "source": " ".join(source.group(1).split()) if source else ""}
    raise ValueError(f"{root}: no licence recorded (write {PROVENANCE_FILE} with \"source\" and \"licence\", or a "
                     "README.md saying how it is licensed): a model card must say what it was trained on")


def field_splits(root: Path) -> list[str]:
    """The splits a field set holds (annotations/<split>.json with a <split>/ image folder beside it)."""
    ann = Path(root) / "annotations"
    splits = sorted(p.stem for p in ann.glob("*.json") if (Path(root) / p.stem).is_dir()) if ann.is_dir() else []
    if not splits:
        raise ValueError(f"{root}: no annotations/<split>.json with a <split>/ image folder (what `ripeye dataset "
                         "import` writes)")
    return splits


def grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


def thumbnail(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


class _Merged:
    """Union-find over keys: which keys have been joined, directly or through others."""

    def __init__(self, keys):
        self.parent = {k: k for k in keys}

    def find(self, k):
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def join(self, a, b) -> None:
        self.parent[self.find(b)] = self.find(a)

    def numbers(self, keys) -> list[int]:
        """A group number per key, counted from 0 in the order the groups first appear."""
        roots: dict = {}
        return [roots.setdefault(self.find(k), len(roots)) for k in keys]


def near_duplicate_groups(thumbs: list[np.ndarray], threshold: float = NEAR_DUPLICATE) -> list[int]:
    """A group number per image: images whose thumbnails differ by less than `threshold` (chained) share one."""
    merged = _Merged(range(len(thumbs)))
    if thumbs:
        stack = np.stack(thumbs).reshape(len(thumbs), -1)
        for i in range(len(thumbs)):
            close = np.nonzero(np.abs(stack[i + 1:] - stack[i]).mean(axis=1) < threshold)[0] + i + 1
            for j in close:
                merged.join(i, int(j))
    return merged.numbers(range(len(thumbs)))


def _features(image: np.ndarray):
    orb = cv2.ORB_create(SCENE_FEATURES)
    return orb.detectAndCompute(cv2.resize(image, (SCENE_SIDE, SCENE_SIDE), interpolation=cv2.INTER_AREA), None)


def _inliers(a, b, matcher) -> int:
    """Matches between two images that one homography explains (RANSAC): many for two views of one scene."""
    (ka, da), (kb, db) = a, b
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        return 0
    good = [m[0] for m in matcher.knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < 0.75 * m[1].distance]
    if len(good) < 8:
        return len(good)
    pa = np.float32([ka[g.queryIdx].pt for g in good])
    pb = np.float32([kb[g.trainIdx].pt for g in good])
    _, mask = cv2.findHomography(pa, pb, cv2.RANSAC, 5.0)
    return int(mask.sum()) if mask is not None else 0


def same_scene_groups(images: list[np.ndarray], groups: list[int], min_inliers: int = SCENE_INLIERS) -> list[int]:
    """Merge near-duplicate groups that show one scene from another place (a camera panning or zooming over the same
    plants): one image of each group against one of every other, ORB features and a homography. Pairs of views of
    one photo of the sample clip share 232+ inliers, views of different photos at most 76 (500 features, 256 px)."""
    reps: dict[int, int] = {}
    for i, g in enumerate(groups):
        reps.setdefault(g, i)
    keys = sorted(reps)
    feats = {g: _features(images[reps[g]]) for g in keys}
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    merged = _Merged(keys)
    for n, g in enumerate(keys):
        for h in keys[n + 1:]:
            if merged.find(g) != merged.find(h) and _inliers(feats[g], feats[h], matcher) >= min_inliers:
                merged.join(g, h)
    return merged.numbers(groups)


def choose_holdout(groups: list[int], forced: set[int], fraction: float, seed: int) -> set[int]:
    """Indices held out: every group with a forced image, then random whole groups until `fraction` of the images."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    held_groups = {groups[i] for i in forced}
    held = sum(len(members[g]) for g in held_groups)
    target = fraction * len(groups)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    for g in order:
        if held >= target:
            break
        if g not in held_groups:
            held_groups.add(g)
            held += len(members[g])
    return {i for g in held_groups for i in members[g]}


@dataclass
class FieldSplit:
    """One field set divided: COCO dicts for training and for the holdout, one image per near-duplicate group."""

    name: str
    root: Path
    provenance: dict
    train: dict
    holdout: dict
    images_dir: dict = field(default_factory=dict)  # file_name → folder it is in
    groups: int = 0
    frames: int = 0  # images in the set before near duplicates were merged

    def counts(self) -> dict:
        return {part: {"images": len(coco["images"]), "boxes": len(coco["annotations"])}
                for part, coco in (("train", self.train), ("holdout", self.holdout))}


def split_field_set(root: Path, fraction: float, seed: int) -> FieldSplit:
    """Read every split of a field set, group near duplicates and carve the holdout (see the module docstring)."""
    root = Path(root)
    provenance = read_provenance(root)
    images, annotations, categories, folder = [], [], None, {}
    for split in field_splits(root):
        coco = json.loads((root / "annotations" / f"{split}.json").read_text())
        if categories is None:
            categories = coco["categories"]
        elif [c["name"] for c in coco["categories"]] != [c["name"] for c in categories]:
            raise ValueError(f"{root}: annotations/{split}.json names other categories than the first split")
        renumber = {}
        for im in coco["images"]:
            if im["file_name"] in folder:
                raise ValueError(f"{root}: image {im['file_name']} is in two splits")
            renumber[im["id"]] = len(images) + 1
            folder[im["file_name"]] = root / split
            images.append({**im, "id": renumber[im["id"]]})
        annotations += [{**a, "id": len(annotations) + k + 1, "image_id": renumber[a["image_id"]]}
                        for k, a in enumerate(coco["annotations"]) if a["image_id"] in renumber]
    greys = [grey(folder[im["file_name"]] / im["file_name"]) for im in images]
    groups = same_scene_groups(greys, near_duplicate_groups([thumbnail(g) for g in greys]))
    forced = {i for i, im in enumerate(images) if im.get("holdout")}
    held = choose_holdout(groups, forced, fraction, seed)
    first_of_group: dict[int, int] = {}
    for i in range(len(images)):
        first_of_group.setdefault(groups[i], i)
    # one image per scene on both sides: a scene captured by eight triggers in a row is one labelled example, not
    # eight (--field-repeat in `ripeye train` sets how much the field weighs), and is evaluated once
    firsts = set(first_of_group.values())

    def subset(indices: set[int]) -> dict:
        ids = {images[i]["id"] for i in indices}
        return {"categories": categories or [], "images": [images[i] for i in sorted(indices)],
                "annotations": [a for a in annotations if a["image_id"] in ids]}

    return FieldSplit(provenance["name"], root, provenance, subset(firsts - held), subset(firsts & held), folder,
                      len(set(groups)), len(images))


def write_holdout(split: FieldSplit, out: Path) -> Path:
    """The holdout as a COCO dataset (OUT/annotations/holdout.json, OUT/holdout/ symlinks) for eval and compare."""
    images = out / "holdout"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.iterdir():
        old.unlink()
    for im in split.holdout["images"]:
        (images / im["file_name"]).symlink_to((split.images_dir[im["file_name"]] / im["file_name"]).resolve())
    (out / "annotations").mkdir(exist_ok=True)
    path = out / "annotations" / "holdout.json"
    path.write_text(json.dumps(split.holdout, indent=1) + "\n")
    return path


def identity_or(class_map: dict[str, str], coco: dict) -> dict[str, str]:
    """The class map for a dataset: the base map when its categories are the base's names, else (a field set,
    labelled with the model's own class names) the identity over the model's classes."""
    names = {c["name"] for c in coco["categories"]}
    if set(class_map) <= names:
        return class_map
    targets = list(dict.fromkeys(class_map.values()))
    if set(targets) <= names:
        return {t: t for t in targets}
    raise ValueError(f"its categories {sorted(names)} are neither the base set's {sorted(class_map)} nor the "
                     f"model's classes {targets}")
