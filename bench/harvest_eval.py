"""Harvest figures on the sample clip: track-id switches per ripe tomato, re-announcements of picked tomatoes,
whether every qualifying ripe tomato was offered, what the arm was sent to (wrong-fruit offers), and target vs
detection latency.

Runs `ripeye run` on the clip (played once) against a private mosquitto with examples/arm_client.py picking,
then scores the messages against the clip's ground truth (tests/fixtures/sample_clip_truth.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from local_broker import start_broker  # noqa: E402

from daemon.harvest import box_iou  # noqa: E402

TRUTH = REPO / "tests" / "fixtures" / "sample_clip_truth.json"
NO_FRUIT = "no fruit"  # an offer whose box covers no tomato of the truth


def match_frame(dets: list[dict], truth_boxes: list[dict], min_iou: float = 0.5) -> dict[int, str]:
    """Greedy IoU matching: detection index → ground-truth object."""
    pairs = sorted(((box_iou(d["box"], t["box"]), i, t["object"]) for i, d in enumerate(dets)
                    for t in truth_boxes), reverse=True)
    used_d, used_t, out = set(), set(), {}
    for iou, i, obj in pairs:
        if iou < min_iou:
            break
        if i in used_d or obj in used_t:
            continue
        used_d.add(i)
        used_t.add(obj)
        out[i] = obj
    return out


def offered_object(target: dict, frames: dict) -> str | None:
    """The tomato an offer sent the arm to: the one its box covers in the frame it was offered from (None when it
    covers none).

    A track's first object is not always it: where two fruit overlap the detector can see them as one box that
    drifts from the front one to the one behind (3:362 → 3:363 in the clip); the arm goes where the box is.
    """
    f = frames.get(target.get("frame_id"))
    if f is not None and "box" in target:
        matched = match_frame([target], f["boxes"])
        if matched:
            return matched[0]
    return None


def analyse(detections: list[dict], arm_log: list[dict], truth: dict, min_confidence: float = 0.5,
            min_frames: int = 3, target_classes: tuple[str, ...] = ("ripe",)) -> dict:
    frames = {f["frame"]: f for f in truth["frames"]}
    truth_class = {b["object"]: b["class"] for f in truth["frames"] for b in f["boxes"]}
    tracks_of: dict[str, list[int]] = {}
    ripe_run: dict[str, int] = {}  # current run of consecutive clearly-ripe observations per object
    ripe_best: dict[str, int] = {}  # longest such run
    object_of_track: dict[int, str] = {}
    picked_at = {e["track_id"]: e["arrived"] for e in arm_log if e["kind"] == "picked_result" and e.get("ok")}
    offered = [e for e in arm_log if e["kind"] == "target" and e["state"] == "available"]
    # each offer's tomato by its box alone (the track's first tomato, known after the loop, is the fallback)
    offered_by_box = {id(e): offered_object(e, frames) for e in offered}
    # the tomato each picked track was offered for (the last offer before its pick)
    picked_for = {e["track_id"]: offered_by_box[id(e)] for e in offered if e["track_id"] in picked_at}
    for msg in sorted(detections, key=lambda m: m["frame_id"]):
        f = frames.get(msg["frame_id"])
        if f is None:
            continue
        for i, obj in match_frame(msg["detections"], f["boxes"]).items():
            d = msg["detections"][i]
            if d.get("track_id") is None:
                continue
            tracks_of.setdefault(obj, []).append(d["track_id"])
            object_of_track.setdefault(d["track_id"], obj)
            # Another tomato seen on a track the arm already picked cannot be offered through it (picked is final
            # for a track): one box over two overlapping fruit can drift from the picked one onto the one behind.
            drifted = (msg.get("published_at", 0.0) > picked_at.get(d["track_id"], float("inf"))
                       and picked_for.get(d["track_id"]) not in (None, obj))
            clearly_ripe = d["class"] == "ripe" and d["confidence"] >= min_confidence and not drifted
            ripe_run[obj] = ripe_run.get(obj, 0) + 1 if clearly_ripe else 0
            ripe_best[obj] = max(ripe_best.get(obj, 0), ripe_run[obj])
    ripe_objects = [o for o in tracks_of if truth_class[o] == "ripe"]
    switches = {o: len(dict.fromkeys(tracks_of[o])) - 1 for o in ripe_objects}
    object_offered = {id(e): offered_by_box[id(e)] or object_of_track.get(e["track_id"]) for e in offered}
    offered_objects = set(object_offered.values())
    # Tomatoes the detector saw as clearly ripe in `min_frames + 1` processed frames in a row: the debounce
    # (min_frames, min_age_ms, smoothed score) must have let each of them through.
    qualifying = [o for o, n in ripe_best.items() if n >= min_frames + 1]
    object_of_pick = {e["track_id"]: object_offered[id(e)] for e in offered}  # each track's last offer
    # What the arm was sent to, by the truth class of the fruit each offered track's last offer covered: an offer of
    # a half-ripe or unripe fruit (or of no fruit) is a wrong pick, however well tracking and debouncing did
    offered_truth = Counter(truth_class.get(obj, NO_FRUIT) if obj else NO_FRUIT for obj in object_of_pick.values())
    wrong = sum(n for cls, n in offered_truth.items() if cls not in target_classes)
    picked_objects = {object_of_pick.get(t, object_of_track.get(t)): when for t, when in picked_at.items()}
    reannounced = [e for e in offered if e["track_id"] in picked_at and e["arrived"] > picked_at[e["track_id"]]]
    reoffered_objects = [e for e in offered if e["track_id"] not in picked_at
                         and object_offered[id(e)] is not None and object_offered[id(e)] in picked_objects
                         and e["arrived"] > picked_objects[object_offered[id(e)]]]
    det_latency = [m["published_at"] - m["captured_at"] for m in detections]
    target_latency = [e["published_at"] - e["captured_at"] for e in offered if "published_at" in e]
    return {
        "ripe_tomatoes_tracked": len(ripe_objects),
        "id_switches_max": max(switches.values(), default=0),
        "id_switches_mean": round(statistics.mean(switches.values()), 3) if switches else 0.0,
        "qualifying_ripe": len(qualifying),
        "qualifying_offered": sum(1 for o in qualifying if o in offered_objects),
        "not_offered": {o: {"tracks": list(dict.fromkeys(tracks_of[o])), "ripe_run": ripe_best[o]}
                        for o in qualifying if o not in offered_objects},
        "targets_offered": len({e["track_id"] for e in offered}),
        "picked": len(picked_at),
        "offered_by_truth_class": dict(sorted(offered_truth.items())),
        "wrong_offers": wrong,
        "wrong_offer_share": round(wrong / len(object_of_pick), 3) if object_of_pick else 0.0,
        "reannounced_after_pick": len(reannounced),
        "reoffered_same_tomato_after_pick": len(reoffered_objects),
        "detection_latency_ms_median": round(statistics.median(det_latency) * 1000, 2) if det_latency else None,
        "target_latency_ms_median": round(statistics.median(target_latency) * 1000, 2) if target_latency else None,
    }


def run(model: str | None, fps: float, workdir: Path, port: int | None = None, threads: int = 0) -> dict:
    """Play the clip once through the daemon with the arm simulator picking; return analyse()'s figures."""
    import paho.mqtt.client as mqtt
    import yaml

    sys.path.insert(0, str(REPO / "examples"))
    from arm_client import ArmSimulator

    broker = None
    if port is None:
        broker, port = start_broker(workdir)
    detections: list[dict] = []
    lock = threading.Lock()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("harvest/clip/detections", qos=0)

    def on_detections(client, userdata, msg):
        with lock:
            detections.append(json.loads(msg.payload))

    sub.on_message = on_detections
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    arm = ArmSimulator("127.0.0.1", port, "harvest", "clip", pick_time_s=0.0).start()
    # lossless (realtime false): every frame is tracked, however slow this machine
    cfg = {"device_id": "clip", "source": {"uri": "sample", "loop": False, "fps": fps, "realtime": False},
           "mqtt": {"port": port, "topic_prefix": "harvest"}, "runtime": {"threads": threads},
           "stats": {"interval_s": 1}}
    if model:
        cfg["model"] = {"path": model}
    path = workdir / "harvest.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(workdir / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        truth = json.loads(TRUTH.read_text())
        last = len(truth["frames"])
        deadline = time.time() + 30 + last / fps * 3
        while time.time() < deadline:
            with lock:
                done = any(m["frame_id"] >= last - 2 for m in detections)
            if done or proc.poll() is not None:
                break
            time.sleep(0.2)
        time.sleep(1.5)  # let the last tracks end and be withdrawn
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        arm.stop()
        sub.loop_stop()
        if broker:
            broker.terminate()
    with lock:
        return analyse(list(detections), list(arm.log), truth)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--fps", type=float, default=10.0, help="clip playback rate (the clip's own is 10)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "harvest.json"))
    args = p.parse_args()
    figures = run(args.model, args.fps, Path(tempfile.mkdtemp(prefix="ripeye-harvest-")))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
