"""ONNX Runtime on the CPU (FP32 or QDQ INT8 models): the fallback that runs everywhere."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort  # noqa: E402,I001

from daemon.runtimes.base import ArtifactError, Runtime, RuntimeOptions, require_file, threads_per_request


def check_available() -> None:
    ort.get_available_providers()


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Always explicit: left at 0, ONNX Runtime counts cores through cpuinfo (/proc/cpuinfo), which the unit's
    # ProcSubset=pid hides, and runs one thread there (1.8x slower per 640 frame on 2 cores; bench/procsubset.py).
    so.intra_op_num_threads = threads_per_request(options)
    so.log_severity_level = 3
    return so


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = ("onnxruntime", "onnx")

    def providers(self) -> list:
        return ["CPUExecutionProvider"]

    def __init__(self, artifact, options: RuntimeOptions, precision: str):
        super().__init__(artifact, options, precision)
        require_file(self.artifact)
        try:
            self.session = ort.InferenceSession(str(self.artifact), session_options(options),
                                                providers=self.providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ArtifactError(f"onnxruntime cannot load {self.artifact}: {str(exc).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.device = self.session.get_providers()[0].replace("ExecutionProvider", "")

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe, so several inference threads share one session.
        return self.session.run(None, {self.input_name: tensor})[0]

    def metadata(self) -> dict:
        return dict(self.session.get_modelmeta().custom_metadata_map)


RUNTIME = OnnxRuntime
