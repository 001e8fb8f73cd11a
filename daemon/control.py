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


def parse_request(payload: bytes) -> dict:
    """A command or arm request body as a JSON object (empty = {}); CommandError "malformed request: ..." otherwise."""
    try:
        text = payload.decode("utf-8").strip() if payload else ""
    except UnicodeDecodeError:
        raise CommandError("malformed request: payload is not UTF-8 text") from None
    try:
        parsed = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise CommandError(f"malformed request: malformed JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise CommandError("malformed request: JSON nested too deeply") from None
    if not isinstance(parsed, dict):
        raise CommandError(f"malformed request: payload must be a JSON object, not {type(parsed).__name__}")
    if isinstance(parsed.get("id"), (dict, list)):
        raise CommandError('malformed request: "id" must be a string or a number')
    return parsed


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

    def apply_config(self, new: Config) -> None: ...

    def publish_stats(self) -> None: ...

    def report_error(self, source: str, message: str, key: Optional[str] = None, control: bool = False) -> None: ...


class LiveViewSource(Protocol):
    """The daemon as the HTTP live view sees it (daemon/web.py)."""

    cfg: Config
    stop_event: threading.Event

    def health(self) -> tuple[bool, dict]: ...

    def refresh_metrics(self) -> None: ...
