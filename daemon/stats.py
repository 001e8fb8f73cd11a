"""Rolling per-stage latency and throughput counters for the stats topic and benchmarks."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

STAGES = ("capture", "preprocess", "inference", "postprocess", "publish", "total")


class StageTimes:
    """Recent latencies per stage (ms) and processed-frame timestamps for an FPS over a window."""

    def __init__(self, window: int = 300):
        self.lock = threading.Lock()
        self.samples = {s: deque(maxlen=window) for s in STAGES}
        self.done_at: deque[float] = deque(maxlen=window)
        self.processed = 0

    def add(self, latencies: dict[str, float]) -> None:
        with self.lock:
            for stage, ms in latencies.items():
                if stage in self.samples:
                    self.samples[stage].append(ms)
            self.done_at.append(time.perf_counter())
            self.processed += 1

    def fps(self) -> float:
        with self.lock:
            if len(self.done_at) < 2:
                return 0.0
            span = self.done_at[-1] - self.done_at[0]
            return (len(self.done_at) - 1) / span if span > 0 else 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        with self.lock:
            out = {}
            for stage, values in self.samples.items():
                if values:
                    arr = np.fromiter(values, dtype=np.float64)
                    out[stage] = {"median": round(float(np.median(arr)), 2),
                                  "p90": round(float(np.percentile(arr, 90)), 2)}
            return out
