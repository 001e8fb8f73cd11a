"""Close-up windows and training's zoom-in crops and lamp casts (daemon/closeups.py, train.add_closeups, lamps)."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
import yaml

from daemon import closeups, train
from daemon.lamps import LampAugment


def test_window_puts_the_fruit_at_the_asked_share_inside_the_photo():
    rng = random.Random(0)
    box = (200.0, 300.0, 280.0, 340.0)  # 80 x 40 px: fits every aspect at 90 %
    for fraction in (0.3, 0.5, 0.9):
        for aspect in closeups.ASPECTS:
            w = closeups.window_around(box, 640, 640, fraction, aspect, rng)
            assert w is not None
            assert abs(80 / w.width - fraction) < 0.02
            assert abs(w.width / w.height - aspect) < 0.05
            assert 0 <= w.x1 <= box[0] and box[2] <= w.x2 <= 640
            assert 0 <= w.y1 <= box[1] and box[3] <= w.y2 <= 640


def test_window_is_none_where_it_cannot_fit():
    rng = random.Random(0)
    assert closeups.window_around((0, 0, 400, 100), 640, 640, 0.3, 4 / 3, rng) is None  # 1333 px wide
    assert closeups.window_around((0, 0, 100, 300), 640, 640, 0.9, 4 / 3, rng) is None  # box taller than window
    assert closeups.window_around((10, 10, 10, 50), 640, 640, 0.5, 1.0, rng) is None  # no width


def test_neighbours_keep_clipped_boxes_only_when_half_inside():
    window = closeups.Window(100, 100, 300, 250)
    boxes = np.array([[150, 150, 200, 200],    # inside
                      [280, 120, 320, 160],    # half inside (x 280-300 of 280-320)
                      [290, 120, 330, 160],    # a quarter inside
                      [400, 400, 450, 450]])   # outside
    moved, keep = closeups.boxes_in_window(boxes, window)
    assert keep.tolist() == [0, 1]
    assert moved.tolist() == [[50, 50, 100, 100], [180, 20, 200, 60]]


def test_targets_take_classes_in_turn_and_cap_each_photo():
    per_image = {f"p{i}.jpg": [(i % 3, (0, 0, 70, 70)), (i % 3, (100, 100, 170, 170)), (0, (0, 0, 30, 30)),
                               (1, (0, 0, 90, 90)), (2, (0, 0, 90, 90)), (0, (0, 0, 90, 90))] for i in range(30)}
    chosen = closeups.pick_targets(per_image, 60, seed=1, min_width=64, per_photo=2)
    assert len(chosen) == 60 and len(set(chosen)) == 60
    assert max(sum(1 for n, _ in chosen if n == name) for name in per_image) <= 2
    classes = [per_image[n][i][0] for n, i in chosen]
    assert all(per_image[n][i][1][2] >= 64 for n, i in chosen)  # the 30 px fruit is never a target
    assert min(classes.count(c) for c in range(3)) == 20
    assert chosen == closeups.pick_targets(per_image, 60, seed=1, min_width=64, per_photo=2)


def test_fraction_range_keeps_windows_above_the_minimum_side():
    assert closeups.fraction_range(200) == (0.3, 0.9)
    lo, hi = closeups.fraction_range(64)
    assert lo == 0.3 and abs(hi - 64 / closeups.MIN_SIDE) < 1e-9


def test_training_closeups_of_real_photos(dataset, tmp_path):
    class_map = train.parse_class_map(None)
    data_yaml = train.prepare_dataset(dataset, tmp_path, class_map, splits=("train",))
    record = train.add_closeups(data_yaml, dataset, class_map, per_photo=0.1, seed=0)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["train"] == ["images/train", "images/closeups"]
    crops = sorted((tmp_path / "dataset" / "images" / "closeups").glob("*.jpg"))
    assert record["crops"] == len(crops) >= 25 and min(record["targets_per_class"].values()) >= 8
    big = 0
    for crop in crops:
        image = cv2.imread(str(crop))
        assert image is not None and min(image.shape[:2]) >= 20
        lines = (tmp_path / "dataset" / "labels" / "closeups" / f"{crop.stem}.txt").read_text().split()
        values = np.array(lines, dtype=float).reshape(-1, 5)
        assert ((values[:, 1:] >= 0) & (values[:, 1:] <= 1)).all()
        big += values[:, 3].max() >= 0.25  # the target fruit spans a quarter of the width or more
    assert big == len(crops)
    # the same seed draws the same crops (a resumed run trains on what it started with)
    again = train.add_closeups(data_yaml, dataset, class_map, per_photo=0.1, seed=0)
    assert again == record
    assert yaml.safe_load(data_yaml.read_text())["train"].count("images/closeups") >= 1


def test_lamp_augment_casts_the_share_asked_and_leaves_boxes():
    photo = np.full((32, 32, 3), 128, np.uint8)
    never, always = LampAugment(0.0, seed=0), LampAugment(1.0, balance_p=0.0, seed=0)
    labels = {"img": photo.copy(), "cls": np.array([[1]])}
    assert never(labels)["img"] is labels["img"] and (labels["img"] == photo).all()
    changed = sum(int(not np.array_equal(always({"img": photo.copy()})["img"], photo)) for _ in range(20))
    assert changed >= 18  # a strength near 0 may leave grey almost as it was
    half = LampAugment(0.5, seed=1)
    hits = sum(int(not np.array_equal(half({"img": photo.copy()})["img"], photo)) for _ in range(400))
    assert 150 < hits < 250
    out = always({"img": photo.copy(), "cls": np.array([[2]]), "bboxes": np.array([[1, 2, 3, 4]])})
    assert out["cls"].tolist() == [[2]] and out["bboxes"].tolist() == [[1, 2, 3, 4]]


def test_lamp_casts_join_only_the_augmented_training_transforms(dataset, tmp_path):
    pytest.importorskip("ultralytics")  # the train extra
    from ultralytics.cfg import get_cfg
    from ultralytics.data import dataset as ul_dataset

    original = ul_dataset.YOLODataset.build_transforms
    train.apply_lamp_augment({"p": 1.0, "max_strength": 1.0, "balance_p": 0.0})
    try:
        data_yaml = train.prepare_dataset(dataset, tmp_path, train.parse_class_map(None))
        names = json.loads(json.dumps(yaml.safe_load(data_yaml.read_text())["names"]))
        hyp = get_cfg()
        for augment in (True, False):
            ds = ul_dataset.YOLODataset(img_path=str(tmp_path / "dataset" / "images" / "valid"), imgsz=160,
                                        augment=augment, hyp=hyp, data={"names": names, "channels": 3})
            kinds = [type(t).__name__ for t in ds.transforms.transforms]
            assert ("LampAugment" in kinds) == augment
            if augment:
                assert kinds.index("LampAugment") == len(kinds) - 2
    finally:
        ul_dataset.YOLODataset.build_transforms = original
