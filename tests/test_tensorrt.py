"""TensorRT provider options, checked without a GPU.

This machine has no NVIDIA GPU, so `ort.get_available_providers` is faked to list the TensorRT and CUDA providers.
What a real Jetson run must confirm: the session actually builds an engine with these options, the engine and
timing cache files appear under the cache dir after the first run, and the second start loads them in seconds.
"""

from pathlib import Path

import pytest

from daemon.runtimes import tensorrt_rt
from daemon.runtimes.base import RuntimeOptions


def test_options_fp16_and_caches_per_model(tmp_path):
    opts = tensorrt_rt.tensorrt_provider_options(RuntimeOptions(cache_dir=tmp_path), "fp32", "abcdef0123456789ff")
    assert opts["trt_fp16_enable"] is True and opts["trt_int8_enable"] is False
    assert opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert Path(opts["trt_engine_cache_path"]) == tmp_path / "tensorrt" / "abcdef0123456789"
    assert opts["trt_timing_cache_path"] == opts["trt_engine_cache_path"]


def test_int8_from_qdq_model():
    opts = tensorrt_rt.tensorrt_provider_options(RuntimeOptions(tensorrt_fp16=False), "int8")
    assert opts["trt_int8_enable"] is True and opts["trt_fp16_enable"] is False


def test_chain_is_tensorrt_then_cuda_then_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(tensorrt_rt.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    chain = tensorrt_rt.provider_chain(RuntimeOptions(cache_dir=tmp_path), "fp32", "h")
    assert [c[0] if isinstance(c, tuple) else c for c in chain] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (tmp_path / "tensorrt" / "h").is_dir()


def test_chain_without_gpu_is_cpu_only(monkeypatch):
    monkeypatch.setattr(tensorrt_rt.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert tensorrt_rt.provider_chain(RuntimeOptions(), "fp32") == ["CPUExecutionProvider"]


def test_torn_engine_cache_is_set_aside_and_rebuilt(monkeypatch, tmp_path, model_dir):
    """Fake TensorRT provider (no GPU here): a session whose engine cache holds a torn engine fails to load, as
    ORT's TensorRT provider does when it cannot deserialize it; the real CPU session is used otherwise."""
    from daemon.runtimes.base import ArtifactError

    real_session = tensorrt_rt.ort.InferenceSession

    def fake_session(path, so, providers):
        trt = dict(p for p in providers if isinstance(p, tuple)).get("TensorrtExecutionProvider")
        if trt and any(f.read_bytes() == b"torn" for f in Path(trt["trt_engine_cache_path"]).glob("*")):
            raise RuntimeError("TensorRT EP could not deserialize engine from cache")
        return real_session(path, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(tensorrt_rt.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(tensorrt_rt.ort, "InferenceSession", fake_session)
    options = RuntimeOptions(cache_dir=tmp_path, extra={"model_hash": "abc"})
    cache = tmp_path / "tensorrt" / "abc"
    cache.mkdir(parents=True)
    (cache / "model.engine").write_bytes(b"torn")
    rt = tensorrt_rt.TensorRtRuntime(model_dir / "model.onnx", options, "fp32")
    assert rt.session is not None
    (moved,) = (tmp_path / "tensorrt").glob("abc.bad-*")
    assert (moved / "model.engine").read_bytes() == b"torn" and "moved to" in options.extra["state_problems"][0]
    (cache / "model.engine").write_bytes(b"torn")  # a model that still fails after the rebuild is not hidden
    monkeypatch.setattr(tensorrt_rt.ort, "InferenceSession", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(ArtifactError):
        tensorrt_rt.TensorRtRuntime(model_dir / "model.onnx", options, "fp32")
