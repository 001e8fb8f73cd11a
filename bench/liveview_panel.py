"""What the live view's side panel costs on the wire: /api/state polled at the page's own rate for a while on the
sample clip (daemon + real mosquitto + an arm claiming and picking), sizes of the answers and bytes per second.

    .venv/bin/python bench/liveview_panel.py --seconds 60 --out bench/results/liveview_panel.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from local_broker import free_port, start_broker  # noqa: E402

from daemon.web import PANEL_POLL_MS  # noqa: E402


def run(seconds: float, workdir: Path) -> dict:
    import yaml

    broker, port = start_broker(workdir)
    http_port = free_port()
    (workdir / "c.yaml").write_text(yaml.safe_dump({"device_id": "panel", "source": {"uri": "sample"},
                                                    "mqtt": {"port": port}, "http": {"enabled": True,
                                                                                     "port": http_port}}))
    env = {**os.environ, "CI": "true"}
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(workdir / "c.yaml")], cwd=REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    arm = subprocess.Popen([sys.executable, str(REPO / "examples" / "arm_client.py"), "--port", str(port), "--device",
                            "panel", "--arm-id", "left", "--pick-time", "2", "--seconds", str(seconds + 60)], cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}/api/state"
    sizes, targets = [], []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # until the daemon serves and has published frames
            try:
                if json.loads(urllib.request.urlopen(url, timeout=2).read())["fps"] > 0:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        end = time.time() + seconds
        while time.time() < end:
            body = urllib.request.urlopen(url, timeout=5).read()
            sizes.append(len(body))
            targets.append(len(json.loads(body)["targets"]))
            time.sleep(PANEL_POLL_MS / 1000)
    finally:
        arm.terminate()
        daemon.terminate()
        daemon.wait(timeout=20)
        broker.terminate()
    per_s = 1000 / PANEL_POLL_MS
    return {"poll_ms": PANEL_POLL_MS, "polls": len(sizes), "bytes_median": statistics.median(sizes),
            "bytes_max": max(sizes), "targets_listed_median": statistics.median(targets),
            "targets_listed_max": max(targets), "bytes_per_s_median": round(statistics.median(sizes) * per_s),
            "bytes_per_s_max": round(max(sizes) * per_s)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--out")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f = run(args.seconds, Path(tmp))
    print(json.dumps(f))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": os.uname().nodename, "command": " ".join(sys.argv), **f},
                                             indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
