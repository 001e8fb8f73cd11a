"""Optional HTTP server: a live view (annotated MJPEG), Prometheus metrics and a health check."""

from __future__ import annotations

import base64
import hmac
import html
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import cv2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from daemon.config import HttpConfig, is_loopback
from daemon.liveview import PAGE, TargetBoard, draw_overlay, panel_state
from daemon.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from daemon.control import LiveViewSource

log = logging.getLogger(__name__)

BOUNDARY = "ripeyeframe"
PANEL_POLL_MS = 2000  # the side panel's refresh: ~0.5-1 KB per poll, so a few hundred bytes a second


class Metrics:
    """Prometheus metrics of one daemon (own registry, so tests can run several daemons in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.fps = Gauge("ripeye_fps", "Processed frames per second", registry=r)
        self.frames = Counter("ripeye_frames_total", "Frames processed", registry=r)
        self.dropped = Gauge("ripeye_dropped_frames", "Frames dropped by the newest-only hand-offs", registry=r)
        buckets = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000)
        self.latency = Histogram("ripeye_stage_latency_ms", "Per-stage latency (ms)", ["stage"], buckets=buckets,
                                 registry=r)
        self.detections = Counter("ripeye_detections_total", "Detections published", ["class"], registry=r)
        self.targets = Counter("ripeye_targets_total", "Target messages published", ["state"], registry=r)
        self.reconnects = Gauge("ripeye_mqtt_reconnects", "MQTT reconnects since start", registry=r)
        self.mqtt_connected = Gauge("ripeye_mqtt_connected", "1 while the MQTT link is connected", registry=r)
        self.camera_reconnects = Gauge("ripeye_camera_reconnects", "Camera reopenings since start", registry=r)

    def observe(self, latency: dict, detections, targets) -> None:
        self.frames.inc()
        for stage, ms in latency.items():
            self.latency.labels(stage).observe(ms)
        for d in detections:
            self.detections.labels(d.class_name).inc()
        for t in targets:
            self.targets.labels(t["state"]).inc()


class LiveView:
    """The newest annotated JPEG; frames are only encoded while someone watches."""

    def __init__(self, cfg: HttpConfig):
        self.cfg = cfg
        self.cond = threading.Condition()
        self.jpeg: Optional[bytes] = None
        self.seq = 0
        self.watchers = 0
        self.last_encoded = 0.0

    def wants_frame(self) -> bool:
        return self.watchers > 0 and time.monotonic() - self.last_encoded >= 1.0 / self.cfg.stream_fps

    def offer(self, image, detections, track_ids, fps: float, states: Optional[dict] = None,
              distances_mm: Optional[list] = None) -> None:
        self.last_encoded = time.monotonic()
        img = draw_overlay(image.copy(), detections, track_ids, states, distances_mm, fps)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if ok:
            with self.cond:
                self.jpeg, self.seq = buf.tobytes(), self.seq + 1
                self.cond.notify_all()


def token_offered(authorization: str) -> str:
    """The token in an Authorization header: `Bearer <token>`, or basic auth whose password is the token (so a
    browser's login prompt works; the user name is ignored)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


class TokenFile:
    """The access token of http.token_file, read again whenever the file changes (a new token works at once, the
    old one stops working); a file that stops reading keeps the last good token, and says so."""

    def __init__(self, cfg: HttpConfig):
        self.cfg = cfg
        self.value = cfg.token()  # OSError naming the file: the live view does not start
        self.stamp = self._stamp()
        self.error_log = RateLimitedLog(log, 60.0)

    def _stamp(self):
        try:
            st = Path(self.cfg.token_file).expanduser().stat() if self.cfg.token_file else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None

    def current(self) -> Optional[str]:
        stamp = self._stamp()
        if stamp is not None and stamp != self.stamp:
            try:
                self.value, self.stamp = self.cfg.token(), stamp
            except OSError as exc:
                self.error_log.warning("http: %s; keeping the previous token", exc)
        return self.value


def make_handler(daemon: LiveViewSource, live: LiveView, metrics: Metrics, cfg: HttpConfig, board: TargetBoard):
    exposed = cfg.token_file is not None or not is_loopback(cfg.host)

    class Handler(BaseHTTPRequestHandler):
        server_version = "ripeye"
        tokens: Optional[TokenFile] = None  # set by WebServer from http.token_file
        header_timeout_s = cfg.header_timeout_s

        def handle_one_request(self):
            # a client gets header_timeout_s to send its request line and headers, however it trickles them in (the
            # socket timeout alone restarts with every byte): then the server's deadline watch shuts the connection
            self.server.deadlines.watch(self.connection, self.header_timeout_s)
            try:
                super().handle_one_request()
            finally:
                self.server.deadlines.forget(self.connection)

        def parse_request(self) -> bool:
            ok = super().parse_request()
            self.server.deadlines.forget(self.connection)  # the headers are in: the request may take its time
            return ok

        def _authenticated(self) -> bool:
            token = self.tokens.current() if self.tokens else None
            if token is None:
                return False
            offered = token_offered(self.headers.get("Authorization", ""))
            return hmac.compare_digest(offered.encode(), token.encode())

        def _authorized(self, path: str) -> bool:
            # /healthz stays open: probes (systemd, a monitoring box) need no secret (what it shows, see below)
            return self.tokens is None or path == "/healthz" or self._authenticated()

        def log_message(self, fmt, *args):  # route to our logger, quietly
            log.debug("http %s - %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            self.do_GET()

        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if not self._authorized(path):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="ripeye", charset="UTF-8"')
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "13")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"unauthorized\n")
                return
            if path == "/":
                page = PAGE.format(device=html.escape(daemon.cfg.device_id), poll_ms=PANEL_POLL_MS)
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif path == "/api/state":
                body = json.dumps(panel_state(daemon, board), separators=(",", ":")).encode()
                self._send(200, body, "application/json")
            elif path == "/snapshot.jpg":
                from daemon.commands import snapshot_jpeg
                from daemon.control import CommandError

                try:
                    _, jpeg = snapshot_jpeg(daemon.latest, annotated=True)
                except CommandError as exc:
                    self._send(503, f"{exc}\n".encode(), "text/plain")
                else:
                    self._send(200, jpeg, "image/jpeg")
            elif path == "/metrics":
                daemon.refresh_metrics()
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ready, body = daemon.health()
                if exposed and not self._authenticated() and not is_loopback(self.client_address[0]):
                    # open to anyone who can reach it: the state only, not the camera's address, the pause
                    # reason an operator typed, or errors (send the token to see them)
                    body = {k: body[k] for k in ("ok", "ready", "watchdog_ok") if k in body}
                self._send(200 if ready else 503, json.dumps(body).encode(), "application/json")
            elif path == "/stream.mjpg":
                if self.command == "HEAD":
                    self._send(200, b"", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                else:
                    self._stream()
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self):  # noqa: N802 (http.server's naming)
            """A command from the page: the same code and answer as on MQTT (Commands.execute), behind the token
            and safe from cross-site requests: JSON only, with a custom header (a form or a plain cross-site fetch
            can send neither without a CORS preflight, which is never granted), and a matching Origin if sent."""
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            upload = path == "/api/model/upload"
            body = self.rfile.read(min(length, 65536)) if length and not upload else b""
            if not self._authorized(path):
                self._send(401, b'{"ok":false,"error":"unauthorized"}', "application/json")
                return
            origin = self.headers.get("Origin")
            wanted = "application/octet-stream" if upload else "application/json"
            if (not self.headers.get("Content-Type", "").startswith(wanted)
                    or self.headers.get("X-Ripeye-Request") != "1"
                    or (origin and origin.split("://", 1)[-1] != self.headers.get("Host"))):
                self._send(403, b'{"ok":false,"error":"refused: a command must be a same-origin JSON request (a '
                                b'bundle upload application/octet-stream) with X-Ripeye-Request: 1"}',
                           "application/json")
                return
            if upload:  # a model bundle: the same install as cmd/model/install, from the request body
                self._upload(length, "activate=false" not in query)
                return
            if not path.startswith("/api/cmd/") or length > 65536:
                self._send(404, b'{"ok":false,"error":"not found"}', "application/json")
                return
            reply = daemon.commands.execute(path[len("/api/cmd/"):], body, f"live view {self.client_address[0]}")
            self._send(200 if reply["ok"] else 400, json.dumps(reply).encode(), "application/json")

        def _upload(self, length: int, activate: bool) -> None:
            from daemon.control import CommandError

            try:
                reply = {"ok": True, **daemon.lifecycle.upload(self.rfile, length, activate,
                                                                f"upload from {self.client_address[0]}")}
            except CommandError as exc:
                reply = {"ok": False, "error": str(exc)}
                daemon.report_error("model", f"upload from {self.client_address[0]}: {exc}", control=True)
                self.close_connection = True  # the rest of a refused body is not read
            self._send(200 if reply["ok"] else 400, json.dumps(reply).encode(), "application/json")

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            with live.cond:
                live.watchers += 1
            seen = -1
            try:
                while not daemon.stop_event.is_set():
                    with live.cond:
                        live.cond.wait_for(lambda last=seen: live.seq != last or daemon.stop_event.is_set(),
                                           timeout=1.0)
                        jpeg, seq = live.jpeg, live.seq
                    if jpeg is None or seq == seen:
                        continue
                    seen = seq
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                     .encode() + jpeg + b"\r\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):  # gone, or stopped reading
                pass
            finally:
                with live.cond:
                    live.watchers -= 1

    return Handler


class HeaderDeadlines:
    """One thread for all connections: a connection still sending its request line and headers past its deadline
    is shut (slow-header clients hold a slot, and the socket timeout restarts with every byte they trickle)."""

    def __init__(self):
        self.deadlines: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.cut = 0
        threading.Thread(target=self._run, name="http-deadlines", daemon=True).start()

    def watch(self, conn: socket.socket, seconds: float) -> None:
        with self.lock:
            self.deadlines[conn] = time.monotonic() + seconds

    def forget(self, conn: socket.socket) -> None:
        with self.lock:
            self.deadlines.pop(conn, None)

    def _run(self) -> None:
        while not self.stopped.wait(0.25):
            now = time.monotonic()
            with self.lock:
                late = [c for c, t in self.deadlines.items() if t <= now]
                for c in late:
                    del self.deadlines[c]
            for conn in late:
                self.cut += 1
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once: more are answered 503 and closed at accept, so
    idle or hostile clients cannot pile up threads (each handler also times out; see make_handler). A few more
    slots are kept for loopback clients only, so a local health check or Prometheus scrape still gets an answer
    while remote clients hold every ordinary slot."""

    daemon_threads = True
    request_queue_size = 64  # a burst of connects waits in the kernel's backlog, not in SYN retries
    LOOPBACK_RESERVE = 2

    def __init__(self, address, handler, max_connections: int):
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.reserve = threading.BoundedSemaphore(self.LOOPBACK_RESERVE)
        self.held: dict[int, threading.BoundedSemaphore] = {}
        self.refused = 0
        self.refusal_log = RateLimitedLog(log)
        super().__init__(address, handler)
        self.deadlines = HeaderDeadlines()

    def _take_slot(self, client_address) -> Optional[threading.BoundedSemaphore]:
        if self.slots.acquire(blocking=False):
            return self.slots
        if is_loopback(client_address[0]) and self.reserve.acquire(blocking=False):
            return self.reserve
        return None

    def process_request(self, request, client_address):
        slot = self._take_slot(client_address)
        if slot is None:
            self.refused += 1
            self.refusal_log.warning("http: %d connections open (http.max_connections); refused %s",
                                     self.max_connections, client_address[0])
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.held[id(request)] = slot
        try:
            super().process_request(request, client_address)
        except Exception:
            self.held.pop(id(request), None)
            slot.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.held.pop(id(request)).release()


class WebServer:
    def __init__(self, daemon: LiveViewSource, cfg: HttpConfig, metrics: Metrics):
        self.live = LiveView(cfg)
        self.board = TargetBoard()
        handler = make_handler(daemon, self.live, metrics, cfg, self.board)
        handler.tokens = TokenFile(cfg) if cfg.token_file else None
        handler.timeout = cfg.idle_timeout_s  # socket timeout: an idle keep-alive or a stalled client is closed
        self.server = BoundedHTTPServer((cfg.host, cfg.port), handler, cfg.max_connections)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("http: live view on http://%s:%s/", *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.deadlines.stopped.set()
