"""Dataset preparation for `ripeye train` (no torch needed): COCO → YOLO labels, class mapping, calibration list."""

import json
from pathlib import Path

import pytest

from daemon import train


def test_class_map_parsing_and_order():
    assert list(train.parse_class_map(None).values()) == ["ripe", "half_ripe", "unripe"]
    assert train.parse_class_map("a=x, b=y") == {"a": "x", "b": "y"}
    with pytest.raises(ValueError, match="SRC=DST"):
        train.parse_class_map("a")


def test_coco_to_yolo_labels_normalised_and_clipped():
    coco = {"categories": [{"id": 0, "name": "Tomatos"}, {"id": 1, "name": "b_fully_ripened"},
                           {"id": 2, "name": "b_green"}, {"id": 3, "name": "b_half_ripened"}],
            "images": [{"id": 7, "file_name": "x.jpg", "width": 200, "height": 100}],
            "annotations": [{"image_id": 7, "category_id": 3, "bbox": [10, 20, 40, 30]},
                            {"image_id": 7, "category_id": 1, "bbox": [180, 90, 40, 30]},  # runs off the image
                            {"image_id": 7, "category_id": 0, "bbox": [0, 0, 5, 5]}]}  # unused parent category
    labels, names = train.coco_to_yolo_labels(coco, train.parse_class_map(None))
    assert names == ["ripe", "half_ripe", "unripe"]
    assert labels["x.jpg"] == ["1 0.150000 0.350000 0.200000 0.300000", "0 0.950000 0.950000 0.100000 0.100000"]


def test_polygon_labels_for_copy_paste():
    """`ripeye train --copy-paste P` writes outlines: normalised, clipped, and a box's corners where none exists."""
    coco = {"categories": [{"id": 1, "name": "b_fully_ripened"}, {"id": 2, "name": "b_green"},
                           {"id": 3, "name": "b_half_ripened"}],
            "images": [{"id": 7, "file_name": "x.jpg", "width": 200, "height": 100}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [10, 20, 40, 30],
                             "segmentation": [[10, 20, 50, 20, 30, 50]]},
                            {"image_id": 7, "category_id": 2, "bbox": [180, 90, 40, 30],  # no outline, off the edge
                             "segmentation": {"counts": "rle", "size": [100, 200]}}]}
    labels, _ = train.coco_to_yolo_labels(coco, train.parse_class_map(None), polygons=True)
    assert labels["x.jpg"] == ["0 0.050000 0.200000 0.250000 0.200000 0.150000 0.500000",
                               "2 0.900000 0.900000 1.000000 0.900000 1.000000 1.000000 0.900000 1.000000"]


def test_real_dataset_polygons_keep_the_boxes(dataset, tmp_path):
    """Ultralytics takes each box from its polygon's extent: on the real data that must be the COCO box (< 1 px)."""
    coco = json.loads((dataset / "annotations" / "train.json").read_text())
    boxes, _ = train.coco_to_yolo_labels(coco, train.parse_class_map(None))
    outlines, _ = train.coco_to_yolo_labels(coco, train.parse_class_map(None), polygons=True)
    size = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    worst = 0.0
    for fname, lines in boxes.items():
        w, h = size[fname]
        assert len(outlines[fname]) == len(lines)
        for box_line, poly_line in zip(lines, outlines[fname]):
            c, cx, cy, bw, bh = (float(v) for v in box_line.split())
            poly = [float(v) for v in poly_line.split()]
            xs, ys = poly[1::2], poly[2::2]
            assert poly[0] == c and len(xs) >= 3
            extent = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            worst = max(worst, *(abs(a - b) for a, b in zip(extent, box)))
    assert worst < 1.0
    train.prepare_dataset(dataset, tmp_path, train.parse_class_map(None), polygons=True)
    ds = tmp_path / "dataset" / "labels"
    assert len(next((ds / "train").glob("*.txt")).read_text().split("\n")[0].split()) > 5  # outlines for training
    assert all(len(line.split()) == 5 for f in (ds / "valid").glob("*.txt")  # boxes for validation
               for line in f.read_text().splitlines())


def test_real_dataset_labels_and_stratified_calibration(dataset, tmp_path):
    data_yaml = train.prepare_dataset(dataset, tmp_path, train.parse_class_map(None))
    assert "names" in data_yaml.read_text()
    labels = list((tmp_path / "dataset" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 309
    coco = json.loads((dataset / "annotations" / "train.json").read_text())
    chosen = train.choose_calibration(coco, train.parse_class_map(None), 100, seed=0)
    assert len(chosen) == 100 == len(set(chosen))
    per_image, _ = train.coco_to_yolo_labels(coco, train.parse_class_map(None))
    classes_covered = {int(line.split()[0]) for f in chosen for line in per_image[f]}
    assert classes_covered == {0, 1, 2}
    ripe_images = sum(any(line.startswith("0 ") for line in per_image[f]) for f in chosen)
    assert ripe_images >= 30  # the rarest class is not left to chance
    assert chosen == train.choose_calibration(coco, train.parse_class_map(None), 100, seed=0)  # reproducible


def test_oversampling_repeats_only_training_images_of_the_class(dataset, tmp_path):
    """`ripeye train --oversample ripe`: images showing ripe fruit appear twice in train, valid is untouched."""
    coco = json.loads((dataset / "annotations" / "train.json").read_text())
    labels, _ = train.coco_to_yolo_labels(coco, train.parse_class_map(None))
    with_ripe = sum(any(line.startswith("0 ") for line in lines) for lines in labels.values())
    assert train.oversample_plan({"a": ["0 .5 .5 .1 .1"], "b": ["2 .5 .5 .1 .1"], "c": []}, 0, 3) == \
        {"a": 3, "b": 1, "c": 1}
    train.prepare_dataset(dataset, tmp_path, train.parse_class_map(None), oversample="ripe", oversample_factor=2)
    ds = tmp_path / "dataset"
    assert len(list((ds / "images" / "train").iterdir())) == 309 + with_ripe
    assert len(list((ds / "labels" / "train").glob("*__dup1.txt"))) == with_ripe
    assert len(list((ds / "images" / "valid").iterdir())) == 67
    dup = next((ds / "labels" / "train").glob("*__dup1.txt"))
    assert dup.read_text() == (dup.parent / dup.name.replace("__dup1", "")).read_text()
    with pytest.raises(ValueError, match="not a class"):
        train.prepare_dataset(dataset, tmp_path, train.parse_class_map(None), oversample="rotten")
    # a later run without oversampling leaves no stale duplicates behind
    train.prepare_dataset(dataset, tmp_path, train.parse_class_map(None))
    assert len(list((ds / "images" / "train").iterdir())) == 309


def test_starting_weights_are_recorded_by_name_and_hash_not_path(model_dir):
    from daemon import train

    ref = train._init_reference(str(model_dir / "model.pt"))
    assert ref == {"file": "model.pt", "sha256": train.sha256(model_dir / "model.pt")}
    assert train._init_reference(None) is None
    assert set(train.AUGMENT_KEYS) <= set(train.RECIPE_KEYS) and "cos_lr" in train.RECIPE_KEYS


def test_a_size_folder_is_named_after_its_model(tmp_path):
    from daemon import train

    assert train.model_name(tmp_path / "tomato-yolo11n" / "sizes" / "416") == "tomato-yolo11n"
    assert train.model_name(tmp_path / "tomato-yolo11n") == "tomato-yolo11n"
    assert train.model_name(tmp_path / "sizes") == "sizes"


def test_only_an_interrupted_checkpoint_is_resumed():
    # Ultralytics' checkpoint dicts: mid-run (optimizer state, epoch ≥ 0) and after strip_optimizer (None, -1);
    # resuming a finished one makes Ultralytics start a new run on its default coco8 data
    assert train.checkpoint_state({"epoch": 1, "optimizer": {"state": {}}}) == "interrupted"
    assert train.checkpoint_state({"epoch": 0, "optimizer": {}}) == "interrupted"
    assert train.checkpoint_state({"epoch": -1, "optimizer": None}) == "finished"
    assert train.checkpoint_state({"epoch": 5, "optimizer": None}) == "finished"


def _train_args(*argv):
    import argparse

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(list(argv))


def test_train_settings_default_and_fine_tuning_flags():
    # defaults: Ultralytics' own warm-up, mosaic closed for the last tenth, no augmentation key overridden
    s = train.train_settings(_train_args("--epochs", "40"))
    assert s["close_mosaic"] == 4 and "warmup_epochs" not in s and "mosaic" not in s and "lr0" not in s
    assert train.train_settings(_train_args("--epochs", "5"))["close_mosaic"] == 1
    # a fine-tuning stage: no warm-up, no mosaic for the whole run, its own rate and augmentation
    s = train.train_settings(_train_args("--epochs", "10", "--warmup-epochs", "0", "--close-mosaic", "10",
                                         "--lr0", "0.0001", "--mixup", "0.1", "--init", "w.pt"))
    assert (s["warmup_epochs"], s["close_mosaic"], s["lr0"], s["mixup"], s["pretrained"]) == (0, 10, 0.0001, 0.1, True)
    assert set(train.RECIPE_KEYS) - {"lrf"} <= set(s) | set(train.AUGMENT_KEYS) | set(train.TRAINING_KEYS)
    assert train.train_settings(_train_args("--copy-paste", "0.5"))["copy_paste"] == 0.5
    assert "copy_paste" in train.RECIPE_KEYS  # recorded in metadata.json with the rest of the recipe
    s = train.train_settings(_train_args("--multi-scale", "0.25", "--cls-pw", "0.5"))
    assert (s["multi_scale"], s["cls_pw"]) == (0.25, 0.5)
    assert {"multi_scale", "cls_pw"} <= set(train.RECIPE_KEYS)
    assert "multi_scale" not in train.train_settings(_train_args())  # unset: Ultralytics' default (off)
    s = train.train_settings(_train_args("--distill-from", "teacher.pt"))
    assert (s["distill_model"], s["dis"]) == ("teacher.pt", 6.0)
    assert "distill_model" not in train.train_settings(_train_args())
    # a wall-time budget (Ultralytics' time) instead of a fixed epoch count, recorded with the recipe
    assert train.train_settings(_train_args("--time", "0.1"))["time"] == 0.1
    assert "time" in train.RECIPE_KEYS and "time" not in train.train_settings(_train_args())


def test_export_folder_defaults_outside_the_shipped_model():
    # an experiment without --out once overwrote models/tomato-yolo11n/model.onnx: the default is a staging folder
    args = _train_args("--work", "/w", "--name", "try1")
    assert train.export_folder(args) == Path("/w/exports/try1")
    assert train.export_folder(_train_args("--out", "models/tomato-yolo11n")) == Path("models/tomato-yolo11n")


def test_epochs_kept_counts_a_timed_runs_checkpoints(tmp_path):
    for n in (0, 1, 2, 10, 11):
        (tmp_path / f"epoch{n}.pt").write_bytes(b"")
    (tmp_path / "last.pt").write_bytes(b"")
    assert train.epochs_kept(tmp_path) == 12
    assert [p.name for p in train.last_epochs(tmp_path, 2, train.epochs_kept(tmp_path))] == ["epoch10.pt", "epoch11.pt"]
    with pytest.raises(ValueError, match="save-period"):
        train.epochs_kept(tmp_path / "none")


def test_average_weights_is_the_mean_in_each_dtype():
    """`--average-last`: floats averaged (accumulated in float32 even when stored FP16), counters from the last."""
    import numpy as np

    a = {"w": np.array([1.0, 2.0], dtype=np.float16), "n": np.array(3)}
    b = {"w": np.array([2.0, 4.0], dtype=np.float16), "n": np.array(5)}
    c = {"w": np.array([6.0, 0.0], dtype=np.float16), "n": np.array(7)}
    avg = train.average_weights([a, b, c])
    assert avg["w"].dtype == np.float16 and np.allclose(avg["w"], [3.0, 2.0])
    assert int(avg["n"]) == 7
    with pytest.raises(ValueError, match="same layers"):
        train.average_weights([a, {"v": a["w"], "n": a["n"]}])
    with pytest.raises(ValueError, match="no weights"):
        train.average_weights([])


def test_last_epochs_names_what_is_missing(tmp_path):
    for n in (13, 14, 15):
        (tmp_path / f"epoch{n}.pt").write_bytes(b"")
    assert [p.name for p in train.last_epochs(tmp_path, 3, 16)] == ["epoch13.pt", "epoch14.pt", "epoch15.pt"]
    with pytest.raises(ValueError, match="epoch12.pt.*--save-period 1"):
        train.last_epochs(tmp_path, 4, 16)
    with pytest.raises(ValueError, match="has 16 epochs"):
        train.last_epochs(tmp_path, 17, 16)
