"""eval (pycocotools on known answers), optimize (artifacts, manifest, accuracy gate), bench and detect --json."""

import json
import subprocess
import sys
from argparse import Namespace

import pytest

from daemon import optimize
from daemon.evaluate import coco_metrics, detections_to_coco
from tests.conftest import REPO, RIPEYE

CLASS_MAP = {"b_fully_ripened": "ripe", "b_half_ripened": "half_ripe", "b_green": "unripe"}


def _coco(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "b_fully_ripened"}, {"id": 2, "name": "b_green"},
                       {"id": 3, "name": "b_half_ripened"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0},
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    return path, coco


def _rec(image, *dets):
    return {"image": image, "detections": [{"class": c, "confidence": s, "box": b} for c, s, b in dets]}


def test_perfect_detections_score_one(tmp_path):
    path, coco = _coco(tmp_path)
    recs = [_rec("x/a.jpg", ("ripe", 0.9, [10, 10, 40, 40]), ("unripe", 0.8, [50, 50, 70, 70])),
            _rec("b.jpg", ("half_ripe", 0.7, [5, 5, 45, 45]))]
    m = coco_metrics(path, detections_to_coco(recs, coco, CLASS_MAP), CLASS_MAP)
    assert m["mAP50-95"] == pytest.approx(1.0) and m["mAP50"] == pytest.approx(1.0)
    assert set(m["per_class"]) == {"ripe", "unripe", "half_ripe"}


def test_wrong_class_and_shifted_box_lower_the_score(tmp_path):
    path, coco = _coco(tmp_path)
    recs = [_rec("a.jpg", ("half_ripe", 0.9, [10, 10, 40, 40]), ("unripe", 0.8, [54, 54, 74, 74])),
            _rec("b.jpg", ("half_ripe", 0.7, [5, 5, 45, 45]))]
    m = coco_metrics(path, detections_to_coco(recs, coco, CLASS_MAP), CLASS_MAP)
    assert m["per_class"]["ripe"]["AP50"] == 0.0  # its only detection has the wrong class
    assert m["per_class"]["unripe"]["AP50"] == 0.0  # shifted 4 px: IoU 256/544 = 0.47 < 0.5
    assert m["per_class"]["unripe"]["AP50-95"] == 0.0
    # the mislabelled ripe box is a higher-scored false half_ripe: precision 1/2 at full recall
    assert m["per_class"]["half_ripe"]["AP50-95"] == pytest.approx(0.5)


def test_float_scope_patterns_select_the_decode_head():
    decode, head = (p for _, p in optimize.FLOAT_SCOPES)
    import re

    assert re.fullmatch(decode, "/model.23/dfl/conv/Conv") and re.fullmatch(decode, "/model.23/Concat_3")
    assert not re.fullmatch(decode, "/model.23/cv2.0/cv2.0.0/conv/Conv")
    assert re.fullmatch(head, "/model.23/cv3.1/cv3.1.2/Conv")
    assert not re.fullmatch(head, "/model.22/m.0/cv1/conv/Conv")


def test_gate_widens_the_float_scope_then_rejects(tmp_path):
    built = []

    def build(scope):
        built.append(scope)
        return optimize.Step("openvino", "int8", ["x.xml"])

    drops = iter([0.40, 0.38])  # mAP50-95 of the two attempts against a parent of 0.42: 2 and 4 points, too much
    step = optimize.gated_int8("openvino", build, {"mAP50-95": 0.42},
                               lambda *a: {"mAP50-95": next(drops), "mAP50": 0, "per_class": {}}, tmp_path, 1.0)
    assert len(built) == 2 and step.accepted is False and "rejected" in step.note
    assert [a["float_scope"] for a in step.attempts] == ["decode", "head"]

    drops = iter([0.40, 0.417])
    step = optimize.gated_int8("openvino", build, {"mAP50-95": 0.42},
                               lambda *a: {"mAP50-95": next(drops), "mAP50": 0, "per_class": {}}, tmp_path, 1.0)
    assert step.accepted and step.attempts[-1]["float_scope"] == "head" and step.attempts[-1]["drop_points"] == 0.3

    # a drop of exactly the limit passes (in floats 0.6119 - 0.6069 is a hair over 0.005)
    drops = iter([0.6047, 0.6069])
    step = optimize.gated_int8("openvino", build, {"mAP50-95": 0.6119},
                               lambda *a: {"mAP50-95": next(drops), "mAP50": 0, "per_class": {}}, tmp_path, 0.5)
    assert step.accepted and step.attempts[-1]["drop_points"] == 0.5


def test_optimize_openvino_and_ncnn_on_the_shipped_model(tmp_path, model_dir, dataset):
    out = tmp_path / "m"
    args = Namespace(model=str(model_dir / "model.onnx"), calib=str(model_dir / "calibration.txt"),
                     calib_root=str(dataset), calib_count=8, targets="openvino,ncnn", out=str(out), data=None,
                     images=None, class_map=None, max_drop=1.0, eval_limit=None)
    manifest = optimize.optimize(args)
    arts = {(a["runtime"], a["precision"]): a for a in manifest["artifacts"]}
    assert set(arts) == {("openvino", "fp32"), ("openvino", "int8"), ("ncnn", "fp32"), ("ncnn", "fp16")}
    assert all(not a.get("failed") for a in arts.values()), arts
    assert arts[("openvino", "int8")]["size_bytes"] < 0.45 * arts[("openvino", "fp32")]["size_bytes"]
    assert manifest["calibration"]["images"] == 8 and len(manifest["source_onnx"]["sha256"]) == 64
    assert "accepted without accuracy check" in arts[("openvino", "int8")]["attempts"][0]["result"]
    from daemon.detector import load_detector

    for backend, precision in (("openvino", "int8"), ("ncnn", "fp16")):
        det = load_detector(out, backend, precision)
        assert det.backend == backend and det.runtime.precision == precision
    from daemon import artifact_info
    from daemon.model import file_hash

    for key in (("openvino", "fp32"), ("openvino", "int8")):  # stamped, and the manifest hashes the stamped file
        info = artifact_info.read(out / arts[key]["files"][0])
        assert info["class_names"] == ["ripe", "half_ripe", "unripe"] and info["precision"] == key[1]
        assert info["source_onnx_sha256"] == manifest["source_onnx"]["sha256"]
        assert file_hash(out / arts[key]["files"][0], 64) == arts[key]["sha256"]


def test_rejected_artifact_is_never_loaded(tmp_path, model_dir):
    import shutil

    shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.pt"))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["precision"] == "int8":
            a["accepted"] = False
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    from daemon.detector import load_detector

    # imgsz 640: the folder's own manifest, whichever size its metadata recommends
    det = load_detector(tmp_path / "m", "openvino", "auto", imgsz=640)
    assert det.runtime.precision == "fp32"
    with pytest.raises(Exception, match="no int8 artifact"):
        load_detector(tmp_path / "m", "openvino", "int8", imgsz=640)


def test_detect_json_lines(dataset, model_dir):
    images = sorted((dataset / "valid").glob("*.jpg"))[:2]
    r = subprocess.run([*RIPEYE, "detect", "--json", *map(str, images)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, images))
    assert lines[0]["width"] == 640 and any(line["detections"] for line in lines)
    d = next(line for line in lines if line["detections"])["detections"][0]
    assert set(d) >= {"class", "class_id", "confidence", "box"}


def test_detect_unreadable_image_is_named(tmp_path, model_dir):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    r = subprocess.run([*RIPEYE, "detect", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "broken.jpg" in r.stderr


def test_bench_smoke(tmp_path, model_dir):
    r = subprocess.run([*RIPEYE, "bench", str(model_dir), "--reps", "3", "--warmup", "1", "--n-images", "2",
                        "--inflight", "2", "--only", "openvino fp32,onnx runtime fp32", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["label"]: row for row in report["results"]}
    assert rows["OpenVINO FP32"]["median_ms"] > 0 and rows["OpenVINO FP32"]["inflight_fps"] > 0
    assert rows["ONNX Runtime FP32"]["peak_rss_mb"] > 50
    assert (tmp_path / "bench.md").read_text().count("|") > 20 and (tmp_path / "bench.png").stat().st_size > 1000


def test_inflight_bench_smoke(tmp_path, model_dir):
    """bench/inflight.py (the README's in-flight figure) runs and its summary agrees with its own per-round data."""
    r = subprocess.run([sys.executable, "bench/inflight.py", "--model", str(model_dir), "--rounds", "2", "--frames",
                        "6", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    rep = json.loads((tmp_path / "inflight.json").read_text())
    singles = {k: v for k, v in rep["median_fps"].items() if k.startswith("1 in flight")}
    multi = next(k for k in rep["median_fps"] if k.startswith("2 in flight"))
    assert rep["best_single_stream"] == max(singles, key=singles.get)
    best = singles[rep["best_single_stream"]]
    assert rep["inflight_vs_best_single"] == pytest.approx(rep["median_fps"][multi] / best, abs=0.01)
    assert all(len(v) == 2 for v in rep["fps_per_round"].values())
    assert "in flight vs the best single stream" in (tmp_path / "inflight.md").read_text()
