"""TensorRT provider options, checked without a GPU.

This machine has no NVIDIA GPU, so `ort.get_available_providers` is faked to list the TensorRT and CUDA providers.
What a real Jetson run must confirm: the session actually builds an engine with these options, the engine and
timing cache files appear under the cache dir after the first run, and the second start loads them in seconds.
"""

from pathlib import Path

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
