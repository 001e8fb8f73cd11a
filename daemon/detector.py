"""A loaded detector: model bundle + chosen runtime + pre/post-processing, with fallback along the backend chain."""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from daemon import runtimes, vision
from daemon.hardware import HardwareProfile, classify, probe
from daemon.model import ModelBundle, load_bundle, select_size
from daemon.runtimes.base import ArtifactError, RuntimeOptions, RuntimeUnavailable

log = logging.getLogger(__name__)


class NoUsableBackend(Exception):
    """Every backend in the chain failed; the message lists each attempt and why."""


@dataclass
class Detector:
    bundle: ModelBundle
    runtime: runtimes.Runtime
    class_names: list[str]
    input_size: tuple[int, int]
    attempts: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return self.runtime.name

    def preprocess(self, frame: np.ndarray, white_balance: str = "none") -> tuple[np.ndarray, vision.Letterbox]:
        return vision.preprocess(frame, self.input_size, white_balance)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        return self.runtime.infer(tensor)

    def postprocess(self, output: np.ndarray, lb: vision.Letterbox, conf: float, iou: float,
                    max_det: int = 300, agnostic: bool = False) -> list[vision.Detection]:
        return vision.postprocess(output, lb, self.class_names, conf, iou, max_det, agnostic)

    def detect(self, frame: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[vision.Detection]:
        tensor, lb = self.preprocess(frame)
        return self.postprocess(self.infer(tensor), lb, conf, iou)

    def describe(self) -> dict:
        return {**self.runtime.describe(), "model": self.bundle.name, "model_version": self.bundle.version}

    def close(self) -> None:
        self.runtime.close()


def _names_from_onnx_metadata(runtime) -> list[str]:
    """Ultralytics writes class names into the ONNX metadata as a Python dict literal."""
    meta = runtime.metadata() if hasattr(runtime, "metadata") else {}
    try:
        names = ast.literal_eval(meta.get("names", "{}"))
        return [names[i] for i in sorted(names)]
    except (ValueError, SyntaxError):
        return []


def backend_chain(requested: str, profile: Optional[HardwareProfile] = None,
                  cache_dir: Optional[Path] = None, bundle: Optional[ModelBundle] = None) -> tuple[list[str], str]:
    """Backends to try in order, and why: the requested one first, then the hardware chain as fallback."""
    profile = profile or classify(probe())
    if requested == "measured" and bundle is not None and cache_dir is not None:
        from daemon import tune

        winner = tune.cached_winner(cache_dir, bundle)
        if winner:
            rest = [b for b in profile.chain if b != winner["backend"]]
            return [winner["backend"], *rest], (f"measured winner cached by `ripeye tune`: {winner['backend']} "
                                                f"{winner['precision']} {winner['median_ms']} ms")
        requested = "auto"
        why_prefix = "no `ripeye tune` result cached; "
    else:
        why_prefix = ""
    if requested in ("auto", "measured"):
        return list(profile.chain), why_prefix + "; ".join(profile.reasons)
    rest = [b for b in profile.chain if b != requested]
    return [requested, *rest], f"backend {requested} requested in config"


def load_detector(model_path: str | Path, backend: str = "auto", precision: str = "auto",
                  options: Optional[RuntimeOptions] = None, profile: Optional[HardwareProfile] = None,
                  imgsz: int = 0, allow_rejected: bool = False) -> Detector:
    """Load the best artifact on the first backend that works, logging each failure and falling back.

    `imgsz` picks the model folder's input-size variant (0: the folder's own size)."""
    options = options or RuntimeOptions()
    bundle = load_bundle(select_size(model_path, imgsz), allow_rejected)
    options.extra.setdefault("model_hash", bundle.version)
    chain, why = backend_chain(backend, profile, Path(options.cache_dir).expanduser(), bundle)
    measured_precision = None
    if backend == "measured" and precision == "auto":
        from daemon import tune

        winner = tune.cached_winner(Path(options.cache_dir).expanduser(), bundle)
        measured_precision = winner["precision"] if winner else None
    attempts: list[str] = []
    if backend == "measured" and measured_precision is None:
        from daemon import tune

        # Said on `errors` by the daemon: a silent fallback hides a tune run made for other hardware or model.
        attempts.append(f"measured: no `ripeye tune` result in {tune.cache_file(Path(options.cache_dir))} for "
                        f"{tune.cache_key(bundle)}; using the automatic order")
    for i, name in enumerate(chain):
        try:
            cls = runtimes.get(name)
        except RuntimeUnavailable as exc:
            attempts.append(f"{name}: {exc}")
            continue
        wanted = measured_precision if (measured_precision and i == 0) else precision
        candidates = bundle.candidates(name, wanted)
        if not candidates:
            attempts.append(f"{name}: no {wanted} artifact for it in {bundle.root}")
            continue
        for art in candidates:
            t0 = time.perf_counter()
            try:
                rt = cls(art.path, options, art.precision)
            except (ArtifactError, RuntimeUnavailable, OSError, RuntimeError) as exc:
                msg = f"{name} {art.precision} {art.path}: {exc}"
                log.warning("could not load %s; trying the next", msg)
                attempts.append(msg)
                continue
            names = bundle.class_names or _names_from_onnx_metadata(rt)
            log.info("loaded %s %s (%s) in %.2f s; chain %s because %s", name, art.precision, art.path,
                     time.perf_counter() - t0, chain, why)
            return Detector(bundle, rt, names, bundle.input_size, attempts)
    raise NoUsableBackend(f"no backend could load {model_path}:\n  " + "\n  ".join(attempts + bundle.problems))
