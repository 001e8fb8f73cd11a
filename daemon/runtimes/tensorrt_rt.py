"""TensorRT through onnxruntime's TensorRT provider (Jetson, NVIDIA GPUs), falling back to CUDA then CPU."""

from __future__ import annotations

import logging
from pathlib import Path

from daemon.durable import set_aside
from daemon.runtimes.base import ArtifactError, RuntimeOptions, RuntimeUnavailable
from daemon.runtimes.onnxruntime_rt import OnnxRuntime, ort

log = logging.getLogger(__name__)


def check_available() -> None:
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise RuntimeUnavailable("onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu)")


def tensorrt_provider_options(options: RuntimeOptions, precision: str, model_hash: str = "") -> dict:
    """Options for TensorrtExecutionProvider; engines and timing caches live in one cache dir per model hash.

    A QDQ (INT8) ONNX carries its own scales, so int8 needs no calibration table; TensorRT rebuilds the engine when
    the model, ORT, TensorRT or GPU change, keyed by the cache path below.
    """
    cache = Path(options.cache_dir).expanduser() / "tensorrt" / (model_hash[:16] or "default")
    return {
        "device_id": 0,
        "trt_fp16_enable": bool(options.tensorrt_fp16 or precision == "fp16"),
        "trt_int8_enable": bool(options.tensorrt_int8 or precision == "int8"),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_builder_optimization_level": 3,
        "trt_max_workspace_size": 1 << 30,
    }


def provider_chain(options: RuntimeOptions, precision: str, model_hash: str = "") -> list:
    """TensorRT → CUDA → CPU, keeping only providers this onnxruntime build has."""
    have = set(ort.get_available_providers())
    chain = []
    if "TensorrtExecutionProvider" in have:
        Path(tensorrt_provider_options(options, precision, model_hash)["trt_engine_cache_path"]).mkdir(
            parents=True, exist_ok=True)
        chain.append(("TensorrtExecutionProvider", tensorrt_provider_options(options, precision, model_hash)))
    if "CUDAExecutionProvider" in have:
        chain.append(("CUDAExecutionProvider", {"device_id": 0}))
    chain.append("CPUExecutionProvider")
    return chain


class TensorRtRuntime(OnnxRuntime):
    name = "tensorrt"
    formats = ("onnxruntime", "onnx")

    def __init__(self, artifact, options: RuntimeOptions, precision: str):
        try:
            super().__init__(artifact, options, precision)
        except ArtifactError as exc:
            # An engine or timing cache torn by a power cut fails deserialization on every start: set the cache
            # aside (kept for a post-mortem, reported through options.extra["state_problems"]) and rebuild once.
            cache = Path(tensorrt_provider_options(options, precision, options.extra.get("model_hash", ""))[
                "trt_engine_cache_path"])
            if "TensorrtExecutionProvider" not in ort.get_available_providers() or not cache.is_dir() \
                    or not any(cache.iterdir()):
                raise
            moved = set_aside(cache)
            message = f"TensorRT engine cache {cache} unusable ({exc}), moved to {moved}; rebuilding the engine"
            log.error("%s", message)
            options.extra.setdefault("state_problems", []).append(message)
            super().__init__(artifact, options, precision)

    def providers(self) -> list:
        return provider_chain(self.options, self.precision, self.options.extra.get("model_hash", ""))


RUNTIME = TensorRtRuntime
