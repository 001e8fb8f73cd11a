"""Training on base + field data (issue 28, items 3 and 4): near-duplicate scenes kept on one side of the field
holdout, provenance required, the Ultralytics layout with the field set beside the base set, and `ripeye compare`'s
report and verdict on real model folders and real photos (frames of the bundled sample clip)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from argparse import Namespace

import cv2
import numpy as np
import pytest
import yaml

from daemon import compare, fielddata, train
from daemon.cli import main
from daemon.config import SAMPLE_CLIP
from tests.conftest import FIXTURES, MODEL_DIR, REPO

CLASSES = ["ripe", "half_ripe", "unripe"]


@pytest.fixture(scope="module")
def clip_set(tmp_path_factory):
    """The sample clip as a field set in `ripeye dataset import`'s layout: every 8th frame with its ground truth.
    The clip shows each greenhouse photo for many frames, so its frames form one near-duplicate scene per photo."""
    truth = json.loads((FIXTURES / "sample_clip_truth.json").read_text())["frames"]
    wanted = {f["frame"]: f for f in truth if f["frame"] % 8 == 1}
    root = tmp_path_factory.mktemp("clipset")
    (root / "field").mkdir()
    (root / "annotations").mkdir()
    clip = cv2.VideoCapture(str(SAMPLE_CLIP))
    images, annotations = [], []
    frame_no = 0
    while True:
        ok, image = clip.read()
        if not ok:
            break
        frame_no += 1
        if frame_no not in wanted:
            continue
        name = f"f{frame_no:04d}.jpg"
        cv2.imwrite(str(root / "field" / name), image)
        h, w = image.shape[:2]
        images.append({"id": len(images) + 1, "file_name": name, "width": w, "height": h,
                       "photo": wanted[frame_no]["photo"]})
        for b in wanted[frame_no]["boxes"]:
            x1, y1, x2, y2 = b["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": len(images),
                                "category_id": CLASSES.index(b["class"]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    clip.release()
    coco = {"categories": [{"id": i, "name": c} for i, c in enumerate(CLASSES, 1)], "images": images,
            "annotations": annotations}
    (root / "annotations" / "field.json").write_text(json.dumps(coco))
    (root / "dataset.json").write_text(json.dumps({"source": "ripeye's sample clip", "licence": "test licence"}))
    return root


def test_near_duplicates_group_and_distinct_scenes_stay_apart():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 255, (16, 16)).astype(np.float32), rng.uniform(0, 255, (16, 16)).astype(np.float32)
    noisy = np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.float32)  # the same scene, sensor noise
    assert fielddata.near_duplicate_groups([a, b, noisy, b]) == [0, 1, 0, 1]
    assert fielddata.near_duplicate_groups([]) == []


def test_holdout_takes_whole_groups_forced_ones_first_and_is_reproducible():
    groups = [0, 0, 0, 1, 1, 2, 3, 3, 4, 5]
    held = fielddata.choose_holdout(groups, forced={5}, fraction=0.3, seed=1)
    held_groups = {groups[i] for i in held}
    assert all((i in held) == (g in held_groups) for i, g in enumerate(groups))  # whole groups only
    assert 2 in held_groups and len(held) >= 3
    assert held == fielddata.choose_holdout(groups, forced={5}, fraction=0.3, seed=1)
    assert fielddata.choose_holdout(groups, set(), 0.0, 0) == set()


def test_field_split_keeps_each_photo_on_one_side(clip_set):
    part = fielddata.split_field_set(clip_set, 0.3, seed=0)
    photos = {side: {im["photo"] for im in coco["images"]} for side, coco in (("train", part.train),
                                                                             ("holdout", part.holdout))}
    assert photos["train"] and photos["holdout"] and not photos["train"] & photos["holdout"]
    # one image per scene on each side, and the scenes are the clip's photos
    assert len(part.train["images"]) == len(photos["train"]) and len(part.holdout["images"]) == len(photos["holdout"])
    assert part.groups == len(photos["train"] | photos["holdout"])
    ids = {im["id"] for im in part.holdout["images"]}
    assert all(a["image_id"] in ids for a in part.holdout["annotations"]) and part.holdout["annotations"]


def test_images_marked_holdout_are_held_out_with_their_scene(clip_set, tmp_path):
    root = tmp_path / "marked"
    shutil.copytree(clip_set, root)
    coco = json.loads((root / "annotations" / "field.json").read_text())
    marked_photo = coco["images"][-1]["photo"]
    coco["images"][-1]["holdout"] = True  # a random `sample` capture: evaluation data
    (root / "annotations" / "field.json").write_text(json.dumps(coco))
    part = fielddata.split_field_set(root, 0.0, seed=0)
    assert {im["photo"] for im in part.holdout["images"]} == {marked_photo}
    assert marked_photo not in {im["photo"] for im in part.train["images"]}


def test_a_set_without_a_licence_is_refused(clip_set, tmp_path, dataset):
    root = tmp_path / "nolicence"
    shutil.copytree(clip_set, root)
    (root / "dataset.json").unlink()
    with pytest.raises(ValueError, match="no licence recorded"):
        fielddata.read_provenance(root)
    (root / "dataset.json").write_text(json.dumps({"source": "somewhere"}))
    with pytest.raises(ValueError, match="dataset.json: needs a \"licence\""):
        fielddata.read_provenance(root)
    base = fielddata.read_provenance(dataset)  # the base set says it in its README
    assert "CC BY-NC-SA 4.0" in base["licence"] and "Laboro" in base["source"]


def test_field_sets_join_training_and_their_holdout_is_written(dataset, clip_set, tmp_path):
    work = tmp_path / "work"
    class_map = train.parse_class_map(None)
    data_yaml = train.prepare_dataset(dataset, work, class_map)
    records = train.add_field_sets(data_yaml, [clip_set], work, class_map, holdout=0.3, seed=0, repeat=2)
    data = yaml.safe_load(data_yaml.read_text())
    tag = f"images/field-{clip_set.name}"
    assert data["train"] == ["images/train", tag] and data["val"] == "images/valid"
    assert data["names"] == {0: "ripe", 1: "half_ripe", 2: "unripe"}
    rec = records[0]
    assert rec["licence"] == "test licence" and rec["role"] == "field" and rec["repeat"] == 2
    n_train = rec["train"]["images"]
    ds = work / "dataset"
    assert len(list((ds / tag).iterdir())) == 2 * n_train == len(list((ds / f"labels/field-{clip_set.name}")
                                                                       .glob("*.txt")))
    # labels in the model's class ids: the field set is labelled with the model's own class names
    holdout = json.loads((work / "holdout" / clip_set.name / "annotations" / "holdout.json").read_text())
    assert [im["file_name"] for im in holdout["images"]] == rec["holdout_images"]
    assert all((work / "holdout" / clip_set.name / "holdout" / f).is_file() for f in rec["holdout_images"])
    trained = {p.name.split("__")[0].removesuffix(".jpg") for p in (ds / tag).iterdir()}
    assert not trained & {f.removesuffix(".jpg") for f in rec["holdout_images"]}
    base = train.base_record(dataset, class_map)
    assert base["role"] == "base" and base["train"]["images"] == 309 and base["valid"]["boxes"] == 453


def test_a_field_set_in_other_class_names_is_refused(dataset, clip_set, tmp_path):
    root = tmp_path / "other"
    shutil.copytree(clip_set, root)
    coco = json.loads((root / "annotations" / "field.json").read_text())
    coco["categories"][0]["name"] = "red"
    (root / "annotations" / "field.json").write_text(json.dumps(coco))
    data_yaml = train.prepare_dataset(dataset, tmp_path / "w", train.parse_class_map(None))
    with pytest.raises(ValueError, match=f"--data {root}: its categories"):
        train.add_field_sets(data_yaml, [root], tmp_path / "w", train.parse_class_map(None), 0.3, 0)


def _compare(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["compare", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


def test_compare_the_same_model_is_not_worse(clip_set, tmp_path, model_dir):
    report = tmp_path / "same.json"
    rc, out, err = _compare(model_dir, model_dir, "--data", f"clip={clip_set / 'annotations' / 'field.json'}",
                            "--frames", "3", "--json", report)
    assert rc == 0, err
    r = json.loads(report.read_text())
    clip = r["results"]["clip"]
    assert clip["current"] == clip["candidate"] and clip["current"]["mAP50"] > 0.3
    assert r["int8_gate"]["current"]["verdict"] == "accepted"  # the shipped model's manifest is for its model.onnx
    assert set(r["latency_ms_median"]) == {"current", "candidate"}
    assert "verdict: not worse" in out and "ripe AP50" in out


def test_compare_refuses_a_worse_candidate(clip_set, tmp_path, model_dir):
    """The 320-pixel variant (the same model at a smaller input) as the candidate: worse on the clip's photos at
    tolerance 0, accepted when the tolerance is wider than the measured drop; the exit status follows the report."""
    candidate = tmp_path / "small"
    shutil.copytree(MODEL_DIR / "sizes" / "320", candidate)
    (candidate / "manifest.json").unlink(missing_ok=True)
    report = tmp_path / "worse.json"
    data = f"clip={clip_set / 'annotations' / 'field.json'}"
    rc, out, _ = _compare(model_dir, candidate, "--data", data, "--frames", "0", "--tolerance", "0",
                          "--json", report)
    r = json.loads(report.read_text())
    drop = 100 * max(r["results"]["clip"]["current"][m] - r["results"]["clip"]["candidate"][m]
                     for m in compare.METRICS)
    assert drop > 0 and rc == 1 and "verdict: WORSE" in out and r["worse"]
    assert r["int8_gate"]["candidate"]["verdict"] == "not optimized"
    rc, _, _ = _compare(model_dir, candidate, "--data", data, "--frames", "0", "--tolerance", f"{drop + 0.5:.2f}")
    assert rc == 0


def test_compare_names_the_set_it_cannot_read(clip_set, tmp_path, model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(clip_set, broken)
    next((broken / "field").iterdir()).unlink()
    rc, _, err = _compare(model_dir, model_dir, "--data", f"b={broken / 'annotations' / 'field.json'}")
    assert rc == 2 and "--data b=" in err and "missing" in err


def test_the_verdict_counts_points_on_every_set():
    results = {"base": {"current": {"mAP50": 0.80, "mAP50-95": 0.60}, "candidate": {"mAP50": 0.795,
                                                                                     "mAP50-95": 0.598}},
               "field": {"current": {"mAP50": 0.50, "mAP50-95": 0.30}, "candidate": {"mAP50": 0.70,
                                                                                      "mAP50-95": 0.45}}}
    assert compare.verdict(results, 1.0) == []
    worse = compare.verdict(results, 0.1)
    assert len(worse) == 2 and all(w.startswith("base: ") for w in worse)
    assert compare.parse_data("field holdout=/x/annotations/holdout.json")[0] == "field holdout"
    assert compare.parse_data("/x/annotations/holdout.json") == ("x/holdout", compare.Path("/x/annotations/"
                                                                                          "holdout.json"))


def test_training_sources_come_from_the_run(tmp_path, dataset):
    args = Namespace(work=str(tmp_path), name="r", data=[str(dataset)], class_map=None)
    assert train.training_sources(args)[0]["role"] == "base"  # a run from before field sets: the base set
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / train.SOURCES_FILE).write_text(json.dumps([{"role": "base"}, {"role": "field"}]))
    assert [s["role"] for s in train.training_sources(args)] == ["base", "field"]


def test_exported_stage_weights_bring_their_own_training_record(tmp_path, dataset):
    """`ripeye train --skip-train --weights bench/results/v4/stageE-640/model.pt` on a machine without the stage's
    work dir: the metadata.json beside the weights says what they trained on and with which augmentations."""
    stage = REPO / "bench" / "results" / "v4" / "stageE-640"
    recorded = json.loads((stage / "metadata.json").read_text())["training"]
    args = Namespace(work=str(tmp_path), name="r", data=[str(dataset)], class_map=None,
                     weights=str(stage / "model.pt"))
    assert train.training_sources(args) == recorded["sources"]
    assert train.run_augment(args) == recorded["augment"] and recorded["augment"]["lamps"]["p"] == 0.5
    # weights without a record beside them (a run's own weights/ folder): the run's record, as before
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / train.AUGMENT_FILE).write_text(json.dumps({"lamps": None, "closeups": None}))
    args.weights = str(tmp_path / "runs" / "r" / "weights" / "best.pt")
    assert train.run_augment(args) == {"lamps": None, "closeups": None}
    assert train.training_sources(args)[0]["role"] == "base"
