"""NCNN runtime (ARM boards such as the Raspberry Pi): pnnx-converted .param/.bin, FP32 or FP16 storage."""

from __future__ import annotations

import ncnn  # noqa: E402,I001
import numpy as np

from daemon.runtimes.base import ArtifactError, Runtime, RuntimeOptions, require_file, usable_cores


def check_available() -> None:
    ncnn.Net()


class NcnnRuntime(Runtime):
    name = "ncnn"
    formats = ("ncnn",)

    def __init__(self, artifact, options: RuntimeOptions, precision: str):
        super().__init__(artifact, options, precision)
        param = require_file(self.artifact, "NCNN param file")
        weights = require_file(param.with_suffix(".bin"), "NCNN weights file")
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        # Explicit: ncnn.get_cpu_count() reads /proc/cpuinfo and says 1 under the unit's ProcSubset=pid. The
        # powersave mode stays 0 (all cores, no affinity set by NCNN), so the threads run where the process may.
        self.net.opt.num_threads = options.threads or usable_cores()
        fp16 = precision == "fp16"
        self.net.opt.use_fp16_storage = fp16
        self.net.opt.use_fp16_packed = fp16
        self.net.opt.use_fp16_arithmetic = False
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise ArtifactError(f"NCNN cannot load {param} / {weights}")
        self.input_name = self.net.input_names()[0] if self.net.input_names() else "in0"
        self.output_name = self.net.output_names()[0] if self.net.output_names() else "out0"
        self.device = "CPU"

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        ex = self.net.create_extractor()
        ex.input(self.input_name, ncnn.Mat(np.ascontiguousarray(tensor[0])))
        ret, out = ex.extract(self.output_name)
        if ret != 0:
            raise RuntimeError(f"NCNN extract failed ({ret}) for {self.artifact}")
        return np.array(out)[None]


RUNTIME = NcnnRuntime
