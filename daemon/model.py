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
# Input-size variants of a model folder live in <folder>/sizes/<N>/, each a complete model folder of its own.
SIZES_DIR = "sizes"
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


class RejectedArtifact(ValueError):
    """The artifact given by path failed the accuracy gate of `ripeye optimize` (manifest.json says why)."""


def find_model_root(artifact: Path, levels: int = 3) -> Path:
    """The model folder an artifact file belongs to: the nearest folder up whose manifest.json lists the file (or
    the file's own folder when it holds metadata.json, or nothing else matches)."""
    artifact = artifact.resolve()
    for folder in list(artifact.parents)[:levels + 1]:
        manifest_file = folder / MANIFEST
        if manifest_file.is_file():
            try:
                entries = json.loads(manifest_file.read_text()).get("artifacts", [])
            except (ValueError, AttributeError):
                entries = []
            listed = {(folder / f).resolve() for e in entries if isinstance(e, dict) for f in e.get("files", [])[:1]}
            if artifact in listed or (artifact == (folder / "model.onnx").resolve()
                                      and (folder / METADATA).is_file()):
                return folder
        if folder == artifact.parent and (folder / METADATA).is_file():
            return folder
    return artifact.parent


def _refuse_rejected(path: Path, entry: dict, allow_rejected: bool) -> None:
    reason = entry.get("note") or entry.get("failed") or "rejected by the accuracy gate"
    if not allow_rejected:
        raise RejectedArtifact(f"{path} was rejected by `ripeye optimize` ({reason}); use an accepted artifact, or "
                               "--allow-rejected / model.allow_rejected: true to load it anyway")
    log.warning("LOADING A REJECTED ARTIFACT %s (%s): its accuracy is below the gate; allowed explicitly", path,
                reason)


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


def metadata_problems(metadata: dict) -> list[str]:
    """What is malformed in a metadata.json (key: why); [] when it is usable. Checked before a model is used, so a
    bad edit is refused with a reason instead of failing deep inside a loader."""
    problems = []
    size = metadata.get("input_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        problems.append(f"input_size: must be [height, width] (two positive integers), not {json.dumps(size)[:40]}")
    names = metadata.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        problems.append(f"class_names: must be a list of strings, not {json.dumps(names)[:40]}")
    sources = metadata.get("sources")
    if sources is not None and not (isinstance(sources, dict) and all(isinstance(v, str) for v in sources.values())):
        problems.append(f"sources: must be a mapping of file name to SHA-256, not {json.dumps(sources)[:40]}")
    for key in ("name", "version"):
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            problems.append(f"{key}: must be a string, not {json.dumps(metadata[key])[:40]}")
    default = metadata.get("default_input_size")
    if default is not None and not (isinstance(default, int) and not isinstance(default, bool) and default > 0):
        problems.append(f"default_input_size: must be a positive integer, not {json.dumps(default)[:40]}")
    return problems


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


def load_bundle(path: str | Path, allow_rejected: bool = False) -> ModelBundle:
    """Read a model folder (metadata.json, optional manifest.json) or a single artifact file; an artifact's model
    folder is found by walking up, and a lone artifact describes itself (see artifact_info). Corrupt side files are
    problems naming the file (bundle.problems), not reasons to refuse an intact model."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path not found: {path}")
    root = path if path.is_dir() else find_model_root(path)
    problems: list[str] = []
    metadata = read_side_file(root / METADATA, problems)
    malformed = metadata_problems(metadata)
    if malformed:
        raise ValueError(f"{root / METADATA}: " + "; ".join(malformed))
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
        entry = next((e for e in manifest.get("artifacts", []) if e.get("files")
                      and (root / e["files"][0]).resolve() == path.resolve() and e.get("runtime") != "tensorrt"), None)
        from daemon import artifact_info

        embedded = artifact_info.read(path) if not metadata else {}
        precision = entry["precision"] if entry else embedded.get("precision", "fp32")
        if (entry and entry.get("runtime") == "onnxruntime") or (not entry and artifact_info.lone_kind(embedded)
                                                                  == "onnxruntime" and kind == "onnx"):
            kind = "onnxruntime"
        if entry and not entry.get("accepted", True):
            _refuse_rejected(path, entry, allow_rejected)
        artifacts.append(Artifact(kind, precision, path, True, entry.get("sha256", "") if entry else ""))
        if not metadata and embedded:
            metadata = {"name": embedded.get("name") or path.stem, "class_names": embedded.get("class_names", []),
                        "input_size": embedded.get("input_size"),
                        "sources": {"model.onnx": embedded.get("source_onnx_sha256", "")}}
    names = metadata.get("class_names") or []
    size = tuple(metadata.get("input_size") or (640, 640))
    source = root / "model.onnx"
    installed = read_side_file(root / "bundle.json", problems) if (root / "bundle.json").is_file() else {}
    version = (installed.get("version") if isinstance(installed.get("version"), str) else "") or (
        metadata.get("sources") or {}).get("model.onnx", "")[:12] or (
        file_hash(source) if source.is_file() else file_hash(artifacts[0].path) if artifacts[0].path.is_file() else "")
    return ModelBundle(root=root, name=metadata.get("name", root.name if path.is_dir() else path.stem),
                       class_names=list(names), input_size=(int(size[0]), int(size[1])), version=version,
                       artifacts=artifacts, metadata=metadata, problems=problems)


def _folder_size(folder: Path) -> Optional[int]:
    if not (folder / METADATA).is_file():
        return None
    metadata = read_side_file(folder / METADATA, [])
    if metadata_problems(metadata):
        return None  # load_bundle says what is wrong with it
    return int((metadata.get("input_size") or (640, 640))[0])


def size_variants(folder: str | Path) -> dict[int, Path]:
    """Input sizes a model folder offers: its own (metadata.json) and each sizes/<N>/ holding a model."""
    folder = Path(folder)
    found: dict[int, Path] = {}
    for sub in sorted((folder / SIZES_DIR).glob("*")) if (folder / SIZES_DIR).is_dir() else []:
        if sub.name.isdigit() and ((sub / "model.onnx").is_file() or (sub / MANIFEST).is_file()):
            found[int(sub.name)] = sub
    own = _folder_size(folder)
    if own is not None:
        found[own] = folder
    return dict(sorted(found.items()))


class SizeNotFound(ValueError):
    """The model folder has no variant of the input size asked for."""


def default_size(folder: str | Path) -> Optional[int]:
    """The input size a model folder recommends (metadata.json `default_input_size`, written by
    bench/board_table.py --set-default from the default-size rule); None when it names none."""
    size = read_side_file(Path(folder) / METADATA, []).get("default_input_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def select_size(path: str | Path, imgsz: int = 0) -> Path:
    """The model folder (or artifact) to load for input size `imgsz`; 0: the folder's recommended size when it
    names one that is present, else the path as given (an artifact file, or a folder's own size)."""
    path = Path(path).expanduser()
    if not imgsz:
        recommended = default_size(path) if path.is_dir() else None
        return size_variants(path).get(recommended, path) if recommended else path
    if not path.is_dir():
        raise ValueError(f"model.imgsz {imgsz} needs a model folder, not the single artifact {path} "
                         f"(an artifact has one input size)")
    variants = size_variants(path)
    if imgsz in variants:
        return variants[imgsz]
    present = ", ".join(str(n) for n in variants) or "none"
    raise SizeNotFound(f"model {path} has no {imgsz}x{imgsz} variant; sizes present: {present} "
                     f"(derive one with `ripeye optimize {path} --imgsz {imgsz}`)")
