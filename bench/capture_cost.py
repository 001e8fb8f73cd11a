"""What field capture costs the running daemon: FPS on the sample clip with capture off and on (default settings),
alternating runs in one go, the clip played as fast as the daemon takes it (lossless file mode).

    .venv/bin/python bench/capture_cost.py --seconds 40 --rounds 2 --out bench/results/capture_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from local_broker import start_broker  # noqa: E402


def one_run(capture: bool, seconds: float, workdir: Path, port: int) -> dict:
    import paho.mqtt.client as mqtt
    import yaml

    name = "on" if capture else "off"
    cfg = {"device_id": f"cost-{name}", "source": {"uri": "sample", "realtime": False},
           "mqtt": {"port": port}, "stats": {"interval_s": 2}, "state_dir": str(workdir / name),
           "capture": {"enabled": capture}}
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    stats: list[dict] = []
    lock = threading.Lock()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"ripeye/cost-{name}/stats")
    sub.on_message = lambda c, u, m: (lock.acquire(), stats.append(json.loads(m.payload)), lock.release())
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(workdir / f"{name}.yaml")],
                            cwd=REPO, env={**os.environ, "CI": "true"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        sub.loop_stop()
    warm = [s for s in stats if s["processed"] > 20][1:]  # past the start-up
    kept = (warm[-1].get("capture") or {}).get("kept", {}) if warm else {}
    return {"capture": capture, "fps_median": round(statistics.median(s["fps"] for s in warm), 2) if warm else None,
            "samples_kept": kept, "stats_messages": len(warm)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            for _ in range(args.rounds):
                for capture in (False, True):
                    runs.append(one_run(capture, args.seconds, Path(tmp), port))
                    print(json.dumps(runs[-1]), flush=True)
        finally:
            broker.terminate()
    off = statistics.median(r["fps_median"] for r in runs if not r["capture"])
    on = statistics.median(r["fps_median"] for r in runs if r["capture"])
    result = {"machine": os.uname().nodename, "command": " ".join(sys.argv), "runs": runs, "fps_off": off,
              "fps_on": on, "cost_percent": round((off - on) / off * 100, 2)}
    print(json.dumps({k: result[k] for k in ("fps_off", "fps_on", "cost_percent")}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
