"""The recorded test split (daemon/testsplit.py): whole scenes, class shares, the committed record rebuilt exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from daemon import testsplit
from tests.conftest import REPO, RIPEYE

RECORD = REPO / "bench" / "splits" / "laboro-tomato-big-test.json"


def synthetic_coco(groups_of: dict[str, int], boxes: dict[str, list[int]]) -> dict:
    images = [{"id": i, "file_name": n, "width": 64, "height": 64} for i, n in enumerate(sorted(boxes))]
    ids = {im["file_name"]: im["id"] for im in images}
    anns = [{"id": k, "image_id": ids[n], "category_id": c, "bbox": [0, 0, 4, 4]}
            for k, (n, c) in enumerate((n, c) for n in sorted(boxes) for c in boxes[n])]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_carve_keeps_scenes_whole_caps_classes_and_follows_the_seed():
    boxes = {f"p{i:03d}.jpg": [1] * (1 + i % 4) + [2] * (i % 3 == 0) for i in range(200)}
    groups = {n: i // 2 for i, n in enumerate(sorted(boxes))}  # pairs of photos show one scene
    coco = synthetic_coco(groups, boxes)
    test = testsplit.carve(coco, groups, 0.2, seed=3)
    assert test == testsplit.carve(coco, groups, 0.2, seed=3)
    assert test != testsplit.carve(coco, groups, 0.2, seed=4)
    assert 36 <= len(test) <= 44  # 20 % of 200 photos, whole pairs
    taken = set(test)
    for name, g in groups.items():  # a scene is on one side only
        assert all((other in taken) == (name in taken) for other, h in groups.items() if h == g)
    total = Counter(c for n in boxes for c in boxes[n])
    held = Counter(c for n in test for c in boxes[n])
    for c in total:  # each class held out in about the photos' share, never past the cap
        assert held[c] <= max(0.2 * total[c] * 1.1, 0.2 * total[c] + 1)
        assert held[c] >= 0.15 * total[c]


def test_carve_names_a_photo_without_a_scene_and_a_bad_fraction():
    coco = synthetic_coco({}, {"a.jpg": [1], "b.jpg": [2]})
    with pytest.raises(ValueError, match="no scene group"):
        testsplit.carve(coco, {"a.jpg": 0}, 0.5, 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        testsplit.carve(coco, {"a.jpg": 0, "b.jpg": 1}, 1.5, 0)


def test_the_committed_record_rebuilds_a_disjoint_split_of_real_photos(dataset, tmp_path):
    out = tmp_path / "split"
    run = subprocess.run(RIPEYE + ["dataset", "split", str(dataset), "--out", str(out), "--record", str(RECORD)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    record = json.loads(RECORD.read_text())
    source = json.loads((dataset / "annotations" / "train.json").read_text())
    parts = {s: json.loads((out / "annotations" / f"{s}.json").read_text()) for s in ("train", "test", "valid")}
    train_names = {im["file_name"] for im in parts["train"]["images"]}
    test_names = {im["file_name"] for im in parts["test"]["images"]}
    assert test_names == set(record["test"]) and not train_names & test_names
    assert train_names | test_names == {im["file_name"] for im in source["images"]}
    assert len(parts["train"]["annotations"]) + len(parts["test"]["annotations"]) == len(source["annotations"])
    # every part's photos are there, linked to the read-only originals
    for split, coco in parts.items():
        for im in coco["images"]:
            assert (out / split / im["file_name"]).resolve().is_file(), (split, im["file_name"])
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(test_names)
    # stratified: each class's share of boxes held out is within a few points of the photos' share
    names = {c["id"]: c["name"] for c in source["categories"]}
    held = Counter(names[a["category_id"]] for a in parts["test"]["annotations"])
    whole = Counter(names[a["category_id"]] for a in source["annotations"])
    share = len(test_names) / len(source["images"])
    for cls, n in whole.items():
        assert abs(held[cls] / n - share) < 0.04, (cls, held[cls], n)
    written = json.loads((out / "split.json").read_text())
    assert written["test"] == record["test"] and written["counts"]["test"]["images"] == len(test_names)
    assert "licen" in json.loads((out / "dataset.json").read_text())["licence"].lower()


def test_a_record_from_other_annotations_is_refused(dataset, tmp_path):
    record = json.loads(RECORD.read_text())
    record["train_json_sha256"] = "0" * 64
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(record))
    run = subprocess.run(RIPEYE + ["dataset", "split", str(dataset), "--out", str(tmp_path / "o"), "--record",
                                   str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "other annotations" in run.stderr and str(bad) in run.stderr


def test_the_split_refuses_to_write_into_its_source(dataset):
    run = subprocess.run(RIPEYE + ["dataset", "split", str(dataset), "--out", str(dataset), "--record", str(RECORD)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "must not be the source" in run.stderr


def test_the_final_fit_root_trains_on_train_and_valid_and_keeps_test_apart(dataset, tmp_path):
    split, fit = tmp_path / "split", tmp_path / "fit"
    subprocess.run(RIPEYE + ["dataset", "split", str(dataset), "--out", str(split), "--record", str(RECORD)],
                   check=True, capture_output=True, timeout=120)
    run = subprocess.run([sys.executable, str(REPO / "bench" / "final_fit_data.py"), str(split), "--out", str(fit)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    parts = {s: json.loads((split / "annotations" / f"{s}.json").read_text()) for s in ("train", "valid", "test")}
    merged = json.loads((fit / "annotations" / "train.json").read_text())
    names = [im["file_name"] for im in merged["images"]]
    assert sorted(names) == sorted(im["file_name"] for s in ("train", "valid") for im in parts[s]["images"])
    assert not set(names) & {im["file_name"] for im in parts["test"]["images"]}
    assert len({im["id"] for im in merged["images"]}) == len(names)
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])
    # every box still sits on its own photo: per photo, the same boxes as in its source split
    by_name = {im["id"]: im["file_name"] for im in merged["images"]}
    boxes = Counter((by_name[a["image_id"]], tuple(a["bbox"]), a["category_id"]) for a in merged["annotations"])
    source = Counter()
    for s in ("train", "valid"):
        ids = {im["id"]: im["file_name"] for im in parts[s]["images"]}
        source.update((ids[a["image_id"]], tuple(a["bbox"]), a["category_id"]) for a in parts[s]["annotations"])
    assert boxes == source
    assert all((fit / "train" / n).resolve().is_file() for n in names)
    assert json.loads((fit / "annotations" / "test.json").read_text()) == parts["test"]
    assert "final fit" in json.loads((fit / "dataset.json").read_text())["name"]
    # the INT8 calibration list names each photo where the original dataset keeps it (--calib-root <dataset>)
    from daemon.train import calibration_path

    valid_names = {im["file_name"] for im in parts["valid"]["images"]}
    where = {n: calibration_path(fit, n) for n in names}
    assert {n for n, p in where.items() if p.startswith("valid/")} == valid_names
    assert all((dataset / p).is_file() for p in where.values())
