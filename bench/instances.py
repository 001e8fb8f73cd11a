"""Two daemons side by side (ripeye@scene + ripeye@wrist on one board) against one alone: processed FPS of each.

    .venv/bin/python bench/instances.py [--backend auto] [--seconds 20] [--rounds 3]

Each round runs, on the sample clip played losslessly as fast as inference takes it (`realtime: false`), against a
private mosquitto on a free loopback port:
  - one daemon alone (`runtime.threads: 0`: every core);
  - two daemons at once, each with `runtime.threads: 0` (each sizes its pool for every core: 2 × the cores);
  - two daemons at once, each with `runtime.threads` = cores / 2 (the cores split between them).
FPS is read from each daemon's own `stats` messages over the same window once both publish detections (after a
warm-up); medians over the rounds are quoted. The configurations alternate round by round so that drift on a shared
machine hits them all alike, and a window during which other processes used more than --max-other-cores of CPU
is measured again (on a shared machine a neighbour's load would swamp the comparison).
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
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from e2e import Watcher  # noqa: E402
from local_broker import start_broker  # noqa: E402

from daemon.config import SAMPLE_CLIP  # noqa: E402
from daemon.runtimes.base import usable_cores  # noqa: E402


def _busy_jiffies() -> int:
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _proc_jiffies(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def run_together(names: list[str], threads: int, backend: str, port: int, watcher: Watcher, seconds: float,
                 warmup: float, work: Path) -> dict:
    """Start one daemon per name at once; FPS of each over the same window, and how much CPU other processes on the
    machine used meanwhile (in cores)."""
    procs = []
    t0 = time.perf_counter()
    for name in names:
        cfg = {"device_id": name, "source": {"uri": str(SAMPLE_CLIP), "realtime": False},
               "runtime": {"backend": backend, "threads": threads}, "state_dir": str(work / name),
               "mqtt": {"port": port, "topic_prefix": "bench"}, "stats": {"interval_s": 1}}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        procs.append(subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=REPO,
                                      env={**os.environ, "CI": "true"}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    try:
        for name in names:
            watcher.first(f"/{name}/detections", after=t0, timeout=180)
        time.sleep(warmup)
        start, busy0, ours0 = time.perf_counter(), _busy_jiffies(), sum(_proc_jiffies(p.pid) for p in procs)
        time.sleep(seconds)
        end, busy1, ours1 = time.perf_counter(), _busy_jiffies(), sum(_proc_jiffies(p.pid) for p in procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    others = max(0, (busy1 - busy0) - (ours1 - ours0)) / os.sysconf("SC_CLK_TCK") / (end - start)
    fps: dict = {"other_cores": round(others, 2)}
    for name in names:
        stats = [json.loads(p) for t, topic, p in watcher.msgs
                 if topic == f"bench/{name}/stats" and start <= t <= end]
        a, b = stats[0], stats[-1]
        fps[name] = round((b["processed"] - a["processed"]) / (b["at"] - a["at"]), 2)
        fps[f"{name}_backend"] = f"{b.get('backend')} {b.get('precision', '')}".strip()
    return fps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="auto")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-other-cores", type=float, default=0.2,
                   help="measure a configuration again when other processes used more CPU than this meanwhile")
    p.add_argument("--retries", type=int, default=8)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args()
    cores = usable_cores()
    half = max(1, cores // 2)
    configs = {"one alone": (["solo"], 0), "two, each all cores": (["scene", "wrist"], 0),
               f"two, {half} thread(s) each": (["scene", "wrist"], half)}
    work = Path(tempfile.mkdtemp(prefix="ripeye-instances-"))
    broker, port = start_broker(work)
    watcher = Watcher(port)
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    try:
        for r in range(args.rounds):
            for label, (names, threads) in configs.items():
                for _ in range(args.retries + 1):
                    got = run_together(names, threads, args.backend, port, watcher, args.seconds, args.warmup, work)
                    if got["other_cores"] <= args.max_other_cores:
                        break
                    print(f"[instances] {label}: other processes used {got['other_cores']} cores meanwhile; again",
                          file=sys.stderr, flush=True)
                    time.sleep(10)
                runs[label].append(got)
                print(f"[instances] round {r + 1}/{args.rounds}: {label}: {got}", file=sys.stderr, flush=True)
    finally:
        watcher.c.loop_stop()
        broker.terminate()
    from daemon.bench import machine_name

    rows = {}
    for label, (names, threads) in configs.items():
        each = {n: round(statistics.median(x[n] for x in runs[label]), 2) for n in names}
        rows[label] = {"threads": threads, "fps": each, "total_fps": round(sum(each.values()), 2),
                       "fps_rounds": [{n: x[n] for n in names} for x in runs[label]],
                       "other_cores_rounds": [x["other_cores"] for x in runs[label]],
                       "backend": runs[label][0][f"{names[0]}_backend"]}
    alone = rows["one alone"]["total_fps"]
    for row in rows.values():
        row["vs_alone_each"] = {n: round(v / alone, 3) for n, v in row["fps"].items()}
    report = {"machine": machine_name(), "cores": cores,
              "created_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "backend": args.backend,
              "seconds": args.seconds, "rounds": args.rounds, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "instances.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Machine: {report['machine']}, {cores} usable cores; sample clip played losslessly "
             f"(realtime: false), backend {args.backend}; FPS from each daemon's stats over {args.seconds:.0f} s; "
             f"medians of {args.rounds} interleaved rounds.", "",
             "| Configuration | runtime.threads | FPS per daemon | Sum | Each vs one alone |", "|---|---|---|---|---|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['threads'] or 'all'} | "
                     f"{', '.join(f'{n} {v}' for n, v in row['fps'].items())} | {row['total_fps']} | "
                     f"{', '.join(f'{v}×' for v in row['vs_alone_each'].values())} |")
    (out / "instances.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
