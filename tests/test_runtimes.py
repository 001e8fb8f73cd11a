"""Runtimes on the real shipped model: every installed backend loads it and they agree; bad files fail clearly."""

import cv2  # noqa: E402,I001
import numpy as np
import pytest

from daemon import runtimes, vision
from daemon.detector import NoUsableBackend, load_detector
from daemon.model import load_bundle
from daemon.runtimes import base
from daemon.runtimes.base import ArtifactError, RuntimeOptions
from tests.conftest import DATASET


def _frame():
    images = sorted((DATASET / "valid").glob("*.jpg"))
    if images:
        return cv2.imread(str(images[0]))
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tensor(model_dir):
    t, _ = vision.preprocess(_frame(), load_bundle(model_dir).input_size)
    return t


def test_openvino_and_onnxruntime_fp32_agree(model_dir, tensor):
    onnx = model_dir / "model.onnx"
    ov_out = runtimes.get("openvino")(onnx, RuntimeOptions(), "fp32").infer(tensor)
    ort_out = runtimes.get("onnxruntime")(onnx, RuntimeOptions(), "fp32").infer(tensor)
    assert ov_out.shape == ort_out.shape == (1, 7, 8400)
    assert np.abs(ov_out - ort_out).max() < 0.05  # FP32 vs FP32; differences are kernel rounding only


def test_openvino_several_requests_in_flight_match_single(model_dir, tensor):
    rt = runtimes.get("openvino")(model_dir / "model.onnx", RuntimeOptions(inflight=2), "fp32")
    outs = rt.infer_many([tensor, tensor])
    single = rt.infer(tensor)
    assert all(np.allclose(o, single, atol=1e-3) for o in outs)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_corrupt_file_error_names_it(tmp_path, backend):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ArtifactError, match=str(bad)):
        runtimes.get(backend)(bad, RuntimeOptions(), "fp32")


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(ArtifactError, match="not found: .*nothing.onnx"):
        runtimes.get("onnxruntime")(tmp_path / "nothing.onnx", RuntimeOptions(), "fp32")


def test_fallback_when_requested_backend_has_no_artifact(model_dir):
    det = load_detector(model_dir / "model.onnx", backend="ncnn")
    assert det.backend != "ncnn"
    assert any(a.startswith("ncnn") for a in det.attempts)


def test_all_backends_failing_names_the_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(NoUsableBackend, match="broken.onnx"):
        load_detector(bad)


def test_registry_tolerates_a_missing_runtime_package(monkeypatch):
    monkeypatch.setitem(base._MODULES, "imaginary", "daemon.runtimes.no_such_module")
    base._cache.pop("imaginary", None)
    avail = runtimes.available()
    assert "No module named" in avail["imaginary"]
    assert avail["openvino"] == "ok" and avail["onnxruntime"] == "ok"


def test_detector_finds_tomatoes_in_a_real_photo(model_dir, dataset):
    det = load_detector(model_dir)
    found = det.detect(_frame(), conf=0.25)
    assert len(found) >= 3 and all(d.class_name in ("ripe", "half_ripe", "unripe") for d in found)


# (box tolerance in pixels, class-score tolerance): INT8 only approximately (its accuracy gate is the real measure;
# ONNX Runtime INT8 of stage 4 at 640, with only the decode float, differs by up to 0.162 in a confident score)
@pytest.mark.parametrize("backend,precision,tolerance,score_tolerance", [
    ("ncnn", "fp32", 0.05, 0.15), ("ncnn", "fp16", 1.0, 0.15), ("openvino", "int8", 8.0, 0.2),
    ("onnxruntime", "int8", 8.0, 0.2)])
def test_shipped_artifacts_agree_with_the_onnx(model_dir, tensor, backend, precision, tolerance, score_tolerance):
    """Every derived artifact loads and computes the same head output as the ONNX source (INT8 approximately)."""
    bundle = load_bundle(model_dir)
    art = next(a for a in bundle.artifacts if a.kind == backend and a.precision == precision)
    ref = runtimes.get("onnxruntime")(model_dir / "model.onnx", RuntimeOptions(), "fp32").infer(tensor)
    out = runtimes.get(backend)(art.path, RuntimeOptions(), precision).infer(tensor)
    assert out.shape == ref.shape
    # boxes are in pixels (0..640), scores in 0..1: compare the confident part of the head
    confident = ref[0, 4:].max(axis=0) > 0.5
    assert confident.sum() > 0
    assert np.abs(out[0, :4, confident] - ref[0, :4, confident]).max() < tolerance
    assert np.abs(out[0, 4:, confident] - ref[0, 4:, confident]).max() < score_tolerance


def test_openvino_load_error_keeps_the_reason(tmp_path):
    """OpenVINO puts source locations first ("Exception from src/...cpp:84:"); the reason must survive."""
    xml = tmp_path / "model.xml"
    # a port without its mandatory precision attribute: read_model rejects it with a specific reason
    xml.write_text('<?xml version="1.0"?><net name="x" version="11"><layers><layer id="0" name="in" type="Parameter" '
                   'version="opset1"><data shape="1,3,8,8" element_type="f32"/><output><port id="0"><dim>1</dim>'
                   '<dim>3</dim><dim>8</dim><dim>8</dim></port></output></layer></layers><edges/></net>')
    xml.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError) as info:
        runtimes.get("openvino")(xml, RuntimeOptions(), "fp32")
    message = str(info.value)
    assert str(xml) in message and "missing mandatory attribute: precision" in message, message
    assert "Exception from" not in message
