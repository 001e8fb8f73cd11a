"""`ripeye tune`: time each installed backend × accepted artifact here, cache the winner per model and hardware."""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from daemon.durable import write_durably

log = logging.getLogger(__name__)


def hardware_key() -> str:
    from daemon.hardware import classify, probe

    # identity, not the description: the CPU's model name is hidden inside the service's sandbox.
    return classify(probe(check_runtimes=False)).identity


def cache_file(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / "tune.json"


def cache_key(bundle) -> str:
    return f"{bundle.version}|{hardware_key()}"


def read_cache(path: Path) -> dict:
    """The tune cache as {key: winner}; ValueError when the file does not parse or has the wrong shape."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError("expected a non-empty JSON object {model|hardware: winner}")
    for key, winner in data.items():
        if not (isinstance(winner, dict) and isinstance(winner.get("backend"), str)
                and isinstance(winner.get("precision"), str)
                and isinstance(winner.get("median_ms"), (int, float))):
            raise ValueError(f"entry {key!r} lacks backend/precision/median_ms")
    return data


def check_cache(cache_dir: Path) -> Optional[str]:
    """At daemon start: set a tune cache that does not read aside (then `measured` falls back to `auto`)."""
    path = cache_file(cache_dir)
    from daemon.durable import remove_leftovers, set_aside

    remove_leftovers(path)
    if not path.is_file():
        return None
    try:
        read_cache(path)
    except (OSError, ValueError) as exc:
        moved = set_aside(path)
        return f"tune cache {path} unusable ({exc}), moved to {moved}; run `ripeye tune` again"
    return None


def cached_winner(cache_dir: Path, bundle) -> Optional[dict]:
    path = cache_file(cache_dir)
    if not path.is_file():
        return None
    try:
        data = read_cache(path)
    except (OSError, ValueError) as exc:
        log.warning("tune cache %s unusable (%s): backend `measured` falls back to `auto`", path, exc)
        return None
    return data.get(cache_key(bundle))


def measure(model: str, seconds: float, threads: int, frames: list) -> list[dict]:
    """Median latency of every loadable backend × accepted artifact on the same frames."""
    from daemon import runtimes, vision
    from daemon.model import load_bundle
    from daemon.runtimes.base import RuntimeOptions

    bundle = load_bundle(model)
    tensors = [vision.preprocess(f, bundle.input_size)[0] for f in frames]
    results = []
    for backend in runtimes.names():
        try:
            cls = runtimes.get(backend)
        except runtimes.RuntimeUnavailable:
            continue
        seen = set()
        for art in bundle.candidates(backend, "auto"):
            if (art.path, art.precision) in seen or not art.path.is_file():
                continue
            seen.add((art.path, art.precision))
            try:
                rt = cls(art.path, RuntimeOptions(threads=threads), art.precision)
            except Exception as exc:  # a broken artifact only drops out of the race
                results.append({"backend": backend, "precision": art.precision, "artifact": str(art.path),
                                "error": str(exc)[:200]})
                continue
            for t in tensors[:3]:
                rt.infer(t)
            lat, t_end, i = [], time.perf_counter() + seconds, 0
            while time.perf_counter() < t_end or len(lat) < 5:
                s = time.perf_counter()
                rt.infer(tensors[i % len(tensors)])
                lat.append((time.perf_counter() - s) * 1000)
                i += 1
            med = statistics.median(lat)
            results.append({"backend": backend, "precision": art.precision, "artifact": str(art.path),
                            "median_ms": round(med, 2), "fps": round(1000 / med, 1), "runs": len(lat)})
            print(f"[tune] {backend:12s} {art.precision:5s} {med:7.2f} ms  {art.path.name}", file=sys.stderr)
            rt.close()
    return results


def main(args) -> int:
    import cv2

    from daemon import config as config_mod
    from daemon.config import SAMPLE_CLIP
    from daemon.model import load_bundle, select_size

    cfg = config_mod.load(args.config)
    # the variant the daemon loads (model.imgsz, else the size the folder recommends): its version keys the result
    model = select_size(args.model or cfg.model.path, cfg.model.imgsz)
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames = []
    while len(frames) < 8:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    results = measure(model, args.seconds, args.threads or cfg.runtime.threads, frames)
    ok = [r for r in results if "median_ms" in r]
    if not ok:
        print("ripeye tune: no backend could run the model", file=sys.stderr)
        return 1
    winner = min(ok, key=lambda r: r["median_ms"])
    bundle = load_bundle(model)
    path = cache_file(Path(cfg.runtime.cache_dir))
    try:
        data = read_cache(path) if path.is_file() else {}
    except ValueError as exc:
        log.warning("tune cache %s unusable (%s): starting a new one", path, exc)
        data = {}
    data[cache_key(bundle)] = {**winner, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "all": ok}
    write_durably(path, json.dumps(data, indent=2) + "\n")
    print(f"winner: {winner['backend']} {winner['precision']} ({winner['median_ms']} ms); cached in {path}; "
          "`runtime.backend: measured` uses it")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--config", "-c", default=None)
    p.add_argument("--model", default=None, help="model folder (default: the config's model.path)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per backend × artifact")
    p.add_argument("--threads", type=int, default=0)
