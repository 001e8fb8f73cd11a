"""Self-describing artifacts: class names, input size and source hash inside ONNX metadata_props / OpenVINO rt_info.

A model file copied out of its folder still names its classes. NCNN's .param has no slot for metadata: an NCNN
artifact is only described by the model folder it sits in (load_bundle walks up to find it).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

KEY = "ripeye"  # metadata_props key / rt_info entry holding our JSON object


def describe(metadata: dict, source_sha256: str, runtime: str, precision: str) -> dict:
    """What an artifact carries about itself (the part of metadata.json and manifest.json a lone file needs)."""
    return {"name": metadata.get("name", ""), "class_names": list(metadata.get("class_names") or []),
            "input_size": list(metadata.get("input_size") or [640, 640]), "source_onnx_sha256": source_sha256,
            "runtime": runtime, "precision": precision}


# ---- reading (no onnx/openvino package needed for OpenVINO IR; ONNX uses onnx, else onnxruntime) -------------------
def read(path: str | Path) -> dict:
    """The embedded description of an artifact, {} when it has none. Ultralytics' own `names`/`imgsz` entries
    (in an export that ripeye never stamped) fill in class names and input size."""
    path = Path(path)
    try:
        props = _onnx_props(path) if path.suffix == ".onnx" else _openvino_rt_info(path) if path.suffix == ".xml" \
            else {}
    except Exception as exc:  # a file we cannot read metadata from is still a model; the runtime says more
        log.debug("no embedded metadata in %s: %s", path, exc)
        return {}
    info: dict = {}
    if props.get(KEY):
        try:
            info = json.loads(props[KEY])
        except json.JSONDecodeError:
            info = {}
    if not info.get("class_names") and props.get("names"):
        try:
            names = ast.literal_eval(props["names"])
            info["class_names"] = [names[i] for i in sorted(names)]
        except (ValueError, SyntaxError, TypeError, KeyError):
            pass
    if not info.get("input_size") and props.get("imgsz"):
        try:
            info["input_size"] = list(ast.literal_eval(props["imgsz"]))
        except (ValueError, SyntaxError, TypeError):
            pass
    return info


def _onnx_props(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        return dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    .get_modelmeta().custom_metadata_map)
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _openvino_rt_info(path: Path) -> dict:
    """rt_info of an IR read straight from its XML: our entry and Ultralytics' framework/{names,imgsz}."""
    root = ET.parse(path).getroot()
    rt = root.find("rt_info")
    if rt is None:
        return {}
    out = {}
    for key, where in ((KEY, KEY), ("names", "framework/names"), ("imgsz", "framework/imgsz")):
        node = rt.find(where)
        if node is not None and node.get("value") is not None:
            out[key] = node.get("value")
    return out


# ---- writing (at optimize time, or on existing artifacts with `ripeye optimize --stamp-only`) -----------------------
def stamp(path: str | Path, info: dict) -> None:
    """Embed `info` into an ONNX or OpenVINO IR file in place (weights untouched); other kinds are skipped."""
    path = Path(path)
    if path.suffix == ".onnx":
        _stamp_onnx(path, json.dumps(info, separators=(",", ":")))
    elif path.suffix == ".xml":
        _stamp_openvino(path, json.dumps(info, separators=(",", ":")))


def _stamp_onnx(path: Path, value: str) -> None:
    import onnx

    from daemon.durable import write_durably

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=KEY, value=value)
    write_durably(path, model.SerializeToString())


def _stamp_openvino(path: Path, value: str) -> None:
    """Read the IR, set rt_info, save it beside and swap both files in (the .bin may be memory-mapped while read)."""
    os.environ.setdefault("CI", "true")
    import openvino as ov

    from daemon.durable import fsync_dir

    work = path.parent / f".{path.stem}.stamp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        model = ov.Core().read_model(str(path))
        model.set_rt_info(value, [KEY])
        ov.save_model(model, str(work / path.name), compress_to_fp16=False)  # no silent FP16 of an FP32 IR
        del model
        for suffix in (".bin", ".xml"):  # .bin first: an .xml never points at weights it was not saved with
            with open(work / path.with_suffix(suffix).name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(work / path.with_suffix(suffix).name, path.with_suffix(suffix))
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stamp_bundle(model_dir: str | Path) -> dict:
    """Stamp every ONNX/OpenVINO artifact listed in manifest.json and refresh its size and sha256 there.

    The source model.onnx is left as it is: its hash names the model version everywhere (tune cache, engine cache).
    """
    from daemon.durable import write_durably
    from daemon.model import MANIFEST, METADATA, file_hash

    model_dir = Path(model_dir)
    metadata = json.loads((model_dir / METADATA).read_text()) if (model_dir / METADATA).is_file() else {}
    manifest = json.loads((model_dir / MANIFEST).read_text())
    source_sha = manifest.get("source_onnx", {}).get("sha256", "")
    for entry in manifest.get("artifacts", []):
        files = entry.get("files") or []
        if not files or entry.get("runtime") == "tensorrt" or files[0] == "model.onnx":
            continue
        first = model_dir / files[0]
        if first.suffix not in (".onnx", ".xml") or not first.is_file():
            continue
        stamp(first, describe(metadata, source_sha, entry["runtime"], entry["precision"]))
        entry["size_bytes"] = sum((model_dir / f).stat().st_size for f in files)
        entry["sha256"] = file_hash(first, 64)
    write_durably(model_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def lone_kind(info: dict) -> Optional[str]:
    """The artifact kind load_bundle uses for a lone file, from its embedded runtime name."""
    return {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(info.get("runtime", ""))
