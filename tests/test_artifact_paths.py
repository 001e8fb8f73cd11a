"""An artifact given by path: its model folder found by walking up, lone ONNX/OpenVINO files self-describing,
rejected artifacts refused unless explicitly allowed, and no machine-specific paths in the shipped model files."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon import artifact_info
from daemon.detector import load_detector
from daemon.model import RejectedArtifact, load_bundle
from daemon.runtimes.base import RuntimeOptions
from daemon.train import dataset_fingerprint
from tests.conftest import REPO, RIPEYE

CLASSES = {"ripe", "half_ripe", "unripe"}


@pytest.fixture(scope="module")
def frame_jpeg(tmp_path_factory) -> Path:
    cap = cv2.VideoCapture(str(REPO / "daemon" / "assets" / "sample.mp4"))
    ok, image = cap.read()
    assert ok
    path = tmp_path_factory.mktemp("img") / "frame.jpg"
    cv2.imwrite(str(path), image)
    return path


def detect_json(frame: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RIPEYE, "detect", str(frame), "--model", str(model), "--json", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "CI": "true"})


@pytest.mark.parametrize("artifact,precision", [("openvino/int8/model.xml", "int8"),
                                                ("onnxruntime/int8/model.onnx", "int8"),
                                                ("ncnn/fp16/model.ncnn.param", "fp16")])
def test_detect_by_artifact_path_names_classes_and_precision(frame_jpeg, model_dir, artifact, precision):
    r = detect_json(frame_jpeg, model_dir / artifact)
    assert r.returncode == 0, r.stderr[-800:]
    out = json.loads(r.stdout)
    assert out["precision"] == precision
    assert out["detections"] and {d["class"] for d in out["detections"]} <= CLASSES


@pytest.mark.parametrize("files,precision", [(["openvino/int8/model.xml", "openvino/int8/model.bin"], "int8"),
                                             (["onnxruntime/int8/model.onnx"], "int8")])
def test_lone_artifact_describes_itself(tmp_path, frame_jpeg, model_dir, files, precision):
    for f in files:
        shutil.copy(model_dir / f, tmp_path / Path(f).name)
    bundle = load_bundle(tmp_path / Path(files[0]).name)
    source = json.loads((model_dir / "manifest.json").read_text())["source_onnx"]["sha256"]
    assert bundle.class_names == ["ripe", "half_ripe", "unripe"] and bundle.input_size == (640, 640)
    assert bundle.version == source[:12] and bundle.artifacts[0].precision == precision
    det = load_detector(tmp_path / Path(files[0]).name, options=RuntimeOptions(threads=1))
    dets = det.detect(cv2.imread(str(frame_jpeg)))
    assert dets and {d.class_name for d in dets} <= CLASSES


def _copy_with_rejected_entry(model_dir: Path, dest: Path) -> Path:
    for f in ("metadata.json", "onnxruntime/int8/model.onnx"):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / f, dest / f)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["runtime"] == "onnxruntime":
            entry.update(accepted=False, note="rejected: every float scope dropped mAP50-95 by more than 1.0 points")
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest / "onnxruntime" / "int8" / "model.onnx"


def test_rejected_artifact_by_path_is_refused_unless_allowed(tmp_path, frame_jpeg, model_dir):
    artifact = _copy_with_rejected_entry(model_dir, tmp_path)
    with pytest.raises(RejectedArtifact, match="every float scope dropped"):
        load_bundle(artifact)
    r = detect_json(frame_jpeg, artifact)
    assert r.returncode == 2 and "rejected" in r.stderr and "--allow-rejected" in r.stderr
    r = detect_json(frame_jpeg, artifact, "--allow-rejected", "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr[-800:]
    assert "REJECTED ARTIFACT" in r.stderr and json.loads(r.stdout)["precision"] == "int8"


@pytest.mark.parametrize("artifact", ["openvino/int8/model.xml", "onnxruntime/int8/model.onnx"])
def test_stamping_changes_metadata_not_outputs(tmp_path, frame_jpeg, model_dir, artifact):
    from daemon import runtimes, vision

    src = model_dir / artifact
    for f in (src, src.with_suffix(".bin")):
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    copy = tmp_path / src.name
    info = {"name": "x", "class_names": ["a", "b", "c"], "input_size": [640, 640], "precision": "int8"}
    artifact_info.stamp(copy, info)
    assert artifact_info.read(copy)["class_names"] == ["a", "b", "c"]
    tensor = vision.preprocess(cv2.imread(str(frame_jpeg)), (640, 640))[0]
    backend = "openvino" if src.suffix == ".xml" else "onnxruntime"
    before = runtimes.get(backend)(src, RuntimeOptions(threads=1), "int8").infer(tensor)
    after = runtimes.get(backend)(copy, RuntimeOptions(threads=1), "int8").infer(tensor)
    assert np.array_equal(before, after)


def test_shipped_model_files_hold_no_absolute_paths_and_hashes_match(model_dir):
    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    for name in ("metadata.json", "manifest.json"):
        data = json.loads((model_dir / name).read_text())
        assert not [s for s in strings(data) if s.startswith(("/", "~"))], name
    manifest = json.loads((model_dir / "manifest.json").read_text())
    from daemon.model import file_hash

    for entry in manifest["artifacts"]:
        if "sha256" in entry:
            assert file_hash(model_dir / entry["files"][0], 64) == entry["sha256"], entry["files"][0]
            assert sum((model_dir / f).stat().st_size for f in entry["files"]) == entry["size_bytes"]


def test_dataset_fingerprint_is_the_same_wherever_the_data_lives(tmp_path):
    a = tmp_path / "one" / "tomatoes"
    (a / "annotations").mkdir(parents=True)
    (a / "annotations" / "train.json").write_text('{"images": []}')
    (a / "x.jpg").write_bytes(b"\xff\xd8jpeg")
    b = tmp_path / "elsewhere" / "deeper" / "tomatoes"
    shutil.copytree(a, b)
    assert dataset_fingerprint(a) == dataset_fingerprint(b) and dataset_fingerprint(a)["name"] == "tomatoes"
    (b / "x.jpg").write_bytes(b"\xff\xd8other")
    assert dataset_fingerprint(a)["sha256"] != dataset_fingerprint(b)["sha256"]
