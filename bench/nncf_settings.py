"""Which NNCF settings keep OpenVINO INT8 within the accuracy gate: quantize one model folder's ONNX with each and
evaluate it on the validation split (the same evaluator as `ripeye optimize`'s gate; the decode subgraph kept float).

    CI=true .venv/bin/python bench/nncf_settings.py models/tomato-yolo11n/sizes/416 \
        --data ../shared/datasets/laboro-tomato-big/annotations/valid.json \
        --calib-root ../shared/datasets/laboro-tomato-big --out bench/results/nncf_settings.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon import optimize  # noqa: E402
from daemon.model import load_bundle  # noqa: E402
from daemon.train import parse_class_map  # noqa: E402


def settings() -> dict[str, dict]:
    import nncf

    return {
        "fast bias correction (NNCF's default)": {"fast_bias_correction": True},
        "full bias correction (ripeye optimize's)": {},
        "transformer model type": {"model_type": nncf.ModelType.TRANSFORMER, "fast_bias_correction": True},
        "transformer model type, full bias correction": {"model_type": nncf.ModelType.TRANSFORMER},
    }


def main() -> int:
    os.environ.setdefault("CI", "true")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a model folder with model.onnx, metadata.json and calibration.txt")
    p.add_argument("--data", type=Path, required=True, help="COCO annotations of the validation split")
    p.add_argument("--calib-root", type=Path, required=True)
    p.add_argument("--calib-count", type=int, default=100)
    p.add_argument("--out", type=Path, help="write the results (JSON) here too")
    args = p.parse_args()
    evaluate = optimize.evaluator(args.data, None, parse_class_map(None), None)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        for name in ("model.onnx", "metadata.json", "calibration.txt"):
            shutil.copy(args.model / name, work / name)
        optimize.openvino_fp32(work / "model.onnx", work)
        fp32 = evaluate(work, "openvino", "fp32", "openvino/fp32/model.xml")
        files = optimize.calibration_images(None, work, args.calib_root, args.calib_count)
        tensors = optimize.load_tensors(files, load_bundle(work).input_size)
        decode = dict(optimize.FLOAT_SCOPES)["decode"]
        for name, extra in settings().items():
            t0 = time.time()
            optimize.openvino_int8(work / "model.onnx", work, tensors, decode, **extra)
            seconds = round(time.time() - t0, 1)
            m = evaluate(work, "openvino", "int8", "openvino/int8/model.xml")
            row = {"setting": name, "mAP50-95": m["mAP50-95"], "mAP50": m["mAP50"],
                   "drop_points": round((fp32["mAP50-95"] - m["mAP50-95"]) * 100, 2), "quantize_s": seconds}
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"model": str(args.model), "calibration_images": len(files), "fp32": {k: fp32[k] for k in ("mAP50-95",
              "mAP50")}, "int8": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
