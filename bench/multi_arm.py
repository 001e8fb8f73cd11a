"""Several arms on one camera: N copies of examples/arm_client.py (separate processes, own arm ids) against the
daemon on the sample clip and a real mosquitto; one arm is SIGKILLed while it holds a claim.

Figures: targets offered, picks per arm, track ids picked by more than one arm or reported picked twice (must be
0), grants refused to a second arm, and how long the killed arm's claim stayed held (its last will releases it).

    .venv/bin/python bench/multi_arm.py --arms 2 3 --seconds 60 --out bench/results/multi_arm.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from local_broker import start_broker  # noqa: E402

PREFIX, DEVICE = "arms", "cam"
SHARED_RESULTS = ("arm/claim/result", "arm/picked/result", "arm/failed/result")


def _collector(port: int):
    import paho.mqtt.client as mqtt

    got: list[tuple[float, str, dict]] = []
    lock = threading.Lock()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{PREFIX}/{DEVICE}/#", qos=1)

    def on_message(c, u, msg):
        suffix = msg.topic.split("/", 2)[2]
        if suffix.startswith(("targets", "arm/", "stats")) and not suffix.endswith("/status"):
            with lock:
                got.append((time.time(), suffix, json.loads(msg.payload)))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, got, lock


def run(arms: int, seconds: float, workdir: Path, port: int | None = None, kill_after_s: float = 20.0,
        pick_time_s: float = 1.5, claim_timeout_s: float = 10.0) -> dict:
    """The daemon on the looping sample clip for `seconds` with `arms` arm processes; returns the figures."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    if port is None:
        broker, port = start_broker(workdir)
    client, got, lock = _collector(port)
    cfg = {"device_id": DEVICE, "source": {"uri": "sample"}, "stats": {"interval_s": 1},
           "mqtt": {"port": port, "topic_prefix": PREFIX}, "targets": {"claim_timeout_s": claim_timeout_s}}
    (workdir / "arms.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "CI": "true"}
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(workdir / "arms.yaml")],
                              cwd=REPO, env=env, stdout=open(workdir / "daemon.log", "w"), stderr=subprocess.STDOUT)
    ids = [f"arm{i + 1}" for i in range(arms)]
    procs = {a: subprocess.Popen([sys.executable, str(REPO / "examples" / "arm_client.py"), "--port", str(port),
                                  "--prefix", PREFIX, "--device", DEVICE, "--arm-id", a, "--seed", str(i),
                                  "--pick-time", str(pick_time_s), "--fail-rate", "0.2", "--seconds",
                                  str(seconds + 5), "--report", str(workdir / f"{a}.json")], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, a in enumerate(ids)}
    victim, killed_at, held = None, None, None
    # what the messages so far say, read once each as they arrive: arms that have picked, claim grants, and when
    # each track's claim last ended (withdrawn by a scene cut, offered again, picked or failed)
    scanned, pickers, grants, ended = 0, set(), [], {}
    started = time.time()
    try:
        while time.time() - started < seconds:
            time.sleep(0.02)
            with lock:
                new, scanned = got[scanned:], len(got)
            for t, s, b in new:
                if s == "arm/picked/result" and b.get("ok"):
                    pickers.add(b.get("arm_id"))
                if (s.startswith("arm/") and s.endswith("/result") and s.split("/")[1] in ids
                        and b.get("action") == "claim" and b.get("granted") and not b.get("duplicate")):
                    grants.append((t, s.split("/")[1], b["track_id"]))
                if (s == "targets" and b.get("state") in ("available", "lost")) or s.endswith(
                        ("picked/result", "failed/result")):
                    ended[b.get("track_id")] = t
            if killed_at is None and time.time() - started >= kill_after_s:
                now = time.time()
                if len(pickers) < len(ids) and now - started < seconds / 2:
                    continue  # every arm has worked before one is killed (a slow start must not leave one idle)
                # an arm granted a claim in the last 0.5 s is cutting now (picks take pick_time_s) and still holds
                # it when no end of that claim came after the grant (a claim that ended before the kill leaves
                # the last will nothing to release)
                fresh = [(arm, tid) for granted_at, arm, tid in grants
                         if now - granted_at < 0.5 and ended.get(tid, 0.0) <= granted_at]
                if fresh and pick_time_s > 0.5:
                    victim, held = fresh[-1]
                    procs[victim].send_signal(signal.SIGKILL)  # killed mid-cut: its claim must not outlive it
                    killed_at = time.time()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # a clean stop: the arm writes its report and says "offline"
        for p in procs.values():
            p.wait(timeout=30)
        daemon.terminate()
        daemon.wait(timeout=20)
        client.loop_stop()
        if broker:
            broker.terminate()
    return analyse(got, ids, victim or ids[-1], killed_at, held, started, seconds, claim_timeout_s)


def analyse(got, ids, victim, killed_at, held, started, seconds, claim_timeout_s) -> dict:
    picked_ok = [b for _, s, b in got if s == "arm/picked/result" and b.get("ok") and not b.get("duplicate")]
    per_track = Counter(b["track_id"] for b in picked_ok)
    grants = [b for _, s, b in got if s == "arm/claim/result" and b.get("granted") and not b.get("duplicate")]
    holder: dict[int, str] = {}
    overlapping = 0  # a grant to one arm while another still held the claim
    for _, s, b in got:
        tid = b.get("track_id")
        if s == "arm/claim/result" and b.get("granted") and not b.get("duplicate"):
            overlapping += tid in holder and holder[tid] != b["arm_id"]
            holder[tid] = b["arm_id"]
        elif (s in ("arm/picked/result", "arm/failed/result") and b.get("ok")) or (
                s == "targets" and b.get("state") in ("available", "lost")):
            holder.pop(tid, None)  # done, or offered again / withdrawn: nobody holds it now
    offered = {b["track_id"] for _, s, b in got if s == "targets" and b["state"] == "available"}
    released_after_s = None
    if killed_at is not None:
        after = [(t, b) for t, s, b in got if t >= killed_at and s == "targets" and b.get("track_id") == held]
        if after:
            released_after_s = round(after[0][0] - killed_at, 2)
    last_stats = next((b for _, s, b in reversed(got) if s == "stats"), {})
    claims_at_end = (last_stats.get("targets") or {}).get("claims_by_arm", {})
    return {
        "arms": len(ids), "seconds": seconds, "targets_offered": len(offered),
        "picked_by_arm": dict(Counter(b["arm_id"] for b in picked_ok)),
        "picked": len(picked_ok), "tracks_picked_twice": sum(1 for n in per_track.values() if n > 1),
        "grants": len(grants), "grants_while_another_arm_held_it": overlapping,
        "claims_refused": sum(1 for _, s, b in got if s == "arm/claim/result" and b.get("granted") is False),
        "failed_reports_refused": sum(1 for _, s, b in got if s == "arm/failed/result" and not b.get("ok")),
        "refusal_reasons": dict(Counter(re.sub(r"\d+", "N", b["error"].split(";")[0].split(":")[0])[:80]
                                        for _, s, b in got if s in SHARED_RESULTS and not b.get("ok"))),
        "killed_arm": victim if killed_at else None,
        "killed_at_s": round(killed_at - started, 1) if killed_at else None, "killed_holding_track": held,
        "killed_arm_claim_released_after_s": released_after_s, "claim_timeout_s": claim_timeout_s,
        "claims_by_arm_at_end": claims_at_end,
        "claims_released_by_last_will": (last_stats.get("targets") or {}).get("released"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", type=int, nargs="+", default=[2, 3])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args()
    results = []
    for n in args.arms:
        with tempfile.TemporaryDirectory() as tmp:
            f = run(n, args.seconds, Path(tmp))
        print(json.dumps(f))
        results.append(f)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": os.uname().nodename, "command": " ".join(sys.argv),
                                              "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
