"""Input-size variants of the shipped model: selection by size, clear errors, detect/eval/bench/optimize --imgsz."""

import hashlib
import json
import shutil
import subprocess
from argparse import Namespace

import pytest

from daemon import optimize
from daemon.detector import load_detector
from daemon.model import SizeNotFound, default_size, load_bundle, select_size, size_variants
from tests.conftest import REPO, RIPEYE, start_daemon, write_config

SHIPPED_SIZES = [320, 416, 640]  # 512 dropped in session 24: v4 at 512 gave nothing over 416


def test_shipped_model_offers_each_size(model_dir):
    variants = size_variants(model_dir)
    assert list(variants) == SHIPPED_SIZES
    assert variants[640] == model_dir
    # the default-size rule's answer for the shipped model (bench/board_table.py --set-default; model card)
    assert default_size(model_dir) == 640  # 416 was, until stage 4 made 640 2.35 points better (session 7)
    assert load_bundle(variants[416]).metadata["training"]["settings"]["imgsz"] == 416  # trained at its size
    small = load_bundle(variants[320]).metadata["training"]
    assert small["settings"]["imgsz"] == 320  # v4 stage G: trained at 320 from the shipped 416's weights
    assert small["init"]["sha256"] == hashlib.sha256((variants[416] / "model.pt").read_bytes()).hexdigest()
    for size in (320, 416):
        bundle = load_bundle(variants[size])
        assert bundle.input_size == (size, size)
        assert bundle.class_names == ["ripe", "half_ripe", "unripe"]
        assert bundle.version != load_bundle(model_dir).version  # another ONNX, another version
        kinds = {(a.kind, a.precision) for a in bundle.artifacts if a.accepted}
        assert {("onnx", "fp32"), ("openvino", "fp32"), ("ncnn", "fp16")} <= kinds


def test_select_size_names_the_sizes_present(model_dir, tmp_path):
    assert select_size(model_dir, 0) == model_dir  # the size the shipped folder recommends: 640, the folder itself
    assert select_size(model_dir, 640) == model_dir
    assert select_size(model_dir, 416) == model_dir / "sizes" / "416"
    assert select_size(model_dir, 320) == model_dir / "sizes" / "320"
    with pytest.raises(SizeNotFound, match="sizes present: 320, 416, 640"):
        select_size(model_dir, 384)
    with pytest.raises(ValueError, match="single artifact"):
        select_size(model_dir / "model.onnx", 320)


def test_imgsz_0_follows_the_size_the_folder_recommends(model_dir, tmp_path):
    folder = tmp_path / "m"
    (folder / "sizes" / "320").mkdir(parents=True)
    shutil.copy(model_dir / "model.onnx", folder)
    shutil.copy(model_dir / "sizes" / "320" / "model.onnx", folder / "sizes" / "320")
    shutil.copy(model_dir / "sizes" / "320" / "metadata.json", folder / "sizes" / "320")
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta.pop("default_input_size", None)
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert default_size(folder) is None and select_size(folder, 0) == folder  # none recommended: its own size
    for recommended, expected in ((320, folder / "sizes" / "320"), (640, folder), (384, folder), ("416", folder)):
        (folder / "metadata.json").write_text(json.dumps({**meta, "default_input_size": recommended}))
        assert select_size(folder, 0) == expected, recommended  # a size not present (or not a number) is ignored
    (folder / "metadata.json").write_text(json.dumps({**meta, "default_input_size": 320}))
    assert select_size(folder, 640) == folder  # asked for explicitly, a size wins over the recommendation
    assert load_detector(folder, "onnxruntime", "fp32").input_size == (320, 320)
    assert select_size(folder / "model.onnx", 0) == folder / "model.onnx"  # an artifact file is loaded as given


def test_board_table_writes_the_rules_answer_into_the_model_folder(tmp_path):
    board_table = _board_table()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps({"name": "m", "input_size": [640, 640]}))
    report = {"machine": "test", "created_at": "now", "data_name": "valid.json", "n_eval": 67, "imgsz": [320, 416, 640],
              "results": [_row("OpenVINO INT8", 320, 10, 0.70), _row("OpenVINO INT8", 416, 15, 0.797),
                          _row("OpenVINO INT8", 640, 30, 0.805), _row("NCNN FP16", 320, 20, 0.79),
                          _row("NCNN FP16", 640, 80, 0.80)]}
    assert board_table.set_default(report, folder) == 416  # NCNN FP16 says 320, OpenVINO INT8 416: accuracy first
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["default_input_size"] == 416 and meta["name"] == "m"
    assert meta["default_input_size_rule"]["per_format"] == {"OpenVINO INT8": 416, "NCNN FP16": 320}
    assert default_size(folder) == 416
    # a fixed size is written with the reason, the rule's answer kept beside it; no reason, no override
    with pytest.raises(SystemExit, match="--why"):
        board_table.set_default(report, folder, fixed=640)
    assert board_table.set_default(report, folder, fixed=640, why="sizes trained on these photos") == 640
    rule = json.loads((folder / "metadata.json").read_text())["default_input_size_rule"]
    assert rule["not_applied"] == {"fixed": 640, "why": "sizes trained on these photos"}
    assert rule["per_format"] == {"OpenVINO INT8": 416, "NCNN FP16": 320} and default_size(folder) == 640


def test_parse_sizes_rejects_non_stride_multiples():
    assert optimize.parse_sizes("640, 320,416,320") == [320, 416, 640]
    with pytest.raises(ValueError, match="multiples of 32"):
        optimize.parse_sizes("320,400")
    with pytest.raises(ValueError, match="multiples of 32"):
        optimize.parse_sizes("abc")


def test_detect_with_imgsz_uses_the_variant(dataset, model_dir):
    image = sorted((dataset / "valid").glob("*.jpg"))[0]
    out = {}
    for size in (320, 640):
        r = subprocess.run([*RIPEYE, "detect", "--json", "--imgsz", str(size), "--backend", "onnxruntime",
                            "--precision", "fp32", str(image)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out[size] = json.loads(r.stdout)["detections"]
    assert out[320] and out[640]
    assert out[320] != out[640]  # a different network input gives (slightly) different boxes
    r = subprocess.run([*RIPEYE, "detect", "--imgsz", "384", str(image)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "384x384" in r.stderr and "320, 416, 640" in r.stderr


def test_eval_with_missing_size_is_a_clear_error(dataset, model_dir):
    r = subprocess.run([*RIPEYE, "eval", str(model_dir), "--imgsz", "999", "--data",
                        str(dataset / "annotations" / "valid.json")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "999x999" in r.stderr and "sizes present" in r.stderr


def test_optimize_imgsz_without_weights_or_onnx_says_what_is_missing(model_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(model_dir / "metadata.json", folder)
    shutil.copy(model_dir / "model.onnx", folder)
    r = subprocess.run([*RIPEYE, "optimize", str(folder), "--imgsz", "320"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "model.pt" in r.stderr and "sizes/320/model.onnx" in r.stderr
    args = Namespace(model=str(folder), out=str(tmp_path / "o"), imgsz="320")
    with pytest.raises(ValueError, match="drop --out"):
        optimize.optimize_sizes(args)


def test_optimize_imgsz_derives_artifacts_into_the_size_folder(model_dir, tmp_path):
    """With an ONNX of that size in place (as `--imgsz` leaves after exporting it), the per-size run derives the
    runtime artifacts and the manifest there (NCNN only here, to stay quick; the gate is tested elsewhere)."""
    folder = tmp_path / "m"
    (folder / "sizes" / "320").mkdir(parents=True)
    shutil.copy(model_dir / "metadata.json", folder)
    shutil.copy(model_dir / "sizes" / "320" / "model.onnx", folder / "sizes" / "320")
    args = Namespace(model=str(folder), out=None, imgsz="320", calib=None, calib_root=None, calib_count=4,
                     targets="ncnn", data=None, images=None, class_map=None, max_drop=1.0, eval_limit=None)
    manifests = optimize.optimize_sizes(args)
    assert list(manifests) == [320]
    meta = json.loads((folder / "sizes" / "320" / "metadata.json").read_text())
    assert meta["input_size"] == [320, 320] and meta["variant_of"]["input_size"] == [640, 640]
    bundle = load_bundle(select_size(folder, 320))
    assert bundle.input_size == (320, 320)
    assert {(a.kind, a.precision) for a in bundle.artifacts if a.kind == "ncnn"} == {("ncnn", "fp32"), ("ncnn", "fp16")}
    # re-deriving another target keeps the entries already there for the same source ONNX
    optimize.optimize(Namespace(**{**vars(args), "model": str(folder / "sizes" / "320"), "targets": "tensorrt"}))
    runtimes = [e["runtime"] for e in json.loads((folder / "sizes" / "320" / "manifest.json").read_text())["artifacts"]]
    assert runtimes == ["ncnn", "ncnn", "tensorrt"]


def test_a_size_folder_trained_at_its_size_keeps_its_own_training_record(model_dir, tmp_path):
    """`ripeye train --imgsz 416 --export-imgsz 416 --out <model>/sizes/416` puts weights trained at that size there;
    optimize --imgsz derives from its ONNX and keeps its metadata (training record, own model.pt hash) instead of
    marking it an export of the main folder's weights."""
    folder = tmp_path / "m"
    size_dir = folder / "sizes" / "320"
    size_dir.mkdir(parents=True)
    shutil.copy(model_dir / "metadata.json", folder)
    shutil.copy(model_dir / "sizes" / "320" / "model.onnx", size_dir)
    shutil.copy(model_dir / "model.pt", size_dir)  # stands in for weights trained at 320 (only hashed here)
    own = json.loads((model_dir / "metadata.json").read_text())
    own.update({"input_size": [320, 320], "training": {**own["training"], "marker": "trained at 320"}})
    (size_dir / "metadata.json").write_text(json.dumps(own))
    (folder / "calibration.txt").write_text("train/main-folder.jpg\n")
    (size_dir / "calibration.txt").write_text("train/its-own.jpg\n")  # what its own training run listed
    assert optimize.trained_at_own_size(size_dir)
    args = Namespace(model=str(folder), out=None, imgsz="320", calib=None, calib_root=None, calib_count=4,
                     targets="tensorrt", data=None, images=None, class_map=None, max_drop=1.0, eval_limit=None)
    optimize.optimize_sizes(args)
    meta = json.loads((size_dir / "metadata.json").read_text())
    assert "variant_of" not in meta and meta["training"]["marker"] == "trained at 320"
    assert meta["sources"]["model.pt"] == optimize.sha256_file(size_dir / "model.pt")
    assert meta["sources"]["model.onnx"] == optimize.sha256_file(size_dir / "model.onnx")
    assert (size_dir / "calibration.txt").read_text() == "train/its-own.jpg\n"
    # without its own weights the same folder is an export of the main folder's
    (size_dir / "model.pt").unlink()
    assert not optimize.trained_at_own_size(size_dir)


def test_bench_rows_per_size(tmp_path, model_dir):
    r = subprocess.run([*RIPEYE, "bench", str(model_dir), "--imgsz", "320,640", "--reps", "3", "--warmup", "1",
                        "--n-images", "2", "--inflight", "1", "--only", "openvino fp32", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["imgsz"] == [320, 640]
    rows = {row["imgsz"]: row for row in report["results"]}
    assert set(rows) == {320, 640} and all(row["median_ms"] > 0 for row in rows.values())
    md = (tmp_path / "bench.md").read_text()
    assert "| OpenVINO FP32 | 320 |" in md and "| OpenVINO FP32 | 640 |" in md and "vs 640" in md


def test_daemon_reports_a_missing_size_on_errors(tmp_path, broker, subscriber_factory, model_dir):
    sub = subscriber_factory(broker.port)
    cfg = write_config(tmp_path / "c.yaml", {
        "device_id": "sz", "source": {"uri": "sample"}, "model": {"path": str(model_dir), "imgsz": 384},
        "mqtt": {"host": "127.0.0.1", "port": broker.port}, "stats": {"interval_s": 1}})
    proc = start_daemon(cfg)
    try:
        err = sub.wait_for("errors", lambda p: b"384x384" in p, timeout=60)
        assert json.loads(err)["key"] == "model.imgsz"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _row(label, size, ms, m50=None):
    row = {"label": label, "imgsz": size, "median_ms": ms}
    if m50 is not None:
        row.update({"mAP50": m50, "mAP50-95": m50 - 0.2, "per_class": {"ripe": {"AP50": m50 - 0.05}}})
    return row


def _board_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("board_table", REPO / "bench" / "board_table.py")
    board_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(board_table)
    return board_table


def test_board_table_projections_and_default_size_rule():
    """bench/board_table.py: Pi 5 projected from the published 640 figure by the ratio measured here; the default
    size is the smallest whose mAP50 is within 1 point of the best."""
    board_table = _board_table()
    report = {"machine": "test", "created_at": "now", "data_name": "valid.json", "n_eval": 67, "imgsz": [320, 416, 640],
              "results": [_row("OpenVINO FP32", 320, 10, 0.70), _row("OpenVINO FP32", 416, 15, 0.797),
                          _row("OpenVINO FP32", 640, 30, 0.805), _row("NCNN FP32", 320, 20), _row("NCNN FP32", 640, 80),
                          {"label": "NCNN FP16", "imgsz": 320, "skipped": "no artifact"}]}
    assert board_table.default_size(report, "OpenVINO FP32") == 416  # 0.797 is within 1 point of 0.805; 0.70 is not
    assert board_table.default_size(report, "NCNN FP32") is None  # no accuracy measured for it
    md = board_table.table(report)
    assert "| 320 | 0.5000 | 0.7000 | 0.6500 | – | – | ≈22 | ≈27 | ≥1.2 |" in md  # 88.0 × 20/80, 81.2 × 10/30
    assert "OpenVINO FP32 → 416" in md
