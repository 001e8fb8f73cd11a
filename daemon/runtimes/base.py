"""The small interface every inference runtime implements, and the registry that tolerates missing packages."""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

log = logging.getLogger(__name__)


class RuntimeUnavailable(Exception):
    """The runtime's Python package (or its device) is not present here."""


class ArtifactError(Exception):
    """A model artifact is missing, corrupt or unsupported by this runtime; the message names the file."""


@dataclass
class RuntimeOptions:
    threads: int = 0
    inflight: int = 1
    device: str = "CPU"
    cache_dir: Path = Path("~/.cache/ripeye").expanduser()
    tensorrt_fp16: bool = True
    tensorrt_int8: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, systemd's CPUAffinity=, a cpuset cgroup).

    The one place thread counts start from. Not /proc/cpuinfo, which the unit's ProcSubset=pid hides: ONNX Runtime's
    and NCNN's own counts read it and find one core inside the service.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


def threads_per_request(options: RuntimeOptions) -> int:
    """Threads for one inference request: `runtime.threads` (0 = every usable core) shared by the requests in
    flight."""
    return max(1, (options.threads or usable_cores()) // max(options.inflight, 1))


class Runtime:
    """Load one artifact; run a preprocessed NCHW float32 batch; return the raw head output."""

    name: ClassVar[str] = "base"
    #: artifact kinds this runtime can load, in order of preference (see daemon.model)
    formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, artifact: Path, options: RuntimeOptions, precision: str):
        self.artifact = Path(artifact)
        self.options = options
        self.precision = precision
        self.device = options.device

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer_many(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """Run several independent frames; runtimes with async requests overlap them."""
        return [self.infer(t) for t in tensors]

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision, "device": self.device,
                "artifact": str(self.artifact)}

    def close(self) -> None:
        """Release native resources; the default relies on garbage collection."""


def require_file(path: Path, what: str = "model file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{what} is empty: {path}")
    return path


_MODULES = {
    "openvino": "daemon.runtimes.openvino_rt",
    "onnxruntime": "daemon.runtimes.onnxruntime_rt",
    "tensorrt": "daemon.runtimes.tensorrt_rt",
    "ncnn": "daemon.runtimes.ncnn_rt",
}
_cache: dict[str, Optional[type[Runtime]]] = {}
_why_missing: dict[str, str] = {}


def get(name: str) -> type[Runtime]:
    """The runtime class by name; raises RuntimeUnavailable when its package is missing."""
    if name not in _MODULES:
        raise RuntimeUnavailable(f"unknown backend {name!r}; known: {', '.join(_MODULES)}")
    if name not in _cache:
        try:
            module = importlib.import_module(_MODULES[name])
            module.check_available()
            _cache[name] = module.RUNTIME
        except (ImportError, RuntimeUnavailable, OSError) as exc:
            _cache[name] = None
            _why_missing[name] = f"{type(exc).__name__}: {exc}"
    cls = _cache[name]
    if cls is None:
        raise RuntimeUnavailable(f"backend {name} unavailable ({_why_missing[name]})")
    return cls


def available() -> dict[str, str]:
    """Every known backend → 'ok' or why it cannot load."""
    out = {}
    for name in _MODULES:
        try:
            get(name)
            out[name] = "ok"
        except RuntimeUnavailable as exc:
            out[name] = str(exc)
    return out


def names() -> list[str]:
    return list(_MODULES)
