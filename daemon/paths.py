"""Where ripeye finds its config, its models and its device id when the command line names none.

A source checkout (tests, `install.sh --dev`) keeps its own defaults: the built-in config and the checkout's
models/. An installed copy (`install.sh --service`: the package in PREFIX/venv's site-packages, the app with its
models in PREFIX/app) uses the installed service's config and PREFIX/app/models, so `ripeye doctor` on a device
answers for the service as installed.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
#: the checkout holding this package (for a non-editable install: site-packages, which has no models/)
CHECKOUT_DIR = PACKAGE_DIR.parent
#: the installed service's config (install.sh --service); tests point this at a file of their own
ETC_CONFIG = Path("/etc/ripeye/ripeye.yaml")
CONFIG_ENV = "RIPEYE_CONFIG"
#: set by the templated unit (ripeye@.service: Environment=RIPEYE_INSTANCE=%i)
INSTANCE_ENV = "RIPEYE_INSTANCE"
MODEL_NAME = "tomato-yolo11n"


def is_checkout() -> bool:
    """True when the package runs from a source checkout (editable install, tests), not from site-packages."""
    return (CHECKOUT_DIR / "pyproject.toml").is_file() and (CHECKOUT_DIR / "daemon").is_dir()


def default_config_path() -> tuple[Optional[Path], str]:
    """(the config file to read when no --config is given, or None for the built-in defaults; why).

    $RIPEYE_CONFIG when set (even to a file that is missing: loading it then says so), else the installed service's
    /etc/ripeye/ripeye.yaml when it exists and this is an installed copy, else the built-in defaults. A checkout never
    reads /etc on its own: its tests and `ripeye demo` must not depend on what this machine has installed.
    """
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return Path(env).expanduser(), f"${CONFIG_ENV}"
    if ETC_CONFIG.is_file():
        if not is_checkout():
            return ETC_CONFIG, "the installed service's config"
        return None, f"built-in defaults (a source checkout does not read {ETC_CONFIG}; pass --config)"
    return None, f"built-in defaults (no --config, no ${CONFIG_ENV}, no {ETC_CONFIG})"


def config_notice(path: Optional[Path], why: str) -> str:
    """The one line (for stderr) that says which config a command read."""
    return f"config: {path} ({why})" if path is not None else f"config: {why}"


def resolve_config(given: Optional[str], announce: bool = True) -> Optional[str]:
    """--config's value when given; else default_config_path()'s file (None: built-in defaults), said on stderr."""
    if given:
        return given
    path, why = default_config_path()
    if announce:
        print(config_notice(path, why), file=sys.stderr)
    return str(path) if path is not None else None


def model_dir_candidates() -> list[Path]:
    """Where the shipped model may be, in order: the checkout's models/ (also an editable install's), then the
    install.sh layout, PREFIX/app/models beside the service venv PREFIX/venv (sys.prefix)."""
    return [CHECKOUT_DIR / "models" / MODEL_NAME, Path(sys.prefix).resolve().parent / "app" / "models" / MODEL_NAME]


def default_model_dir() -> Path:
    """The first candidate that exists; else the checkout's path, so that the error names where it looked first."""
    candidates = model_dir_candidates()
    return next((p for p in candidates if p.is_dir()), candidates[0])


def default_device_id() -> str:
    """The host's short name, and `-<instance>` for an instance of the templated unit (ripeye@wrist on host `arm1`:
    `arm1-wrist`), so two daemons on one host publish under two ids."""
    host = socket.gethostname().split(".")[0] or "ripeye"
    instance = os.environ.get(INSTANCE_ENV, "").strip()
    return f"{host}-{instance}" if instance else host
