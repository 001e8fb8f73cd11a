"""`ripeye tune` measures the installed backends on the shipped model and `backend: measured` uses the winner."""

import json
import subprocess

from daemon.detector import load_detector
from daemon.runtimes.base import RuntimeOptions
from daemon.tune import cached_winner
from tests.conftest import REPO, RIPEYE, write_config


def test_tune_caches_winner_and_measured_backend_uses_it(tmp_path, model_dir):
    cfg = write_config(tmp_path / "c.yaml", {"runtime": {"cache_dir": str(tmp_path / "cache"), "backend": "measured"},
                                             "model": {"path": str(model_dir)}})
    r = subprocess.run([*RIPEYE, "tune", "--config", str(cfg), "--seconds", "0.3"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    cache = json.loads((tmp_path / "cache" / "tune.json").read_text())
    (entry,) = cache.values()
    assert entry["median_ms"] == min(a["median_ms"] for a in entry["all"]) and len(entry["all"]) >= 3
    det = load_detector(model_dir, "measured", "auto", RuntimeOptions(cache_dir=tmp_path / "cache"))
    assert (det.backend, det.runtime.precision) == (entry["backend"], entry["precision"])
    # tuned on the variant the daemon loads (the size the folder recommends), so the daemon finds the result
    assert cached_winner(tmp_path / "cache", det.bundle) == entry and det.bundle.input_size == (640, 640)
    doc = subprocess.run([*RIPEYE, "doctor", "--config", str(cfg)], cwd=REPO, capture_output=True, text=True)
    assert "measured winner cached by `ripeye tune`" in doc.stdout and "tune cache" in doc.stdout
