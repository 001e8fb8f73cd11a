"""`ripeye doctor` on the target boards (their /proc, /sys and /etc files from tests/fixtures/hardware; this machine
has no Pi camera or Jetson GPU): the Pi camera stack, GStreamer in OpenCV, Jetson without TensorRT, --strict."""

import argparse

import pytest

from daemon import doctor
from tests.conftest import write_config
from tests.test_hardware import board


def _doctor(tmp_path, capsys, facts, strict=False, **source):
    cfg = write_config(tmp_path / "c.yaml", {"source": source} if source else {})
    code = doctor.main(argparse.Namespace(config=str(cfg), json=False, strict=strict), facts=facts)
    return code, capsys.readouterr().out


def test_pi_without_importable_picamera2_says_why(tmp_path, capsys):
    code, out = _doctor(tmp_path, capsys, board("pi5", runtimes={"ncnn": "ok"}))
    assert "hardware: raspberry-pi" in out
    assert "WARNING: the Pi camera is not usable: picamera2 does not import" in out and "python3-picamera2" in out


def test_gstreamer_source_with_an_opencv_without_gstreamer(tmp_path, capsys):
    if doctor.opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer (pip's headless wheels do not)")
    _, out = _doctor(tmp_path, capsys, board("jetson-orin"), uri="nvarguscamerasrc ! nvvidconv ! appsink")
    assert "WARNING: source.uri is a GStreamer pipeline but the OpenCV in use" in out and "JetPack's OpenCV" in out


def test_jetson_without_tensorrt_provider_says_cpu_and_strict_fails(tmp_path, capsys):
    facts = board("jetson-orin", runtimes={"onnxruntime": "ok", "ncnn": "ok"}, providers=["CPUExecutionProvider"])
    code, out = _doctor(tmp_path, capsys, facts)
    assert "WARNING: inference runs on the CPU: onnxruntime has no TensorRT provider" in out and code == 0
    code, _ = _doctor(tmp_path, capsys, facts, strict=True)
    assert code == 1


def test_jetson_with_tensorrt_provider_has_no_cpu_warning(tmp_path, capsys):
    facts = board("jetson-orin", runtimes={"onnxruntime": "ok"},
                  providers=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    _, out = _doctor(tmp_path, capsys, facts)
    assert "inference runs on the CPU" not in out


def test_doctor_describes_the_model_variant_the_daemon_loads(tmp_path, capsys, model_dir):
    import json

    from daemon.model import default_size

    # the folder's own default (640 since session 7), and another size chosen by model.imgsz
    for model, size in (({"path": str(model_dir)}, default_size(model_dir)),
                        ({"path": str(model_dir), "imgsz": 416}, 416)):
        cfg = write_config(tmp_path / "c.yaml", {"model": model})
        doctor.main(argparse.Namespace(config=str(cfg), json=True, strict=False), facts=board("pi5"))
        report = json.loads(capsys.readouterr().out)
        assert report["model"]["input_size"] == [size, size], report["model"]
