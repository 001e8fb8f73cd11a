"""Live config edits: an edit is checked completely (files, model metadata) before anything is torn down, then
applied stage by stage; a stage that cannot take its new settings keeps its last good ones, and says so."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from daemon import config as config_mod
from daemon.config import Config, ConfigError

if TYPE_CHECKING:
    from daemon.pipeline import Daemon

log = logging.getLogger(__name__)

# mqtt keys that need a new connection when they change
LINK_KEYS = ("host", "port", "topic_prefix", "client_id", "keepalive", "username", "password_file", "password_env",
             "tls", "tls_ca_certs", "tls_client_cert", "tls_client_key", "tls_insecure", "enabled")


def _unreadable(path: str) -> Optional[str]:
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"{p}: {exc.strerror or exc}"
    return None


def preflight(new: Config, file: str, old: Optional[Config] = None, model: bool = True) -> None:
    """Raise ConfigError (naming file and keys) for files that do not read and a model folder that is missing or
    malformed. With `old`, only sections that change are checked (the rest is already running)."""
    problems: list[tuple[str, str]] = []
    m = new.mqtt
    if m.enabled and (old is None or any(getattr(m, k) != getattr(old.mqtt, k) for k in LINK_KEYS)):
        for key in ("tls_ca_certs", "tls_client_cert", "tls_client_key", "password_file"):
            value = getattr(m, key)
            why = _unreadable(value) if value else None
            if why:
                problems.append((f"mqtt.{key}", f"cannot read {why}"))
    h = new.http
    if h.enabled and h.token_file and (old is None or h != old.http):
        try:
            h.token()
        except OSError as exc:
            problems.append(("http.token_file", str(exc)))
    if model and (old is None or (new.model.path, new.model.imgsz) != (old.model.path, old.model.imgsz)):
        from daemon.model import load_bundle, select_size

        key = "model.imgsz" if new.model.imgsz else "model.path"
        try:
            chosen = select_size(new.model.path, new.model.imgsz)  # a size not shipped (512 since session 24) is
            load_bundle(chosen, allow_rejected=new.model.allow_rejected)  # the imgsz key's fault, not the path's
        except (FileNotFoundError, ValueError) as exc:
            key = "model.path" if not Path(new.model.path).expanduser().exists() else key
            problems.append((key, str(exc)))
    if model and (old is None or new.model.alternatives != old.model.alternatives):
        for name, path in new.model.alternatives.items():
            if not Path(path).expanduser().exists():
                problems.append((f"model.alternatives.{name}", f"model path not found: {path}"))
    if problems:
        raise ConfigError(file, problems)


class LiveConfig:
    """Watches the config file and applies edits (file edits, `reload`, `set`, `model`) to the running daemon."""

    def __init__(self, daemon: Daemon, path: Optional[Path]):
        self.daemon = daemon
        self.path = path
        self.mtime = self._mtime()
        self.max_track_id = 0  # carried over when tracking is turned off and on again: ids are never reused

    def _mtime(self) -> Optional[float]:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None

    def poll(self) -> None:
        """From the housekeeping loop: reload when the file changed."""
        mtime = self._mtime()
        if mtime != self.mtime:
            self.mtime = mtime
            self.reload()

    def load(self) -> Config:
        if not self.path:
            raise ConfigError("reload", [("", "the daemon was started without a config file")])
        return config_mod.load_with_overrides(self.path)

    def reload(self) -> bool:
        """Re-read the config file; apply a valid one, keep the running config on any error (each reported)."""
        if not self.path:
            return False
        try:
            self.apply(self.load(), str(self.path))
        except ConfigError as exc:
            for key, msg in exc.problems:
                where = f"{exc.file}: {key}: " if key else f"{exc.file}: "
                self.daemon.report_error("config", f"{where}{msg}; keeping the last good config", key=key or None)
            return False
        return True

    def apply(self, new: Config, file: str = "config", preloaded=None) -> None:
        """Check, then swap in a validated config; only the stages whose settings changed are restarted. Raises
        ConfigError (nothing changed) when the edit names files that do not read or a model that cannot be used."""
        d = self.daemon
        old = d.cfg
        preflight(new, file, old)
        link = d._make_link(new) if new.mqtt.enabled and self._link_changed(old, new) else None  # may raise: first
        d.notifier.reloading()
        d.cfg = new
        logging.getLogger().setLevel(new.log.level)
        try:
            self._apply_link(old, new, link)
            self._apply_harvest(old, new)
            self._apply_model(old, new, preloaded)
            if new.source != old.source and d.capture:
                d.capture.stop()
                d.capture.join(timeout=5)
                d._start_capture()
            self._apply_http(old, new)
            if new.capture != old.capture:
                d.field.reset()  # a full disk is tried again after an edit
        except Exception as exc:  # a bug here must not leave the daemon half-configured and silent
            log.exception("config: applying the edit failed")
            d.report_error("config", f"{file}: applying the edit failed ({type(exc).__name__}: {exc})",
                           key=None)
        finally:
            if d.link and d.link.connected.is_set():
                d._on_connected()  # the retained `config` says what is running now, reverted parts included
            d.notifier.send("READY=1")
        log.info("config applied")

    @staticmethod
    def _link_changed(old: Config, new: Config) -> bool:
        return new.device_id != old.device_id or any(getattr(new.mqtt, k) != getattr(old.mqtt, k) for k in LINK_KEYS)

    def _apply_link(self, old: Config, new: Config, link) -> None:
        d = self.daemon
        if not self._link_changed(old, new):
            return
        if d.link:
            d.link.stop()
        d.link = link
        if link:
            link.start()

    def _apply_harvest(self, old: Config, new: Config) -> None:
        d = self.daemon
        if (new.tracking, new.targets, new.calibration, new.source.fps) == (
                old.tracking, old.targets, old.calibration, old.source.fps):
            return
        if d.harvest is not None and (new.tracking.enabled or new.targets.enabled):
            d.harvest.reconfigure(new.tracking, new.targets, new.calibration, fps=new.source.fps or 10.0)
        else:  # turned on or off: a new tracker's ids start past every id this run has used
            self.max_track_id = max(self.max_track_id, d.harvest.max_id if d.harvest else 0)
            d.harvest = d._make_harvest(new)
            if d.harvest is not None:
                d.harvest.id_offset = d.harvest.max_id = self.max_track_id
        from daemon.depth import Locate

        d.locate = Locate(new.calibration.camera_to_arm_matrix())

    def _apply_model(self, old: Config, new: Config, preloaded=None) -> None:
        d = self.daemon
        loads = ("path", "precision", "imgsz", "allow_rejected")  # what the detector is built from
        if ([getattr(new.model, k) for k in loads], new.runtime.backend, new.runtime.threads, new.runtime.device) == (
                [getattr(old.model, k) for k in loads], old.runtime.backend, old.runtime.threads, old.runtime.device):
            return
        if d._load_detector(new, preloaded) or d.detector is None:
            return
        # the new model did not load (reported by _load_detector): the old one keeps running, and the config
        # says so rather than claim a model that is not loaded
        d.cfg = d.cfg.model_copy(update={"model": old.model, "runtime": old.runtime})
        d.report_error("config", "the model edit was not applied; still running "
                                 f"{d.detector.bundle.name} {d.detector.bundle.version} on {d.detector.backend}",
                       key="model.path")

    def _apply_http(self, old: Config, new: Config) -> None:
        d = self.daemon
        if new.http == old.http:
            return
        if d.web and new.http.enabled and (new.http.host, new.http.port) == (old.http.host, old.http.port):
            d.web.stop()  # same address: the old server must let go of it first
            d.web = None
        previous = d.web
        if new.http.enabled:
            d._start_web(new.http)
            if d.web is None:  # could not serve on the new address (reported): keep the old view, say so
                d.web = previous
                d.cfg = d.cfg.model_copy(update={"http": old.http})
                if previous is None and old.http.enabled:
                    d._start_web(old.http)
                return
        else:
            d.web = None
        if previous is not None and previous is not d.web:
            previous.stop()
