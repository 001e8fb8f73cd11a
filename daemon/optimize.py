"""`ripeye optimize`: derive every runtime artifact from the ONNX source, quantize to INT8 and gate on accuracy."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from daemon import artifact_info, vision
from daemon.durable import write_durably
from daemon.model import MANIFEST, METADATA, SIZES_DIR, file_hash, load_bundle, size_variants

log = logging.getLogger(__name__)

# Float scopes tried in order until the INT8 artifact passes the accuracy gate. YOLO's decode subgraph
# (DFL softmax, anchor arithmetic, concat of boxes and sigmoid scores) loses everything in INT8; the box/class
# convolutions of the head usually survive it, and keeping the whole head float is the safer next step.
FLOAT_SCOPES = [
    ("decode", r".*/model\.23/(?!cv2|cv3).*"),
    ("head", r".*/model\.23/.*"),
]


@dataclass
class Step:
    runtime: str
    precision: str
    files: list[str]
    note: str = ""
    accepted: bool = True
    metrics: Optional[dict] = None
    failed: str = ""
    attempts: Optional[list] = None


def sha256_file(path: Path) -> str:
    return file_hash(path, 64)


def calibration_images(calib: Optional[str], model_dir: Path, calib_root: Optional[Path], count: int) -> list[Path]:
    """A list file (one path per line, relative to calib_root) or a folder of images."""
    if calib is None:
        default = model_dir / "calibration.txt"
        if not default.is_file():
            raise FileNotFoundError(f"no --calib given and {default} does not exist")
        calib = str(default)
    path = Path(calib)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    elif path.is_file():
        base = calib_root or path.parent
        files = [base / line.strip() for line in path.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    else:
        raise FileNotFoundError(f"calibration list or folder not found: {path}")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} calibration images missing, e.g. {missing[0]} (set --calib-root)")
    if not files:
        raise ValueError(f"no calibration images in {path}")
    return files[:count]


def load_tensors(files: list[Path], size: tuple[int, int]) -> list[np.ndarray]:
    from tqdm import tqdm

    out = []
    for f in tqdm(files, desc="calibration images", unit="img", file=sys.stderr, disable=None):
        image = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot decode calibration image {f}")
        out.append(vision.preprocess(image, size)[0])
    return out


# ---- targets ---------------------------------------------------------------------------------------------------------
def openvino_fp32(onnx_path: Path, out: Path) -> Step:
    import openvino as ov

    dest = out / "openvino" / "fp32" / "model.xml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(dest), compress_to_fp16=False)  # no silent FP16
    return Step("openvino", "fp32", [rel(dest, out), rel(dest.with_suffix(".bin"), out)])


def openvino_int8(onnx_path: Path, out: Path, tensors: list[np.ndarray], scope: str, **nncf_settings) -> Step:
    """NNCF post-training INT8 with `scope` kept float; nncf_settings override nncf.quantize's keywords."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # its per-layer INFO lines drown the progress output
    model = ov.convert_model(str(onnx_path))
    # NNCF's full bias correction, not its fast one: on v2 at 416 (decode float) the fast one dropped mAP50-95 by
    # 0.83 points, the full one by 0.34, for ~15 s more here (bench/nncf_settings.py)
    settings = {"preset": nncf.QuantizationPreset.MIXED, "subset_size": len(tensors), "fast_bias_correction": False,
                "ignored_scope": nncf.IgnoredScope(patterns=[scope], validate=False), **nncf_settings}
    quantized = nncf.quantize(model, nncf.Dataset(tensors), **settings)
    dest = out / "openvino" / "int8" / "model.xml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dest), compress_to_fp16=False)
    return Step("openvino", "int8", [rel(dest, out), rel(dest.with_suffix(".bin"), out)])


def onnxruntime_int8(onnx_path: Path, out: Path, tensors: list[np.ndarray], scope: str) -> Step:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dest = out / "onnxruntime" / "int8" / "model.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    prep = dest.with_name("prep.onnx")
    quant_pre_process(str(onnx_path), str(prep), skip_symbolic_shape=True)
    graph = onnx.load(str(prep)).graph
    input_name = graph.input[0].name
    excluded = [n.name for n in graph.node if re.fullmatch(scope, n.name)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(tensors)

        def get_next(self):
            t = next(self.it, None)
            return None if t is None else {input_name: t}

    # S8S8: U8S8 saturates on x86 CPUs without VNNI (AVX2-only): the same artifact lost 1.5 points mAP50-95 on an
    # AVX2 EPYC that it kept on a VNNI one. ONNX Runtime recommends S8S8 QDQ as the first choice.
    quantize_static(str(prep), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)
    prep.unlink(missing_ok=True)
    return Step("onnxruntime", "int8", [rel(dest, out)], note=f"{len(excluded)} head nodes kept float")


def ncnn_convert(onnx_path: Path, out: Path, size: tuple[int, int], fp16: bool) -> Step:
    """pnnx converts the ONNX to NCNN; fp16=1 stores weights as FP16 (what ARM boards run fastest)."""
    precision = "fp16" if fp16 else "fp32"
    dest = out / "ncnn" / precision
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / "pnnx-work"
    work.mkdir(exist_ok=True)
    src = work / "model.onnx"
    shutil.copy(onnx_path, src)
    pnnx = pnnx_binary()
    cmd = [pnnx, str(src), f"inputshape=[1,3,{size[1]},{size[0]}]", f"fp16={int(fp16)}",
           f"ncnnparam={dest / 'model.ncnn.param'}", f"ncnnbin={dest / 'model.ncnn.bin'}",
           f"pnnxparam={work / 'model.pnnx.param'}", f"pnnxbin={work / 'model.pnnx.bin'}",
           f"pnnxpy={work / 'model_pnnx.py'}", f"pnnxonnx={work / 'model.pnnx.onnx'}",
           f"ncnnpy={work / 'model_ncnn.py'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    shutil.rmtree(work, ignore_errors=True)
    param = dest / "model.ncnn.param"
    if r.returncode != 0 or not param.is_file():
        raise RuntimeError(f"pnnx failed ({r.returncode}): {(r.stderr or r.stdout)[-400:]}")
    # pnnx names the weights file after the param file with .bin; our runtime expects model.ncnn.bin beside it
    return Step("ncnn", precision, [rel(param, out), rel(dest / "model.ncnn.bin", out)])


def pnnx_binary() -> str:
    """The pnnx executable shipped inside the pnnx wheel, found without importing the package (which imports torch:
    only its TorchScript path needs torch, the ONNX → NCNN conversion is the self-contained binary)."""
    import importlib.util

    spec = importlib.util.find_spec("pnnx")
    if spec and spec.submodule_search_locations:
        exe = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
        if exe.is_file():
            return str(exe)
    found = shutil.which("pnnx")
    if not found:
        raise RuntimeError("pnnx not installed: pip install --no-deps pnnx")
    return found


def tensorrt_options(out: Path, onnx_rel: str, int8_rel: Optional[str]) -> Step:
    """No engine can be built without the target GPU: record the provider options the Jetson builds with."""
    from daemon.runtimes.base import RuntimeOptions

    opts = {}
    try:
        from daemon.runtimes.tensorrt_rt import tensorrt_provider_options

        opts = {"fp16": tensorrt_provider_options(RuntimeOptions(cache_dir=Path("/var/cache/ripeye")), "fp32"),
                "int8": tensorrt_provider_options(RuntimeOptions(cache_dir=Path("/var/cache/ripeye")), "int8")}
    except ImportError:
        pass
    dest = out / "tensorrt" / "provider_options.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_durably(dest, json.dumps({"fp16_source": onnx_rel, "int8_source": int8_rel, "options": opts}, indent=2))
    return Step("tensorrt", "fp16", [onnx_rel], note="engine built and cached on the device at first run")


def rel(path: Path, root: Path) -> str:
    return str(Path(path).relative_to(root))


# ---- accuracy gate ---------------------------------------------------------------------------------------------------
def evaluator(data: Optional[Path], images: Optional[Path], class_map: dict, limit: Optional[int]):
    if data is None:
        return None
    from daemon import runtimes
    from daemon.detector import Detector
    from daemon.evaluate import evaluate_detector
    from daemon.runtimes.base import RuntimeOptions

    images = images or data.parent.parent / data.stem

    def evaluate(model_dir: Path, runtime: str, precision: str, file: str) -> dict:
        bundle = load_bundle(model_dir)
        backend = "openvino" if runtime == "openvino" else "onnxruntime"
        rt = runtimes.get(backend)(model_dir / file, RuntimeOptions(), precision)
        det = Detector(bundle, rt, bundle.class_names, bundle.input_size)
        return evaluate_detector(det, data, images, class_map, limit)

    return evaluate


def gated_int8(name: str, build: Callable[[str], Step], parent: Optional[dict], evaluate, out: Path,
               max_drop: float) -> Step:
    """Build INT8 with the narrowest float scope first; widen until mAP50-95 drops ≤ max_drop points."""
    attempts = []
    step = None
    for scope_name, scope in FLOAT_SCOPES:
        t0 = time.time()
        step = build(scope)
        entry = {"float_scope": scope_name, "pattern": scope, "seconds": round(time.time() - t0, 1)}
        if evaluate is None or parent is None:
            step.note = (step.note + "; " if step.note else "") + "not evaluated (no --data): accepted unchecked"
            entry["result"] = "accepted without accuracy check"
            attempts.append(entry)
            step.attempts = attempts
            return step
        metrics = evaluate(out, step.runtime, "int8", step.files[0])
        # mAPs come rounded to 4 decimals, so a drop has 2: unrounded, 0.6119 - 0.6069 is 0.5000000000000004 points
        drop = round((parent["mAP50-95"] - metrics["mAP50-95"]) * 100, 2)
        entry.update({"mAP50-95": metrics["mAP50-95"], "drop_points": drop})
        attempts.append(entry)
        print(f"  {name} int8 [{scope_name} float]: mAP50-95 {metrics['mAP50-95']:.4f} "
              f"(FP32 {parent['mAP50-95']:.4f}, drop {drop:.2f} points)", file=sys.stderr)
        step.metrics = metrics
        if drop <= max_drop:
            step.accepted = True
            step.note = (step.note + "; " if step.note else "") + f"{scope_name} kept float"
            step.attempts = attempts
            return step
    step.accepted = False
    step.note = f"rejected: every float scope dropped mAP50-95 by more than {max_drop} points"
    step.attempts = attempts
    return step


# ---- driver ----------------------------------------------------------------------------------------------------------
def optimize(args) -> dict:
    os.environ.setdefault("CI", "true")
    src = Path(args.model)
    onnx_path = src / "model.onnx" if src.is_dir() else src
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX source not found: {onnx_path}")
    out = Path(args.out) if args.out else onnx_path.parent
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != onnx_path.parent.resolve():
        shutil.copy(onnx_path, out / "model.onnx")
        for extra in ("metadata.json", "calibration.txt"):
            if (onnx_path.parent / extra).is_file():
                shutil.copy(onnx_path.parent / extra, out / extra)
    source = out / "model.onnx"
    bundle = load_bundle(out)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    from daemon.train import parse_class_map

    class_map = parse_class_map(args.class_map)
    data = Path(args.data) if args.data else None
    evaluate = evaluator(data, Path(args.images) if args.images else None, class_map, args.eval_limit)
    calib_root = Path(args.calib_root) if args.calib_root else (data.parent.parent if data else None)
    tensors: list[np.ndarray] = []
    calib_files: list[Path] = []
    if {"openvino", "onnxruntime"} & set(targets):
        calib_files = calibration_images(args.calib, onnx_path.parent, calib_root, args.calib_count)
        tensors = load_tensors(calib_files, bundle.input_size)
    calib_hash = file_hash(Path(args.calib or onnx_path.parent / "calibration.txt"), 64) if calib_files else ""

    steps: list[Step] = []
    metrics_fp32: Optional[dict] = None

    def attempt(label: str, fn: Callable[[], Step]) -> Optional[Step]:
        print(f"[optimize] {label} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            step = fn()
        except Exception as exc:  # one target failing must not lose the others
            log.exception("optimize: %s failed", label)
            runtime, precision = label.split()
            step = Step(runtime, precision, [], accepted=False, failed=f"{type(exc).__name__}: {exc}"[:500])
        print(f"[optimize] {label}: {'FAILED ' + step.failed if step.failed else 'ok'} ({time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        steps.append(step)
        return step

    if "openvino" in targets:
        fp32 = attempt("openvino fp32", lambda: openvino_fp32(source, out))
        if evaluate and fp32 and not fp32.failed:
            metrics_fp32 = evaluate(out, "openvino", "fp32", fp32.files[0])
            fp32.metrics = metrics_fp32
            print(f"  openvino fp32: mAP50-95 {metrics_fp32['mAP50-95']:.4f} mAP50 {metrics_fp32['mAP50']:.4f}",
                  file=sys.stderr)
        attempt("openvino int8", lambda: gated_int8(
            "openvino", lambda scope: openvino_int8(source, out, tensors, scope), metrics_fp32, evaluate, out,
            args.max_drop))
    if "onnxruntime" in targets:
        if evaluate and metrics_fp32 is None:
            metrics_fp32 = evaluate(out, "onnx", "fp32", "model.onnx")
        attempt("onnxruntime int8", lambda: gated_int8(
            "onnxruntime", lambda scope: onnxruntime_int8(source, out, tensors, scope), metrics_fp32, evaluate, out,
            args.max_drop))
    if "ncnn" in targets:
        attempt("ncnn fp32", lambda: ncnn_convert(source, out, bundle.input_size, fp16=False))
        attempt("ncnn fp16", lambda: ncnn_convert(source, out, bundle.input_size, fp16=True))
    if "tensorrt" in targets:
        int8 = next((s for s in steps if s.runtime == "onnxruntime" and s.precision == "int8" and s.accepted), None)
        attempt("tensorrt fp16", lambda: tensorrt_options(out, "model.onnx", int8.files[0] if int8 else None))

    manifest = {
        "schema": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_onnx": {"file": "model.onnx", "sha256": sha256_file(source)},
        "calibration": {"images": len(calib_files), "list_sha256": calib_hash},
        "accuracy_gate": {"max_drop_points": args.max_drop, "data": dataset_reference(data) if data else None,
                          "fp32_reference": metrics_fp32},
        "tools": tool_versions(),
        "artifacts": [],
    }
    for s in steps:
        entry = {"runtime": s.runtime, "precision": s.precision, "files": s.files, "accepted": s.accepted}
        if s.files and all((out / f).is_file() for f in s.files):
            entry["size_bytes"] = sum((out / f).stat().st_size for f in s.files)
            entry["sha256"] = sha256_file(out / s.files[0])
        for key in ("note", "failed"):
            if getattr(s, key):
                entry[key] = getattr(s, key)
        if s.metrics:
            entry["metrics"] = {k: s.metrics[k] for k in ("mAP50-95", "mAP50", "per_class")}
        if s.attempts:
            entry["attempts"] = s.attempts
        manifest["artifacts"].append(entry)
    # re-deriving some targets (--targets onnxruntime) keeps the other runtimes' entries for the same source
    previous = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else {}
    if previous.get("source_onnx", {}).get("sha256") == manifest["source_onnx"]["sha256"]:
        kept = [e for e in previous.get("artifacts", []) if e["runtime"] not in targets]
        manifest["artifacts"] = kept + manifest["artifacts"]
        if metrics_fp32 is None:
            manifest["accuracy_gate"]["fp32_reference"] = previous.get("accuracy_gate", {}).get("fp32_reference")
    write_durably(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    # every ONNX/OpenVINO artifact names its classes, input size and source even when copied out alone
    return artifact_info.stamp_bundle(out)


def dataset_reference(annotations: Path) -> dict:
    """Which annotations the gate used, without this machine's path: dataset folder name, file in it, content hash."""
    annotations = Path(annotations).resolve()
    dataset = annotations.parent.parent if annotations.parent.name == "annotations" else annotations.parent
    return {"dataset": dataset.name, "file": str(annotations.relative_to(dataset)),
            "sha256": sha256_file(annotations)}


# ---- input-size variants --------------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    """'320,416,640' → [320, 416, 640]; each a multiple of the YOLO stride 32."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 32 or int(part) % 32:
            raise ValueError(f"--imgsz {part!r}: input sizes are multiples of 32 (e.g. 320,416,512,640)")
        sizes.append(int(part))
    return sorted(set(sizes))


def trained_at_own_size(folder: Path) -> bool:
    """Whether a sizes/<N>/ folder holds weights trained for it (model.pt + a training record), not an export of
    the main folder's weights."""
    try:
        meta = json.loads((folder / METADATA).read_text())
    except (OSError, ValueError):
        return False
    return (folder / "model.pt").is_file() and "training" in meta and "variant_of" not in meta


def derive_size_variant(root: Path, size: int) -> Path:
    """Make <root>/sizes/<size>/ hold a model.onnx exported at size×size from <root>/model.pt, with its metadata.

    The export needs torch + Ultralytics (the `train` extra); an ONNX already placed there is used as it is.
    """
    folder = root / SIZES_DIR / str(size)
    onnx_path = folder / "model.onnx"
    if not onnx_path.is_file():
        weights = root / "model.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"no {onnx_path} and no {weights} to export it from")
        try:  # the train extra, imported only here: optimize itself and the daemon never need torch
            YOLO = importlib.import_module("ultralytics").YOLO
        except ImportError as exc:
            raise RuntimeError(f"exporting the {size}x{size} ONNX from {weights} needs the train extra "
                               f"(pip install 'ripeye[train]'), or place an ONNX exported at that size in "
                               f"{onnx_path}") from exc
        import tempfile

        from daemon.train import offline_env

        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            offline_env(Path(tmp))
            shutil.copy(weights, Path(tmp) / "model.pt")
            exported = YOLO(str(Path(tmp) / "model.pt")).export(format="onnx", imgsz=size, batch=1, dynamic=False,
                                                                 simplify=True, opset=17)
            shutil.copy(exported, onnx_path)
    own_weights = trained_at_own_size(folder)
    if own_weights:
        # weights trained at this size (`ripeye train --imgsz N --export-imgsz N --out <model>/sizes/N`): its own
        # training record, model.pt and calibration list stay; only the source hashes are refreshed
        meta = json.loads((folder / METADATA).read_text())
        meta["sources"] = {name: sha256_file(folder / name) for name in ("model.pt", "model.onnx")}
    else:
        meta = json.loads((root / METADATA).read_text()) if (root / METADATA).is_file() else {}
        # same weights, another input size: the folder two levels up holds the training record and model.pt
        meta["variant_of"] = {"folder": "../..", "input_size": meta.get("input_size")}
        meta["input_size"] = [size, size]
        meta["sources"] = {"model.onnx": sha256_file(onnx_path)}
    write_durably(folder / METADATA, json.dumps(meta, indent=2) + "\n")
    if (root / "calibration.txt").is_file() and not (own_weights and (folder / "calibration.txt").is_file()):
        shutil.copy(root / "calibration.txt", folder / "calibration.txt")
    return folder


def optimize_sizes(args) -> dict[int, dict]:
    """`--imgsz 320,416,640`: every runtime artifact for each input size, each with the same accuracy gate."""
    root = Path(args.model)
    if not root.is_dir():
        raise ValueError(f"--imgsz needs a model folder (with model.pt or sizes/<N>/model.onnx), not {root}")
    if args.out:
        raise ValueError("--imgsz writes each size into <model>/sizes/<N>/; drop --out")
    own = size_variants(root)
    manifests = {}
    for size in parse_sizes(args.imgsz):
        folder = root if own.get(size) == root else derive_size_variant(root, size)
        print(f"[optimize] input size {size}: {folder}", file=sys.stderr, flush=True)
        manifests[size] = optimize(argparse.Namespace(**{**vars(args), "model": str(folder), "imgsz": None}))
    return manifests


def tool_versions() -> dict:
    out = {}
    for mod in ("openvino", "nncf", "onnxruntime", "ncnn", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def add_arguments(p) -> None:
    p.add_argument("model", help="model.onnx or a model folder holding it")
    p.add_argument("--calib", help="calibration list (paths relative to --calib-root) or image folder "
                                   "(default: calibration.txt beside the ONNX)")
    p.add_argument("--calib-root", help="base folder for a calibration list (default: the --data dataset root)")
    p.add_argument("--calib-count", type=int, default=100)
    p.add_argument("--targets", default="openvino,onnxruntime,ncnn,tensorrt")
    p.add_argument("--out", help="output folder (default: beside the ONNX)")
    p.add_argument("--data", help="COCO annotations JSON for the accuracy gate")
    p.add_argument("--images", help="images of --data (default: <dataset>/<split>)")
    p.add_argument("--class-map", default=None)
    p.add_argument("--max-drop", type=float, default=0.5, help="max mAP50-95 drop (points) for an INT8 artifact")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--imgsz", default=None,
                   help="input sizes, e.g. 320,416,512,640: derive every artifact per size into <model>/sizes/<N>/ "
                        "(the ONNX of a new size is exported from model.pt: needs the train extra)")
    p.add_argument("--stamp-only", action="store_true",
                   help="only embed class names, input size and source hash into the existing ONNX/OpenVINO "
                        "artifacts (no re-quantizing) and refresh their hashes in manifest.json")


def main(args) -> int:
    if args.stamp_only:
        folder = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
        folders = [folder] + [size_variants(folder)[n] for n in parse_sizes(args.imgsz)] if args.imgsz else [folder]
        for each in dict.fromkeys(folders):
            artifact_info.stamp_bundle(each)
            print(f"stamped class names, input size and source hash into the artifacts of {each}; "
                  f"{MANIFEST} hashes refreshed")
        return 0
    try:
        manifests = optimize_sizes(args) if args.imgsz else {0: optimize(args)}
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ripeye optimize: {exc}", file=sys.stderr)
        return 2
    failed = False
    for size, manifest in manifests.items():
        if size:
            print(f"input size {size}")
        print(f"{'runtime':12s} {'prec':5s} {'accepted':8s} {'size MB':>8s}  note")
        for a in manifest["artifacts"]:
            mb = f"{a['size_bytes'] / 1e6:.2f}" if "size_bytes" in a else "-"
            print(f"{a['runtime']:12s} {a['precision']:5s} {str(a['accepted']):8s} {mb:>8s}  "
                  f"{a.get('failed') or a.get('note', '')}")
        failed = failed or any(a.get("failed") for a in manifest["artifacts"])
    return 1 if failed else 0
