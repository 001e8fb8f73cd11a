"""The "which model for my board" table from a `ripeye bench --imgsz …` report plus published per-board figures.

    .venv/bin/python bench/board_table.py bench/results/sizes/bench.json [--out bench/results/sizes/boards.md] \
        [--set-default models/tomato-yolo11n [--fixed 640 --why "…"]]

Measured columns come from the report (this machine). Board columns are PROJECTIONS, not measurements:
  - Raspberry Pi 5: Ultralytics' published YOLO11n 640 FP32 latency on a Pi 5 (NCNN 88.0 ms, OpenVINO 81.2 ms)
    scaled by the latency ratio size/640 that this report measured for the same runtime here (CPU to CPU).
  - Jetson Orin Nano Super: Ultralytics' published YOLO11n 640 TensorRT FP16 latency (4.91 ms) scaled by the pixel
    ratio (size/640)². A GPU keeps fixed per-frame overheads at small sizes, so this is a lower bound on latency.
It also applies the shipped-default rule: the smallest input size whose mAP50 is within 1 point of the best size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

# Ultralytics docs (guides/raspberry-pi.md, guides/nvidia-jetson.md): YOLO11n, 640, batch 1, ms per image.
PUBLISHED = {
    "pi5": {"NCNN FP32": 88.026, "OpenVINO FP32": 81.192, "source": "Ultralytics Raspberry Pi 5 YOLO11n benchmark"},
    "orin_nano": {"TensorRT FP16": 4.91, "source": "Ultralytics Jetson Orin Nano Super YOLO11n benchmark"},
}
RULE_POINTS = 1.0


def rows_by(report: dict) -> dict[tuple[str, int], dict]:
    return {(r["label"], r["imgsz"]): r for r in report["results"] if "median_ms" in r}


def default_size(report: dict, label: str) -> Optional[int]:
    """Smallest size whose mAP50 is within RULE_POINTS of the best size, for one format."""
    scored = {size: r["mAP50"] for (lab, size), r in rows_by(report).items() if lab == label and "mAP50" in r}
    if not scored:
        return None
    best = max(scored.values())
    # rounded: 0.80 - 0.79 is 1.0000000000000009 points in floating point, and exactly 1 point is within the rule
    return min(size for size, m in scored.items() if round((best - m) * 100, 9) <= RULE_POINTS)


def table(report: dict) -> str:
    rows = rows_by(report)
    sizes = sorted({size for _, size in rows})
    top = max(sizes)

    def ratio(label: str, size: int) -> Optional[float]:
        here, ref = rows.get((label, size)), rows.get((label, top))
        return here["median_ms"] / ref["median_ms"] if here and ref and top == 640 else None

    lines = [
        f"Measured on {report['machine']} ({report['created_at']}); mAP on {report['data_name']} "
        f"({report['n_eval']} images). Pi 5 and Orin Nano columns are projections (see bench/board_table.py), "
        "not measurements: a real board run must confirm them.",
        "",
        "| Input | mAP50-95 | mAP50 | ripe AP50 | OpenVINO INT8 here (ms) | NCNN FP16 here (ms) | "
        "Pi 5 NCNN FP32, projected (ms) | Pi 5 OpenVINO FP32, projected (ms) | "
        "Orin Nano TensorRT FP16, projected (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        ref = rows.get(("OpenVINO FP32", size)) or rows.get(("ONNX Runtime FP32", size)) or {}
        cells = [f"{size}", f"{ref['mAP50-95']:.4f}" if "mAP50-95" in ref else "–",
                 f"{ref['mAP50']:.4f}" if "mAP50" in ref else "–",
                 f"{ref['per_class']['ripe']['AP50']:.4f}" if "ripe" in ref.get("per_class", {}) else "–"]
        for label in ("OpenVINO INT8", "NCNN FP16"):
            r = rows.get((label, size))
            cells.append(f"{r['median_ms']:.1f}" if r else "–")
        for label in ("NCNN FP32", "OpenVINO FP32"):
            k = ratio(label, size)
            cells.append(f"≈{PUBLISHED['pi5'][label] * k:.0f}" if k else "–")
        cells.append(f"≥{PUBLISHED['orin_nano']['TensorRT FP16'] * (size / 640) ** 2:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    picks = {label: default_size(report, label) for label in ("OpenVINO FP32", "OpenVINO INT8", "NCNN FP16")}
    lines += ["", f"Default-size rule (smallest input whose mAP50 is within {RULE_POINTS:g} point of the best size): "
              + "; ".join(f"{label} → {size if size else 'n/a (no mAP in report)'}" for label, size in picks.items())
              + "."]
    return "\n".join(lines) + "\n"


# the formats the boards run by default: x86 OpenVINO INT8, a Raspberry Pi NCNN FP16 (OpenVINO FP32 as its other)
BOARD_FORMATS = ("OpenVINO FP32", "OpenVINO INT8", "NCNN FP16")


def set_default(report: dict, model_dir: Path, fixed: Optional[int] = None, why: str = "") -> int:
    """Write the rule's answer into the model folder's metadata.json (`default_input_size`, followed when the config
    says model.imgsz: 0), with the evidence; where the formats disagree the largest size wins (accuracy first).

    `fixed` overrides the answer (recorded beside it, with `why`): when no split scores every size fairly, e.g.
    sizes of models that trained on the report's photos, the rule would pick by memory rather than skill.
    """
    picks = {label: default_size(report, label) for label in BOARD_FORMATS}
    measured = {label: size for label, size in picks.items() if size}
    if not measured:
        raise SystemExit("no format with mAP in the report: run ripeye bench with --data")
    if fixed is not None and not why:
        raise SystemExit("--fixed needs --why: the metadata says why the rule's answer is not applied")
    meta_file = model_dir / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["default_input_size"] = fixed if fixed is not None else max(measured.values())
    meta["default_input_size_rule"] = {
        "rule": f"smallest input size whose mAP50 is within {RULE_POINTS:g} point of the best size",
        "per_format": measured, "bench": {"machine": report["machine"], "created_at": report["created_at"],
                                          "data": report["data_name"], "images": report["n_eval"]},
        "mAP50": {f"{label} @{size}": r["mAP50"] for (label, size), r in sorted(rows_by(report).items())
                  if label in measured and "mAP50" in r},
        **({"not_applied": {"fixed": fixed, "why": why}} if fixed is not None else {}),
    }
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    return meta["default_input_size"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="bench.json from `ripeye bench MODEL --imgsz 320,416,512,640 --data …`")
    p.add_argument("--out", help="also write the table here")
    p.add_argument("--set-default", metavar="MODEL_DIR", type=Path,
                   help="write the rule's answer into MODEL_DIR/metadata.json (default_input_size)")
    p.add_argument("--fixed", type=int, help="with --set-default: write this size instead of the rule's answer")
    p.add_argument("--why", default="", help="with --fixed: why the rule's answer is not applied (recorded)")
    args = p.parse_args()
    report = json.loads(Path(args.report).read_text())
    if not isinstance(report.get("imgsz"), list):
        raise SystemExit(f"{args.report}: not a per-size report (run ripeye bench with --imgsz 320,416,...)")
    md = table(report)
    if args.out:
        Path(args.out).write_text(md)
    print(md)
    if args.set_default:
        size = set_default(report, args.set_default, args.fixed, args.why)
        print(f"{args.set_default}/metadata.json: default_input_size {size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
