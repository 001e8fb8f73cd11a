"""MQTT commands under <prefix>/<id>/cmd/<name>, each answered on .../cmd/<name>/result as {ok, error?, ...}."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

import cv2
import yaml

from daemon import config as config_mod
from daemon.config import ConfigError
from daemon.control import CommandError, flag, parse_request, request_id
from daemon.durable import write_durably
from daemon.vision import annotate

if TYPE_CHECKING:
    from daemon.control import DaemonControl

log = logging.getLogger(__name__)


def resolve_nulls(patch: dict, underneath: dict) -> dict:
    """The patch with each null replaced by the value underneath it (file + persisted overrides), so that merging it
    restores that value rather than deleting the key from the running config."""
    out = {}
    for key, value in patch.items():
        if value is None:
            out[key] = underneath.get(key) if isinstance(underneath, dict) else None
        elif isinstance(value, dict):
            out[key] = resolve_nulls(value, underneath.get(key, {}) if isinstance(underneath, dict) else {})
        else:
            out[key] = value
    return out


class Commands:
    def __init__(self, daemon: DaemonControl):
        self.daemon = daemon
        self.lock = threading.Lock()
        self.via = ""  # who sent the command being run: its MQTT topic, or "live view <address>"
        self.handlers: dict[str, Callable[[dict], dict]] = {
            "pause": self.pause, "resume": self.resume, "snapshot": self.snapshot, "set": self.set,
            "reload": self.reload, "model": self.model, "stats": self.stats,
            "capture": self.capture,
            "model/install": lambda req: self.daemon.lifecycle.cmd_install(req),
            "model/rollback": lambda req: self.daemon.lifecycle.cmd_rollback(req),
        }

    def handle(self, topic: str, payload: bytes, properties=None) -> None:
        """Answer every message on cmd/<name>; nothing raised here reaches paho's thread."""
        base = self.daemon.link.topic("cmd/")
        if not topic.startswith(base):
            return
        name = topic[len(base):]
        if name.endswith("/result") or name.count("/") > 1:  # our own answers, or deeper topics
            return
        self.daemon.link.reply(f"cmd/{name}/result", self.execute(name, payload, topic), properties)

    def execute(self, name: str, payload: bytes, via: str) -> dict:
        """Run one command from MQTT or the live view (`via` says which) and return its answer; a refusal is also
        reported on `errors`. Commands run one at a time, whoever sends them."""
        request: dict = {}
        with self.lock:
            self.via = via
            try:
                request = parse_request(payload)
                if name not in self.handlers:
                    raise CommandError(f"unknown command {name!r}; known: {', '.join(sorted(self.handlers))}")
                reply = {"ok": True, **self.handlers[name](request)}
            except RecursionError:  # a request nested just under the parser's limit, too deep for what handles it
                reply = {"ok": False, "error": "malformed request: nested too deeply"}
            except ConfigError as exc:
                reply = {"ok": False, "error": str(exc), "keys": [k for k, _ in exc.problems]}
            except CommandError as exc:
                reply = {"ok": False, "error": str(exc)}
                rid = request_id(payload) if not request else None
                if rid is not None:
                    request = {"id": rid}
            except Exception as exc:  # a bug in one command must not take the daemon down
                log.exception("command %s failed", name)
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if "id" in request:
            reply["id"] = request["id"]
        if not reply["ok"]:
            self.daemon.report_error("command", f"{via}: {reply['error']}", control=True)
        return reply

    # ---- commands -----------------------------------------------------------------------------------------------
    def pause(self, req: dict) -> dict:
        reason = req.get("reason", "")
        if not isinstance(reason, str):
            raise CommandError('"reason" must be a string (who paused and why, shown in stats and /healthz)')
        by = {"command": "cmd/pause", "at": round(time.time(), 3)}
        if not self.via.endswith("cmd/pause"):
            by["via"] = self.via  # the live view's button, with the operator's address
        if reason:
            by["reason"] = reason[:200]
        if "id" in req:
            by["id"] = req["id"]
        self.daemon.paused_by = by
        self.daemon.paused.set()
        return {"paused": True}

    def resume(self, req: dict) -> dict:
        self.daemon.paused.clear()
        self.daemon.paused_by = None
        return {"paused": False}

    def capture(self, req: dict) -> dict:
        note = req.get("note", "")
        if not isinstance(note, str):
            raise CommandError('"note" must be a string (why this frame is worth labelling)')
        if not self.daemon.cfg.capture.enabled:
            raise CommandError("field capture is off: set capture.enabled: true (cmd/set or the config file)")
        self.daemon.field.note(note[:500])
        return {"queued": True, "topic": self.daemon.link.topic("capture") if self.daemon.link else None}

    def stats(self, req: dict) -> dict:
        self.daemon.publish_stats()
        return {}

    def reload(self, req: dict) -> dict:
        if not self.daemon.config_path:
            raise CommandError("the daemon was started without a config file")
        self.daemon.apply_config(config_mod.load_with_overrides(self.daemon.config_path), str(self.daemon.config_path))
        return {}

    def set(self, req: dict) -> dict:
        patch = req.get("patch")
        if not isinstance(patch, dict) or not patch:
            raise CommandError('give the change as "patch": {section: {key: value}} (a JSON merge-patch)')
        config_mod.check_hot_patch(patch)
        persist = flag(req, "persist")
        d = self.daemon
        file = config_mod.overrides_file(d.cfg)
        persisted = config_mod.read_yaml(file) if file.is_file() else {}
        if persist:
            persisted = config_mod.merge_patch(persisted, patch)
        # a null removes that key's override: its value comes back from the config file (and what stays persisted)
        underneath = config_mod.merge_patch(config_mod.load(d.config_path).model_dump(), persisted)
        new = config_mod.validate(config_mod.merge_patch(d.cfg.model_dump(), resolve_nulls(patch, underneath)),
                                  "set")
        d.apply_config(new, "set")
        if persist:
            if persisted:
                write_durably(file, yaml.safe_dump(persisted))
            else:
                file.unlink(missing_ok=True)  # nothing left to override
        return {"applied": patch, "persisted": persist}

    def model(self, req: dict) -> dict:
        name = req.get("name")
        choices = self.daemon.cfg.model.alternatives
        if not isinstance(name, str) or name not in choices:
            raise CommandError(f"unknown model {name!r}; configured: {', '.join(sorted(choices)) or 'none'} "
                               "(model.alternatives in the config)")
        data = self.daemon.cfg.model_dump()
        data["model"]["path"] = choices[name]
        self.daemon.apply_config(config_mod.validate(data, "model command"), "model command")
        det = self.daemon.detector
        return {"model": name, "backend": det.backend if det else None}

    def snapshot(self, req: dict) -> dict:
        quality = req.get("quality", 85)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise CommandError(f'"quality" must be an integer from 1 to 100, not {json.dumps(quality)[:40]}')
        frame, jpeg = snapshot_jpeg(self.daemon.latest, flag(req, "annotate"), quality)
        self.daemon.link.publish("snapshot", jpeg, qos=1, control=True)
        return {"frame_id": frame.frame_id, "bytes": len(jpeg), "topic": self.daemon.link.topic("snapshot"),
                "captured_at": round(frame.captured_at, 3)}


def snapshot_jpeg(latest: Optional[tuple], annotated: bool, quality: int = 85) -> tuple:
    """(frame, JPEG bytes) of the latest published frame, boxes drawn on request: for cmd/snapshot and the live
    view's download alike."""
    if latest is None:
        raise CommandError("no frame captured yet")
    frame, detections, track_ids = latest
    image = frame.image
    if annotated:
        image = annotate(image.copy(), detections, track_ids)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CommandError("JPEG encoding failed")
    return frame, jpeg.tobytes()
