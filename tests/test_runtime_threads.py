"""Every runtime sizes its thread pool from the cores the process may use (sched_getaffinity), also inside the unit's
/proc view (ProcSubset=pid hides /proc/cpuinfo, where ONNX Runtime and NCNN count cores on their own)."""

import json
import os
import sys

import pytest

from daemon.runtimes import base
from daemon.runtimes.base import RuntimeOptions, threads_per_request
from tests.conftest import REPO
from tests.test_service_view import _sandboxed

# Builds the daemon's runtime in a child process (restricted to two cores when it may use more, so that a count from
# os.cpu_count() or /sys would differ), runs one frame, and reports the pool it got.
PROBE = """
import json, os, sys
import numpy as np
allowed = sorted(os.sched_getaffinity(0))
if len(allowed) > 2:
    os.sched_setaffinity(0, allowed[:2])
from daemon.runtimes.base import RuntimeOptions
backend = sys.argv[1]
before = len(os.listdir("/proc/self/task"))
if backend == "onnxruntime":
    from daemon.runtimes.onnxruntime_rt import OnnxRuntime
    rt = OnnxRuntime("models/tomato-yolo11n/model.onnx", RuntimeOptions(), "fp32")
    threads = rt.session.get_session_options().intra_op_num_threads
else:
    from daemon.runtimes.ncnn_rt import NcnnRuntime
    rt = NcnnRuntime("models/tomato-yolo11n/ncnn/fp32/model.ncnn.param", RuntimeOptions(), "fp32")
    threads = rt.net.opt.num_threads
rt.infer(np.zeros((1, 3, 640, 640), np.float32))
print(json.dumps({"threads": threads, "added": len(os.listdir("/proc/self/task")) - before,
                  "cores": len(os.sched_getaffinity(0)), "cpuinfo": os.path.exists("/proc/cpuinfo")}))
"""


def test_threads_come_from_the_affinity_mask_shared_by_the_requests_in_flight(monkeypatch):
    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(base.os, "cpu_count", lambda: 64)  # what the machine has, not what we may use
    assert base.usable_cores() == 4
    assert threads_per_request(RuntimeOptions()) == 4
    assert threads_per_request(RuntimeOptions(inflight=2)) == 2
    assert threads_per_request(RuntimeOptions(inflight=8)) == 1
    assert threads_per_request(RuntimeOptions(threads=3, inflight=2)) == 1
    assert threads_per_request(RuntimeOptions(threads=6)) == 6
    ort_rt = pytest.importorskip("daemon.runtimes.onnxruntime_rt")
    assert ort_rt.session_options(RuntimeOptions()).intra_op_num_threads == 4  # explicit, never ORT's own count


def _probe(backend: str) -> dict:
    r = _sandboxed(sys.executable, "-c", PROBE, backend)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_onnxruntime_session_under_procsubset_pid_uses_every_core_it_may():
    pytest.importorskip("onnxruntime")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one usable core: one thread is right in any /proc view")
    got = _probe("onnxruntime")
    assert not got["cpuinfo"]  # the unit's view: ORT's own core count finds one core here
    assert got["threads"] == got["cores"] >= 2, got
    # ONNX Runtime's intra-op pool: the calling thread plus cores - 1 workers (with its own count: none here)
    assert got["added"] >= got["cores"] - 1, got


def test_ncnn_under_procsubset_pid_keeps_every_core_it_may():
    pytest.importorskip("ncnn")
    if not (REPO / "models/tomato-yolo11n/ncnn/fp32/model.ncnn.param").is_file():
        pytest.skip("no NCNN artifact")
    got = _probe("ncnn")
    assert not got["cpuinfo"] and got["threads"] == got["cores"], got
