"""The field loop on a simulated new greenhouse: capture on the device, label, retrain, compare (issue 28, item 6).

The "new greenhouse" is the base set's validation photos as a daylight-balanced camera sees them under
high-pressure sodium lamps (daemon/lamps.py): the shipped model was never trained on them and never selected on
anything lit like them. Steps (each reads the previous one's output under --work):

    build    the lamp-lit photos, their ground truth in the model's class names, and a clip that shows each photo
             for --hold frames (MJPG: the frames a camera would deliver)
    run      the daemon plays the clip once (lossless) with capture on, a local mosquitto and examples/arm_client.py
             failing --fail-rate of its picks; the capture store is what a grower would copy off the device
    label    `ripeye dataset export --format labelstudio`, then each task is labelled with the ground truth of its
             photo (a person in Label Studio, simulated; the real tool is tested in tests/test_labelstudio.py) and
             `ripeye dataset import` reads the labelled export back into a field set
    (train)  ripeye train --data <base> --data WORK/field ... (printed by `label`; CPU hours, run it yourself)
    figures  `ripeye compare` of the shipped model and the candidate on the base valid split and the field holdout,
             plus the capture and label counts, into --out

    .venv/bin/python bench/field_loop.py build run label --work ~/field-loop
    .venv/bin/python bench/field_loop.py figures --work ~/field-loop --candidate ~/field-loop/candidate \\
        --out bench/results/field_loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from local_broker import start_broker  # noqa: E402

from daemon.lamps import cast  # noqa: E402

BASE = REPO.parent / "shared" / "datasets" / "laboro-tomato-big"
CLASS_MAP = {"b_fully_ripened": "ripe", "b_half_ripened": "half_ripe", "b_green": "unripe"}
CLASSES = ["ripe", "half_ripe", "unripe"]
LAMP_SOURCE = ("Laboro Tomato validation photos (Laboro.AI, via Roboflow big_tomatoes_dataset v2) re-lit as under "
               "high-pressure sodium lamps by daemon/lamps.py")
LAMP_LICENCE = "CC BY-NC-SA 4.0 (Laboro Tomato, Laboro.AI): non-commercial, attribution, share alike"


def build(work: Path, lamp: str, strength: float, hold: int) -> None:
    """Lamp-lit photos + ground truth in the model's classes + a clip holding each photo `hold` frames."""
    coco = json.loads((BASE / "annotations" / "valid.json").read_text())
    by_id = {c["id"]: c["name"] for c in coco["categories"]}
    cats = [{"id": i, "name": n, "supercategory": "tomato"} for i, n in enumerate(CLASSES, 1)]
    photos = work / "greenhouse"
    photos.mkdir(parents=True, exist_ok=True)
    images = sorted(coco["images"], key=lambda im: im["file_name"])
    writer = None
    for im in images:
        lit = cast(cv2.imread(str(BASE / "valid" / im["file_name"])), lamp, strength)
        cv2.imwrite(str(photos / im["file_name"]), lit, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if writer is None:
            h, w = lit.shape[:2]
            writer = cv2.VideoWriter(str(work / "greenhouse.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for _ in range(hold):
            writer.write(lit)
    writer.release()
    truth = {"categories": cats, "images": images,
             "annotations": [{**a, "category_id": CLASSES.index(CLASS_MAP[by_id[a["category_id"]]]) + 1}
                             for a in coco["annotations"] if by_id[a["category_id"]] in CLASS_MAP]}
    (work / "greenhouse.json").write_text(json.dumps(truth) + "\n")
    print(f"built {len(images)} {lamp} photos (strength {strength}) and a {len(images) * hold}-frame clip in {work}")


def run(work: Path, fail_rate: float, hold: int, timeout_s: float) -> None:
    """The daemon on the clip with capture on and a simulated arm; waits until every frame is processed."""
    import paho.mqtt.client as mqtt
    import yaml

    frames = len(json.loads((work / "greenhouse.json").read_text())["images"]) * hold
    store = work / "store"
    cfg = {"device_id": "greenhouse", "source": {"uri": str(work / "greenhouse.avi"), "realtime": False,
                                                 "loop": False},
           "stats": {"interval_s": 2}, "state_dir": str(work / "state"),
           # the hourly limits are sized for months on a device; this run squeezes a day's worth into minutes
           "capture": {"enabled": True, "dir": str(store), "sample_per_hour": 600,
                       "per_hour": {t: 10000 for t in ("failed", "uncertain", "class_change", "lost_ripe",
                                                       "sample")}}}
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        cfg["mqtt"] = {"port": port}
        (work / "run.yaml").write_text(yaml.safe_dump(cfg))
        last: dict = {}
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("ripeye/greenhouse/stats")
        sub.on_message = lambda c, u, m: last.update(json.loads(m.payload))
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        env = {**os.environ, "CI": "true"}
        daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(work / "run.yaml")],
                                  cwd=REPO, env=env, stdout=open(work / "daemon.log", "w"), stderr=subprocess.STDOUT)
        arm = subprocess.Popen([sys.executable, "examples/arm_client.py", "--port", str(port), "--device",
                                "greenhouse", "--arm-id", "arm1", "--fail-rate", str(fail_rate), "--seed", "0",
                                "--report", str(work / "arm.json")], cwd=REPO, env=env,
                               stdout=open(work / "arm.log", "w"), stderr=subprocess.STDOUT)
        t0 = time.time()
        try:
            while time.time() - t0 < timeout_s and last.get("processed", 0) < frames:
                time.sleep(1)
            time.sleep(4)  # the last samples reach the disk, the last stats leave
        finally:
            arm.terminate()
            daemon.terminate()
            daemon.wait(timeout=30)
            arm.wait(timeout=10)
            sub.loop_stop()
            broker.terminate()
    (work / "run_stats.json").write_text(json.dumps(last, indent=1) + "\n")
    print(f"processed {last.get('processed')} of {frames} frames in {time.time() - t0:.0f} s; "
          f"capture: {json.dumps(last.get('capture'))}")


def _thumb(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def label(work: Path) -> None:
    """Export for Label Studio, label each task with its photo's ground truth, import the labelled export."""
    export_dir = work / "export"
    subprocess.run([sys.executable, "-m", "daemon", "dataset", "export", str(work / "store"), "--to",
                    str(export_dir), "--format", "labelstudio", "--triggers", "all"], cwd=REPO, check=True)
    truth = json.loads((work / "greenhouse.json").read_text())
    photos = truth["images"]
    thumbs = np.stack([_thumb(cv2.imread(str(work / "greenhouse" / im["file_name"]))) for im in photos])
    boxes: dict[int, list] = {}
    for a in truth["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a)
    tasks = json.loads((export_dir / "tasks.json").read_text())
    worst = 0.0
    per_trigger, matched = Counter(), Counter()
    for task in tasks:
        frame = cv2.imread(str(export_dir / "images" / task["data"]["file"]))
        diffs = np.abs(thumbs - _thumb(frame)).mean(axis=(1, 2))
        k = int(np.argmin(diffs))
        worst = max(worst, float(diffs[k]))
        photo = photos[k]
        h, w = frame.shape[:2]
        sx, sy = w / photo["width"], h / photo["height"]
        result = [{"id": f"gt{j}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                   "original_width": w, "original_height": h, "image_rotation": 0,
                   "value": {"x": 100 * a["bbox"][0] * sx / w, "y": 100 * a["bbox"][1] * sy / h,
                             "width": 100 * a["bbox"][2] * sx / w, "height": 100 * a["bbox"][3] * sy / h,
                             "rotation": 0, "rectanglelabels": [CLASSES[a["category_id"] - 1]]}}
                  for j, a in enumerate(boxes.get(photo["id"], []))]
        task["annotations"] = [{"id": 1, "result": result, "was_cancelled": False,
                                "created_at": "2026-12-05T00:00:00Z"}]
        task["data"]["source_photo"] = photo["file_name"]
        per_trigger[task["data"].get("trigger")] += 1
        matched[photo["file_name"]] += 1
    labelled = export_dir / "labelled.json"
    labelled.write_text(json.dumps(tasks) + "\n")
    field = work / "field"
    subprocess.run([sys.executable, "-m", "daemon", "dataset", "import", str(labelled), "--format", "labelstudio",
                    "--images", str(export_dir / "images"), "--out", str(field), "--source", LAMP_SOURCE,
                    "--licence", LAMP_LICENCE], cwd=REPO, check=True)
    summary = {"tasks": len(tasks), "per_trigger": dict(per_trigger), "photos_covered": len(matched),
               "boxes_labelled": sum(len(t["annotations"][0]["result"]) for t in tasks),
               "worst_thumbnail_match": round(worst, 2)}
    (work / "label_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    print(f"next: ripeye train --data {BASE} --data {field} --init models/tomato-yolo11n/model.pt --work "
          f"{work / 'train'} --out {work / 'candidate'} ...")


def clean_photos_of(holdout: Path, out: Path) -> Path:
    """The base valid split cut to the photos behind the field holdout, in daylight: photos no training step saw in
    any light (the field training photos' daylight versions are in base valid, so its full figure flatters a
    candidate trained on them under the lamp)."""
    photos = {im["source_photo"] for im in json.loads(holdout.read_text())["images"]}
    coco = json.loads((BASE / "annotations" / "valid.json").read_text())
    images = [im for im in coco["images"] if im["file_name"] in photos]
    ids = {im["id"] for im in images}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "valid").mkdir(exist_ok=True)
    for im in images:
        link = out / "valid" / im["file_name"]
        if not link.exists():
            link.symlink_to(BASE / "valid" / im["file_name"])
    path = out / "annotations" / "valid.json"
    path.write_text(json.dumps({**coco, "images": images,
                                "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}) + "\n")
    return path


def figures(work: Path, candidate: Path, current: Path, out: Path | None, tolerance: float) -> int:
    """`ripeye compare` on the base valid split and the field holdout, with the capture and label counts."""
    sources = json.loads((candidate / "metadata.json").read_text())["training"]["sources"]
    holdout = next(s["holdout_json"] for s in sources if s.get("role") == "field")
    unseen = clean_photos_of(Path(holdout), work / "base-unseen")
    report = work / "compare.json"
    cmd = [sys.executable, "-m", "daemon", "compare", str(current), str(candidate),
           "--data", f"base valid={BASE / 'annotations' / 'valid.json'}", "--data", f"field holdout={holdout}",
           "--data", f"base valid, holdout photos={unseen}", "--tolerance", str(tolerance), "--json", str(report)]
    rc = subprocess.run(cmd, cwd=REPO).returncode
    result = {"machine": os.uname().nodename, "command": " ".join(sys.argv), "compare_command": " ".join(cmd[2:]),
              "compare_exit": rc, "run": json.loads((work / "run_stats.json").read_text()).get("capture"),
              "labels": json.loads((work / "label_summary.json").read_text()),
              "sources": [{k: v for k, v in s.items() if k not in ("holdout_images",)} for s in sources],
              "compare": json.loads(report.read_text())}
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return rc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("steps", nargs="+", choices=["build", "run", "label", "figures"])
    p.add_argument("--work", default=str(Path.home() / "field-loop"))
    p.add_argument("--lamp", default="hps")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--hold", type=int, default=8, help="frames each photo is shown for")
    p.add_argument("--fail-rate", type=float, default=0.5, help="share of the simulated arm's picks that fail")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--candidate", default=None)
    p.add_argument("--current", default=str(REPO / "models" / "tomato-yolo11n"))
    p.add_argument("--tolerance", type=float, default=1.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    for step in args.steps:
        if step == "build":
            build(work, args.lamp, args.strength, args.hold)
        elif step == "run":
            run(work, args.fail_rate, args.hold, args.timeout)
        elif step == "label":
            label(work)
        elif step == "figures":
            return figures(work, Path(args.candidate or work / "candidate"), Path(args.current),
                           Path(args.out) if args.out else None, args.tolerance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
