"""OpenVINO runtime: IR (.xml/.bin) or ONNX on CPU/GPU/NPU, with a pool of infer requests for several in flight."""

from __future__ import annotations

import os
import queue
import re

import numpy as np

from daemon.runtimes.base import ArtifactError, Runtime, RuntimeOptions, require_file

os.environ.setdefault("CI", "true")  # OpenVINO's telemetry stays off on devices without network
import openvino as ov  # noqa: E402

LOCATION_LINE = re.compile(r"(Exception from|Check '.*' failed at) \S+:\d+:")


def error_reason(exc: Exception) -> str:
    """OpenVINO's message without its 'Exception from src/...:84:' / "Check 'x' failed at ...:" location lines, which
    come first and say nothing about the cause."""
    lines = [line.strip() for line in str(exc).splitlines()]
    reason = [line for line in lines if line and not LOCATION_LINE.fullmatch(line)]
    return " ".join(reason) or str(exc).strip()


def check_available() -> None:
    ov.Core()


def compile_properties(options: RuntimeOptions, precision: str) -> dict:
    """Properties for core.compile_model; pure so they can be tested without a device."""
    props: dict = {}
    if options.threads:
        props["INFERENCE_NUM_THREADS"] = int(options.threads)
    if options.inflight > 1:
        props["PERFORMANCE_HINT"] = "THROUGHPUT"
        props["NUM_STREAMS"] = str(options.inflight)
    else:
        props["PERFORMANCE_HINT"] = "LATENCY"
    if options.device.upper().startswith("CPU") and precision in ("fp32", "int8"):
        # Without this hint OpenVINO runs float layers as bf16 on CPUs that have it: FP32 would not be FP32.
        props["INFERENCE_PRECISION_HINT"] = "f32"
    props.update(options.extra.get("openvino", {}))
    return props


class OpenVinoRuntime(Runtime):
    name = "openvino"
    formats = ("openvino", "onnx")

    def __init__(self, artifact, options: RuntimeOptions, precision: str):
        super().__init__(artifact, options, precision)
        require_file(self.artifact)
        if self.artifact.suffix == ".xml":
            require_file(self.artifact.with_suffix(".bin"), "OpenVINO weights file")
        core = ov.Core()
        try:
            model = core.read_model(str(self.artifact))
            self.compiled = core.compile_model(model, options.device, compile_properties(options, precision))
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot load {self.artifact}: {error_reason(exc)}") from None
        self.device = options.device
        self._requests: queue.Queue = queue.Queue()
        for _ in range(max(options.inflight, 1)):
            self._requests.put(self.compiled.create_infer_request())

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        # One request per caller at a time: several inference threads may call this concurrently.
        request = self._requests.get()
        try:
            request.infer({0: tensor})
            return request.get_output_tensor(0).data.copy()
        finally:
            self._requests.put(request)

    def infer_many(self, tensors):
        if len(tensors) <= 1:
            return [self.infer(t) for t in tensors]
        results: list = [None] * len(tensors)
        queue_ = ov.AsyncInferQueue(self.compiled, len(tensors))

        def done(request, index):
            results[index] = request.get_output_tensor(0).data.copy()

        queue_.set_callback(done)
        for i, t in enumerate(tensors):
            queue_.start_async({0: t}, i)
        queue_.wait_all()
        return results


RUNTIME = OpenVinoRuntime
