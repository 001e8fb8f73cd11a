"""The one place the daemon is wired: capture → inference → output over MQTT, live config, commands, shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

import psutil

from daemon import __version__, output
from daemon.capture import CaptureThread, Frame
from daemon.config import Config
from daemon.depth import Locate
from daemon.detector import Detector, NoUsableBackend, load_detector
from daemon.fieldstore import FieldCapture
from daemon.handoff import InOrder, LatestSlot
from daemon.hardware import cpu_temperature
from daemon.lifecycle import ModelLifecycle
from daemon.liveconfig import LiveConfig
from daemon.model import SizeNotFound
from daemon.mqtt import MqttLink
from daemon.output import SCHEMA_VERSION
from daemon.runtimes.base import RuntimeOptions
from daemon.service import Notifier
from daemon.stats import StageTimes

log = logging.getLogger(__name__)
def runtime_options(cfg: Config) -> RuntimeOptions:
    r = cfg.runtime
    return RuntimeOptions(threads=r.threads, inflight=r.inflight, device=r.device,
                          cache_dir=Path(r.cache_dir).expanduser(), tensorrt_fp16=r.tensorrt_fp16,
                          tensorrt_int8=r.tensorrt_int8)


class Result:
    __slots__ = ("frame", "output", "lb", "detector", "infer_ms", "t_infer_done")

    def __init__(self, frame, output, lb, detector, infer_ms, t_infer_done):
        self.frame, self.output, self.lb, self.detector = frame, output, lb, detector
        self.infer_ms, self.t_infer_done = infer_ms, t_infer_done


class Daemon:
    """Owns the threads; `cfg` is swapped atomically on a valid config edit."""

    MODEL_RETRY_S = 30.0  # a model that would not load is tried again this often

    def __init__(self, cfg: Config, config_path: Optional[str] = None):
        self.cfg = cfg
        self.config_path = Path(config_path) if config_path else None
        self.stop_event = threading.Event()
        self.paused = threading.Event()
        self.paused_by: Optional[dict] = None  # which command paused it, when, and the reason it gave
        self.model_error = ""  # why the configured model could not be loaded, while it cannot
        self.detector: Optional[Detector] = None
        self.detector_lock = threading.Lock()
        self.frames = LatestSlot[Frame]()
        self.results = InOrder[Result](maxlen=8)  # in frame order even with several requests in flight
        self._take_lock = threading.Lock()
        self.stages = StageTimes()
        self.errors_total = 0
        self.recent_errors: deque = deque(maxlen=5)  # for the live view's panel
        self.started_at = time.time()
        self.first_publish_at: Optional[float] = None
        self.last_frame_done = time.monotonic()
        self.threads: list[threading.Thread] = []
        self.capture: Optional[CaptureThread] = None
        self.link: Optional[MqttLink] = None
        self.process = psutil.Process()
        self.live = LiveConfig(self, self.config_path)
        self._last_stats = time.monotonic()
        self.latest: Optional[tuple] = None  # (frame, detections) last published, for snapshots
        self.notifier = Notifier()
        from daemon.commands import Commands

        self.commands = Commands(self)
        from daemon.web import Metrics

        self.metrics = Metrics()
        self.web = None
        self.harvest = None  # built in the background at start: importing supervision takes seconds on a Pi
        self.state_problems: list[str] = []  # own state files found bad and set aside before start
        self.locate = Locate(cfg.calibration.camera_to_arm_matrix())  # 3D positions (issue 11)
        self.lifecycle = ModelLifecycle(self)  # installed models: shadow, switch, probation, rollback
        self.field = FieldCapture(lambda: self.cfg.capture, self.capture_dir, lambda: self.harvest, lambda: self.link,
                                  self.report_error)  # frames worth labelling (issue 28)
        self.chain = self._output_chain()

    # ---- wiring -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.mqtt.enabled:
            self.link = self._make_link(self.cfg)
            self.link.start()
        self._report_state_problems()
        threading.Thread(target=lambda: setattr(self, "harvest", self._make_harvest(self.cfg)), name="tracking-init",
                         daemon=True).start()
        self._load_detector()
        self._start_capture()
        for i in range(self.cfg.runtime.inflight):
            self._spawn(self._inference_loop, f"inference-{i}")
        self._spawn(self._output_loop, "output")
        if self.cfg.http.enabled:
            self._start_web()
        self._spawn(self._housekeeping_loop, "housekeeping")
        self.lifecycle.start()
        self.field.start(self.stop_event)

    def _report_state_problems(self) -> None:
        """State files (persisted overrides, the tune cache) that did not read are set aside; say so on `errors`."""
        from daemon import tune

        problem = tune.check_cache(Path(self.cfg.runtime.cache_dir))
        for message in [*self.state_problems, *([problem] if problem else [])]:
            self.report_error("state", message)

    def _make_link(self, cfg: Config) -> MqttLink:
        link = MqttLink(cfg.mqtt, cfg.device_id, on_message=self._on_message, on_connected=self._on_connected)
        # cmd/model/install|rollback; arm/<action>, arm/<arm_id>/<action|status>
        link.subscriptions += [link.topic("cmd/model/+"), link.topic("arm/+"), link.topic("arm/+/+")]
        return link

    def _make_harvest(self, cfg: Config):
        if not (cfg.tracking.enabled or cfg.targets.enabled):
            return None
        from daemon.harvest import Harvest, TrackingUnavailable

        try:
            return Harvest(cfg.tracking, cfg.targets, cfg.calibration, fps=cfg.source.fps or 10.0)
        except (TrackingUnavailable, ValueError) as exc:
            self.report_error("tracking", f"tracking and targets off: {exc}", key="tracking.enabled")
            return None

    def _on_message(self, topic: str, payload: bytes, properties=None, retained: bool = False) -> None:
        if retained and not (topic.startswith(self.link.topic("arm/")) and topic.endswith("/status")):
            # a retained command would replay at every start (a daemon that always comes up paused, a pick
            # re-reported): a command is an event, not a state, so stored ones are refused and said so
            self.report_error("command", f"{topic}: ignored a retained message (commands are events, not state; "
                                         f"clear it with: mosquitto_pub -r -n -t '{topic}')", control=True)
            return
        if topic.startswith(self.link.topic("arm/")):
            self._on_arm(topic, payload)
        else:
            self.commands.handle(topic, payload, properties)

    def _on_arm(self, topic: str, payload: bytes) -> None:
        """claim / picked / failed / status from the arms (harvest.py), each request acknowledged."""
        from daemon.harvest import arm_message

        for suffix, body in arm_message(self.harvest, topic[len(self.link.topic("arm/")):], payload):
            self.link.reply(suffix, body)

    def _start_web(self, http=None) -> None:
        from daemon.web import WebServer

        http = http or self.cfg.http
        try:
            self.web = WebServer(self, http, self.metrics)
            self.web.start()
        except OSError as exc:  # port taken: the daemon still runs, the live view does not
            self.report_error("http", f"cannot serve on {http.host}:{http.port}: {exc}",
                              key="http.token_file" if "http.token_file" in str(exc) else "http.port")
            self.web = None

    def refresh_metrics(self) -> None:
        m = self.metrics
        m.fps.set(self.stages.fps())
        m.dropped.set(self.frames.dropped + self.results.dropped)
        m.reconnects.set(max(0, self.link.connects - 1) if self.link else 0)
        m.mqtt_connected.set(1 if self.link and self.link.connected.is_set() else 0)
        m.camera_reconnects.set(self.capture.reconnects if self.capture else 0)

    def capture_dir(self) -> Path:
        return Path(self.cfg.capture.dir or Path(self.cfg.state_dir) / "capture").expanduser()

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _start_capture(self) -> None:
        self.capture = CaptureThread(self.cfg.source, self.frames, prepare=self._prepare,
                                     on_error=lambda msg: self.report_error("camera", msg))
        self.capture.start()

    def _prepare(self, image):
        detector = self.detector
        if detector is None:
            return None
        return (detector.input_size, *detector.preprocess(image, self.cfg.detect.white_balance))

    def _load_detector(self, cfg: Optional[Config] = None, preloaded: Optional[Detector] = None) -> bool:
        """Load the configured model and swap it in; `preloaded` (a candidate already loaded for its shadow run)
        is swapped in as it is, so a model switch costs no load time."""
        cfg = cfg or self.cfg
        options = runtime_options(cfg)
        try:
            detector = preloaded or load_detector(cfg.model.path, cfg.runtime.backend, cfg.model.precision, options,
                                                  imgsz=cfg.model.imgsz, allow_rejected=cfg.model.allow_rejected)
        except (NoUsableBackend, FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            self.model_error = f"{cfg.model.path}: {exc}"
            key = "model.imgsz" if isinstance(exc, SizeNotFound) else "model.path"
            self.report_error("model", self.model_error, key=key)
            return False
        finally:
            for message in options.extra.pop("state_problems", []):  # engine caches set aside while loading
                self.report_error("state", message)
        self.model_error = ""
        for attempt in detector.attempts:
            self.report_error("model", f"fell back past {attempt}", key="runtime.backend")
        for problem in detector.bundle.problems:
            self.report_error("model", problem, key="model.path")
        with self.detector_lock:
            old, self.detector = self.detector, detector
        if old is not None:
            old.close()
        log.info("detector: %s", detector.describe())
        self.lifecycle.publish()
        return True

    def stop(self) -> None:
        self.notifier.stopping()
        self.stop_event.set()
        self.frames.close()
        self.results.close()
        if self.capture:
            self.capture.stop()
            self.capture.join(timeout=5)
        for t in self.threads:
            t.join(timeout=5)
        if self.link:
            self.link.stop()
        if self.web:
            self.web.stop()

    # ---- stages -------------------------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        while not self.stop_event.is_set():
            with self._take_lock:  # the frame and its ticket are taken together: tickets follow frame order
                frame = self.frames.get(timeout=0.5)
                ticket = self.results.take() if frame is not None else None
            if frame is None:
                continue
            result, failed = None, False
            try:
                result = self._infer(frame)
            except Exception as exc:  # a runtime failing mid-run must not kill the thread
                failed = True
                self.lifecycle.inference_failures += 1
                backend = self.detector.backend if self.detector else "?"
                self.report_error("model", f"inference failed on {backend}: {exc}")
            finally:
                self.results.finish(ticket, result)  # before any back-off: later frames must not wait on this one
            if failed:
                time.sleep(0.5)

    def _infer(self, frame: Frame) -> Optional[Result]:
        detector = self.detector
        if detector is None or self.paused.is_set():
            return None
        t0 = time.perf_counter()
        prepared = frame.prepared
        if prepared is None or prepared[0] != detector.input_size:  # model changed since capture
            prepared = (detector.input_size, *detector.preprocess(frame.image, self.cfg.detect.white_balance))
            frame.prepare_ms = (time.perf_counter() - t0) * 1000
        _, tensor, lb = prepared
        t1 = time.perf_counter()
        output = detector.infer(tensor)
        t2 = time.perf_counter()
        return Result(frame, output, lb, detector, (t2 - t1) * 1000, t2)

    def _output_loop(self) -> None:
        while not self.stop_event.is_set():
            result = self.results.get(timeout=0.5)
            if result is None:
                continue
            try:
                self._publish_result(result)
            except Exception as exc:
                log.exception("output: publishing frame %s failed", result.frame.frame_id)
                self.report_error("output", str(exc))

    def _output_chain(self) -> list:
        """The path a frame takes after inference, in order (daemon/output.py): decode → track + targets → select
        what is published → 3D positions → compose the message → sinks (MQTT, timings and metrics, live view, the
        model's probation counts and shadow frames (lifecycle.py), field capture (fieldstore.py))."""
        return [output.Decode(lambda: self.harvest), output.Track(lambda: self.harvest), output.Select(),
                output.Locate(lambda: self.locate), output.Compose(), output.MqttSink(lambda: self.link),
                output.MetricsSink(self.stages, self.metrics),
                output.LiveViewSink(lambda: self.web, self.stages, lambda: self.harvest), self.lifecycle,
                self.field]

    def _publish_result(self, r: Result) -> None:
        out = output.run_chain(self.chain, r, self.cfg)
        self.last_frame_done = time.monotonic()
        self.latest = (r.frame, out.detections, out.track_ids)
        if self.first_publish_at is None:
            self.first_publish_at = out.published_at
            link = self.link
            unsent = (f" (queued, not sent: mqtt {link.state}: {link.last_error})"
                      if link and not link.connected.is_set() else "")
            log.info("first detections published %.2f s after start%s", out.published_at - self.started_at, unsent)
            self.notifier.ready(f"processing {self.capture.description if self.capture else ''}")
        self.on_frame_published(r)

    def on_frame_published(self, result: Result) -> None:
        """Hook for extensions (service heartbeat, trackers)."""

    # ---- reporting ----------------------------------------------------------------------------------------------
    def report_error(self, source: str, message: str, key: Optional[str] = None, control: bool = False) -> None:
        """Log and publish on `errors`; control=True for errors answering a command (the command budget)."""
        self.errors_total += 1
        self.recent_errors.append({"source": source, "message": message[:300], "at": round(time.time(), 3)})
        log.error("%s: %s", source, message)
        if self.link:
            body = {"source": source, "message": message, "at": round(time.time(), 3)}
            if key:
                body["key"] = key
            self.link.publish("errors", body, qos=1, droppable=False, control=control)

    def stats_payload(self) -> dict:
        detector = self.detector
        mem = self.process.memory_info()
        capture = self.capture
        return {
            "schema": SCHEMA_VERSION,
            "at": round(time.time(), 3),
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "fps": round(self.stages.fps(), 2),
            "processed": self.stages.processed,
            "latency_ms": self.stages.summary(),
            "dropped_frames": self.frames.dropped + self.results.dropped,
            "captured": capture.frame_count if capture else 0,
            "camera": {"state": capture.state if capture else "none", "source": capture.description if capture else "",
                       "reconnects": capture.reconnects if capture else 0,
                       "last_error": capture.last_error if capture else ""},
            "backend": detector.backend if detector else None,
            "precision": detector.runtime.precision if detector else None,
            "device": detector.runtime.device if detector else None,
            "model": {"name": detector.bundle.name, "version": detector.bundle.version} if detector else None,
            "paused": self.paused.is_set(),
            "paused_by": self.paused_by if self.paused.is_set() else None,
            "mqtt": {**self.link.describe(), "reconnects": max(0, self.link.connects - 1),
                     "outbox": len(self.link.outbox), "outbox_dropped": self.link.outbox.dropped,
                     "dropped": dict(self.link.outbox.dropped_by)}
            if self.link else None,
            "errors": self.errors_total,
            "targets": self.harvest.counts() if self.harvest else None,
            "capture": self.field.stats() if self.cfg.capture.enabled or self.field.kept else None,
            "rss_mb": round(mem.rss / 2**20, 1),
            "cpu_temperature_c": cpu_temperature(),
        }

    def publish_stats(self) -> None:
        if self.link:
            self.link.publish("stats", self.stats_payload(), qos=0)

    def _on_connected(self) -> None:
        self.link.publish("config", self.cfg.redacted(), qos=1, retain=True, droppable=False)
        self.lifecycle.publish()

    def healthy(self) -> bool:
        """Frames flow, or the pipeline waits in a state it handles itself (paused, camera backoff, no model).

        Only a pipeline that should be producing and is not (a hung camera read, a stuck inference call) stops the
        systemd watchdog pings, so systemd restarts exactly that case.
        """
        limit = max(5.0, (self.notifier.watchdog_s or 20.0) / 2)
        if time.monotonic() - self.last_frame_done < limit or self.paused.is_set() or self.detector is None:
            return True
        return bool(self.capture and self.capture.state in ("reconnecting", "ended", "starting"))

    def health(self) -> tuple[bool, dict]:
        """The /healthz answer: ok/ready when detections are being produced; watchdog_ok when nothing is hung."""
        ready, reason = self.readiness()
        return ready, {"ok": ready, "ready": ready, "reason": reason, "watchdog_ok": self.healthy(),
                       "paused": self.paused.is_set(),
                       "last_frame_age_s": round(time.monotonic() - self.last_frame_done, 2),
                       "fps": round(self.stages.fps(), 2), "camera": self.capture.state if self.capture else None,
                       "backend": self.detector.backend if self.detector else None,
                       "mqtt": self.link.describe() if self.link else None}

    def readiness(self) -> tuple[bool, str]:
        """Whether detections are being produced now, and if not why: for /healthz, a load balancer, an operator.

        Unlike healthy() (the watchdog's question: is something hung?), a handled wait is still not ready.
        """
        if self.detector is None:
            return False, f"no loadable model: {self.model_error or 'loading'}"
        if self.paused.is_set():
            by = self.paused_by or {}
            why = f" ({by['reason']})" if by.get("reason") else ""
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(by["at"])) if by.get("at") else "?"
            via = f" from the {by['via']}" if by.get("via") else ""
            return False, f"paused by {by.get('command', 'a command')}{via} at {at}{why}"
        capture = self.capture
        if capture is None or capture.state != "running":
            state = capture.state if capture else "none"
            return False, f"camera {state}" + (f": {capture.last_error}" if capture and capture.last_error else "")
        link = self.link
        if link is not None and not link.connected.is_set():  # detections are made, but reach no arm
            return False, f"mqtt {link.state} ({link.cfg.host}:{link.cfg.port})" + (
                f": {link.last_error}" if link.last_error else "")
        if not self.healthy():
            return False, f"no frame processed for {time.monotonic() - self.last_frame_done:.0f} s"
        if self.first_publish_at is None:
            return False, "starting: no frame processed yet"
        return True, ""

    def _housekeeping_loop(self) -> None:
        next_model_retry = time.monotonic() + self.MODEL_RETRY_S
        while not self.stop_event.wait(0.5):
            try:
                if self.notifier.watchdog_s and self.healthy():
                    self.notifier.watchdog()
                if not self.notifier.ready_sent and self.capture and self.capture.state == "reconnecting":
                    # READY comes with the first processed frame; a camera that is not there yet is a handled wait,
                    # so say so rather than let systemd time the start out.
                    self.notifier.ready(f"waiting for camera: {self.capture.last_error}")
                if time.monotonic() - self._last_stats >= self.cfg.stats.interval_s:
                    self._last_stats = time.monotonic()
                    self.publish_stats()
                if self.detector is None and time.monotonic() >= next_model_retry:
                    next_model_retry = time.monotonic() + self.MODEL_RETRY_S  # one try (and error) per interval
                    self._load_detector()
                self.live.poll()
            except Exception as exc:  # this thread applies config edits and pings the watchdog: it must live on
                log.exception("housekeeping failed")
                self.report_error("housekeeping", f"{type(exc).__name__}: {exc}")

    # ---- live config (daemon/liveconfig.py) ---------------------------------------------------------------------
    def reload_config(self) -> bool:
        return self.live.reload()

    def apply_config(self, new: Config, file: str = "config", preloaded: Optional[Detector] = None) -> None:
        self.live.apply(new, file, preloaded)

    # ---- process ------------------------------------------------------------------------------------------------
    def run_forever(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload_config, daemon=True).start())
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            log.info("stopping (pid %s)", os.getpid())
            self.stop()
        return 0
