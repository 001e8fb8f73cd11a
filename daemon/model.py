"""Model bundles: a model folder's metadata, its artifacts per runtime and precision, and which one to load."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METADATA = "metadata.json"
# Which artifact kinds each backend can load, best first.
BACKEND_FORMATS = {
    "openvino": ("openvino", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "tensorrt": ("onnxruntime", "onnx"),
    "ncnn": ("ncnn",),
}
PRECISION_ORDER = {"auto": ("int8", "fp16", "fp32"), "fp32": ("fp32",), "fp16": ("fp16", "fp32"),
                   "int8": ("int8",)}


@dataclass
class Artifact:
    kind: str  # onnx | openvino | onnxruntime | ncnn
    precision: str
    path: Path
    accepted: bool = True
    sha256: str = ""
    note: str = ""


@dataclass
class ModelBundle:
    root: Path
    name: str
    class_names: list[str]
    input_size: tuple[int, int]
    version: str
    artifacts: list[Artifact] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # unreadable side files, each naming the file; loading went on

    def candidates(self, backend: str, precision: str = "auto") -> list[Artifact]:
        """Artifacts this backend can load for the wanted precision, in order of preference; rejected ones never."""
        kinds = BACKEND_FORMATS.get(backend, ())
        order = PRECISION_ORDER[precision]
        if backend == "tensorrt" and precision == "auto":
            order = ("fp32", "int8")  # the FP32 ONNX built as FP16 engine is TensorRT's safe default
        found = [a for a in self.artifacts if a.accepted and a.kind in kinds and a.precision in order]
        return sorted(found, key=lambda a: (order.index(a.precision), kinds.index(a.kind)))

    def rejected(self) -> list[Artifact]:
        return [a for a in self.artifacts if not a.accepted]


def file_hash(path: Path, length: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def _kind_for_file(path: Path) -> Optional[str]:
    return {".xml": "openvino", ".param": "ncnn", ".onnx": "onnx"}.get(path.suffix)


def read_side_file(path: Path, problems: list[str]) -> dict:
    """A bundle's JSON side file (metadata.json, manifest.json) as a dict; {} when absent. A corrupt one is a problem
    naming the file, not a reason to refuse the intact model beside it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        problems.append(f"{path}: unreadable, ignored ({type(exc).__name__}: {exc})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: ignored (top level must be a JSON object, not {type(data).__name__})")
        return {}
    return data


def manifest_entries(manifest: dict, manifest_file: Path, problems: list[str]) -> list[dict]:
    """The usable entries of a manifest's artifact list; each unusable one is a problem naming file and index."""
    entries = manifest.get("artifacts", [])
    if not isinstance(entries, list):
        problems.append(f"{manifest_file}: artifacts must be a list; ignored")
        return []
    usable = []
    for i, entry in enumerate(entries):
        files = entry.get("files") if isinstance(entry, dict) else None
        if (not isinstance(files, list) or not files or not isinstance(files[0], str)
                or not isinstance(entry.get("runtime"), str) or not isinstance(entry.get("precision"), str)):
            problems.append(f"{manifest_file}: artifacts[{i}] needs runtime, precision and files; ignored")
            continue
        usable.append(entry)
    return usable


def load_bundle(path: str | Path) -> ModelBundle:
    """Read a model folder (metadata.json, optional manifest.json) or a single artifact file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path not found: {path}")
    root = path if path.is_dir() else path.parent
    problems: list[str] = []
    metadata = read_side_file(root / METADATA, problems)
    artifacts: list[Artifact] = []
    manifest_file = root / MANIFEST
    manifest = {"artifacts": manifest_entries(read_side_file(manifest_file, problems), manifest_file, problems)}
    if path.is_dir():
        source = root / "model.onnx"
        if source.is_file():
            artifacts.append(Artifact("onnx", "fp32", source))
        for entry in manifest.get("artifacts", []):
            artifacts.append(Artifact(
                kind=entry["runtime"] if entry["runtime"] != "tensorrt" else "onnxruntime",
                precision=entry["precision"],
                path=root / entry["files"][0],
                accepted=bool(entry.get("accepted", True)),
                sha256=entry.get("sha256", ""),
                note=entry.get("note", ""),
            ))
        if not artifacts:
            raise FileNotFoundError(f"no model artifacts in {root} (expected model.onnx or {MANIFEST})")
    else:
        kind = _kind_for_file(path)
        if kind is None:
            raise ValueError(f"unsupported model file type: {path} (use .onnx, .xml or .param)")
        entry = next((e for e in manifest.get("artifacts", []) if root / e["files"][0] == path), None)
        precision = entry["precision"] if entry else "fp32"
        if entry and entry.get("runtime") == "onnxruntime":
            kind = "onnxruntime"
        accepted = bool(entry.get("accepted", True)) if entry else True
        artifacts.append(Artifact(kind, precision, path, accepted))
        if kind == "onnx":  # an ONNX file is also what the ORT/TensorRT backends load
            pass
    names = metadata.get("class_names") or []
    size = tuple(metadata.get("input_size") or (640, 640))
    source = root / "model.onnx"
    version = metadata.get("sources", {}).get("model.onnx", "")[:12] or (
        file_hash(source) if source.is_file() else file_hash(artifacts[0].path) if artifacts[0].path.is_file() else "")
    return ModelBundle(root=root, name=metadata.get("name", root.name if path.is_dir() else path.stem),
                       class_names=list(names), input_size=(int(size[0]), int(size[1])), version=version,
                       artifacts=artifacts, metadata=metadata, problems=problems)
