"""Soak test (not for CI): run the daemon at full speed for a long time and report RSS drift and frames lost.

    .venv/bin/python bench/soak.py --minutes 30

Frames are played losslessly (source.realtime: false), so every frame the capture reads should be published:
`lost` counts the frame ids missing from the detections received (gaps between 1 and the last id received, so
frames still in flight at shutdown are not miscounted), and RSS drift compares the mean of the last 5 minutes
with minutes 2–7.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from local_broker import start_broker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ripeye-soak-"))
    broker, port = start_broker(work)
    stats: list[dict] = []
    received_ids: set[int] = set()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, pr=None: cl.subscribe("soak/#")

    def on_message(cl, u, m):
        if m.topic.endswith("/stats"):
            stats.append({"t": time.time(), **json.loads(m.payload)})
        elif m.topic.endswith("/detections"):
            received_ids.add(json.loads(m.payload)["frame_id"])

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    cfg = {"device_id": "soak", "source": {"uri": "sample", "realtime": False},
           "mqtt": {"port": port, "topic_prefix": "soak"}, "stats": {"interval_s": 10}}
    if args.model:
        cfg["model"] = {"path": args.model}
    (work / "soak.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(work / "soak.yaml")], cwd=REPO,
                            stdout=open(work / "daemon.log", "w"), stderr=subprocess.STDOUT)
    t0 = time.time()
    try:
        while time.time() - t0 < args.minutes * 60 and proc.poll() is None:
            time.sleep(5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        time.sleep(1)
        c.loop_stop()
        broker.terminate()
    early = [s["rss_mb"] for s in stats if 120 <= s["t"] - t0 <= 420]
    late = [s["rss_mb"] for s in stats if s["t"] - t0 >= args.minutes * 60 - 300]
    last = stats[-1] if stats else {}
    report = {
        "minutes": args.minutes, "crashed": proc.returncode not in (0, -15),
        "rss_early_mb": round(statistics.mean(early), 1) if early else None,
        "rss_late_mb": round(statistics.mean(late), 1) if late else None,
        "processed": last.get("processed"), "captured": last.get("captured"),
        "dropped_frames": last.get("dropped_frames"), "detections_received": len(received_ids),
        "fps": last.get("fps"),
    }
    if early and late:
        report["rss_drift_pct"] = round((report["rss_late_mb"] / report["rss_early_mb"] - 1) * 100, 2)
    if received_ids:
        report["last_frame_id"] = max(received_ids)
        report["lost"] = max(received_ids) - len(received_ids)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
