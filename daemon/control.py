"""What commands, the arm protocol and the live view may use of the running daemon: request parsing and two narrow
interfaces, so that none of them imports the pipeline module."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from daemon.config import Config


class CommandError(Exception):
    """A request that cannot be carried out; the message goes back to the caller."""


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range (only finite numbers are accepted)")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows (only finite numbers are accepted)")


def parse_request(payload: bytes) -> dict:
    """A command or arm request body as a JSON object (empty = {}); CommandError "malformed request: ..." otherwise."""
    try:
        text = payload.decode("utf-8").strip() if payload else ""
    except UnicodeDecodeError:
        raise CommandError("malformed request: payload is not UTF-8 text") from None
    try:
        parsed = json.loads(text, parse_float=_finite, parse_constant=_no_constant) if text else {}
    except json.JSONDecodeError as exc:
        raise CommandError(f"malformed request: malformed JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:  # NaN, Infinity, 1e400: they would be stored, then published as non-standard JSON
        raise CommandError(f"malformed request: {exc}") from None
    except RecursionError:
        raise CommandError("malformed request: JSON nested too deeply") from None
    if not isinstance(parsed, dict):
        raise CommandError(f"malformed request: payload must be a JSON object, not {type(parsed).__name__}")
    if isinstance(parsed.get("id"), (dict, list)):
        raise CommandError('malformed request: "id" must be a string or a number')
    return parsed


def request_id(payload: bytes):
    """The "id" of a request that parse_request refused (a non-finite number elsewhere in it), so the refusal can
    still be correlated by the caller; None when there is none to be had."""
    try:
        parsed = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        return None
    rid = parsed.get("id") if isinstance(parsed, dict) else None
    return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


def flag(req: dict, key: str, default: bool = False) -> bool:
    """A boolean request field, strictly: "false" or 0 are errors, not truthy values."""
    value = req.get(key, default)
    if not isinstance(value, bool):
        raise CommandError(f'"{key}" must be true or false (a JSON boolean), not {json.dumps(value)[:40]}')
    return value


class DaemonControl(Protocol):
    """The daemon as MQTT commands see it (daemon/commands.py)."""

    cfg: Config
    config_path: Optional[Path]
    paused: threading.Event
    paused_by: Optional[dict]
    detector: Any  # the loaded Detector, or None
    latest: Optional[tuple]  # (frame, detections, track_ids) last published, for snapshots
    link: Any  # the MqttLink, or None with MQTT off
    lifecycle: Any  # daemon.lifecycle.ModelLifecycle: cmd/model/install and cmd/model/rollback
    field: Any  # daemon.fieldstore.FieldCapture: cmd/capture

    def apply_config(self, new: Config, file: str = "config") -> None: ...

    def publish_stats(self) -> None: ...

    def report_error(self, source: str, message: str, key: Optional[str] = None, control: bool = False) -> None: ...


class LiveViewSource(Protocol):
    """The daemon as the HTTP live view sees it (daemon/web.py, daemon/liveview.py): health and metrics, what the
    side panel shows, and the commands its buttons run (the same as on MQTT)."""

    cfg: Config
    stop_event: threading.Event
    paused: threading.Event
    paused_by: Optional[dict]
    detector: Any
    capture: Any
    link: Any
    harvest: Any
    stages: Any
    recent_errors: Any  # the last few errors reported, newest last
    latest: Optional[tuple]
    commands: Any  # daemon.commands.Commands: execute(name, payload, via) -> answer
    lifecycle: Any  # daemon.lifecycle.ModelLifecycle: bundle uploads, and probation for the panel

    def report_error(self, source: str, message: str, key: Optional[str] = None, control: bool = False) -> None: ...

    def health(self) -> tuple[bool, dict]: ...

    def refresh_metrics(self) -> None: ...
