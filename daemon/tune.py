"""Measured runtime choice: time each backend × artifact here and cache the winner per model and hardware."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Optional


def hardware_key() -> str:
    from daemon.hardware import classify, probe

    p = classify(probe())
    return f"{p.kind}:{platform.machine()}:{p.description}".replace("/", "_")


def cache_file(cache_dir: Path) -> Path:
    return Path(cache_dir) / "tune.json"


def cached_winner(cache_dir: Path, bundle) -> Optional[dict]:
    path = cache_file(cache_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data.get(f"{bundle.version}|{hardware_key()}")
