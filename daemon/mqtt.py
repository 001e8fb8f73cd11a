"""The MQTT link (paho-mqtt 2.x): last will, non-blocking connect, reconnect with backoff, bounded outbox."""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import paho.mqtt.client as mqtt

from daemon.config import MqttConfig
from daemon.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    droppable: bool  # detections may be dropped when the outbox is full; status/errors are kept longer
    control: bool = False  # a command's answer (reply, snapshot, its error): own budget, never evicts detections
    kind: str = ""  # first topic level under the device (detections, targets, cmd, arm, ...) for drop counts


def encode(payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


class Outbox:
    """Messages waiting for the broker; when full, the oldest droppable message goes first."""

    def __init__(self, size: int):
        self.size = size
        self.items: deque[Outgoing] = deque()
        self.dropped = 0
        self.dropped_by: dict[str, int] = {}  # per topic kind, for stats
        self.lock = threading.Lock()

    def add(self, msg: Outgoing) -> Optional[Outgoing]:
        """Queue a message; returns the one evicted to make room, if any."""
        with self.lock:
            victim = None
            if len(self.items) >= self.size:
                victim = next((m for m in self.items if m.droppable), self.items[0])
                self.items.remove(victim)
                self._count(victim)
            self.items.append(msg)
            return victim

    def count_drop(self, msg: Outgoing) -> None:
        with self.lock:
            self._count(msg)

    def _count(self, msg: Outgoing) -> None:
        self.dropped += 1
        self.dropped_by[msg.kind or "other"] = self.dropped_by.get(msg.kind or "other", 0) + 1

    def drain(self) -> list[Outgoing]:
        with self.lock:
            out = list(self.items)
            self.items.clear()
            return out

    def __len__(self) -> int:
        return len(self.items)


class _Client(mqtt.Client):
    """paho's client, keeping why the last connection attempt failed (paho's on_connect_fail does not say)."""

    last_connect_error = ""

    def reconnect(self):
        try:
            return super().reconnect()
        except OSError as exc:  # refused, unreachable, TLS handshake failed (ssl.SSLError is an OSError)
            self.last_connect_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise


class MqttLink:
    """One connection to the broker for the daemon: publishes under <prefix>/<device_id>/, receives commands."""

    def __init__(self, cfg: MqttConfig, device_id: str,
                 on_message: Optional[Callable[[str, bytes, object, bool], None]] = None,
                 on_connected: Optional[Callable[[], None]] = None):
        self.cfg = cfg
        self.base = f"{cfg.topic_prefix}/{device_id}"
        self.on_message_cb = on_message
        self.on_connected_cb = on_connected
        self.connected = threading.Event()
        self.outbox = Outbox(cfg.outbox_size)
        self.connects = 0
        self.disconnects = 0
        self.published = 0
        self.subscriptions: list[str] = [f"{self.base}/cmd/+"]
        client_id = cfg.client_id or f"ripeye-{device_id}"
        # MQTT v5 so command requests can carry a response topic and correlation data
        self.client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                              reconnect_on_failure=True)
        self.state = "connecting"  # connecting | connected | refused | unreachable | disconnected
        self.last_error = ""  # why the link is not connected, for health, stats and the log
        self.failures = 0  # connection attempts that failed since start
        self.fail_log = RateLimitedLog(log, interval_s=30.0)
        self.client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
        # paho's own queue is left unbounded; we bound what we hand it (see _send) so that replies and errors are
        # never refused while bulk detections are.
        self.client.max_inflight_messages_set(100)
        # QoS>0 messages handed to paho and not yet acknowledged, in two budgets of outbox_size each: command
        # answers (a command flood) must never use up the room of detections and targets, nor the reverse
        self._unacked: deque = deque()
        self._unacked_control: deque = deque()
        self._unacked_lock = threading.Lock()
        self.drop_log = RateLimitedLog(log)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        if cfg.tls or cfg.tls_ca_certs:
            self.client.tls_set(ca_certs=cfg.tls_ca_certs, certfile=cfg.tls_client_cert, keyfile=cfg.tls_client_key,
                                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            self.client.tls_insecure_set(cfg.tls_insecure)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    def start(self) -> None:
        """Connect in the background: a dead broker never blocks the caller."""
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 2.0) -> None:
        """Publish `offline` ourselves (a clean exit sends no will), then disconnect."""
        if self.connected.is_set():
            info = self.client.publish(self.topic("status"), "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.connected.clear()  # a disconnect we asked for is not "lost the broker"
        self.state = "stopped"
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, suffix: str, payload, qos: int = 0, retain: bool = False, droppable: bool = True,
                control: bool = False) -> None:
        msg = Outgoing(self.topic(suffix), encode(payload), qos, retain, droppable and not control, control,
                       suffix.split("/", 1)[0])
        if not self.connected.is_set():
            self._queue(msg)
            return
        self._send(msg)

    def _queue(self, msg: Outgoing) -> None:
        victim = self.outbox.add(msg)
        if victim is not None:
            self.drop_log.warning("mqtt: outbox full (%d) while the broker is away: dropped a %s message",
                                  self.outbox.size, victim.kind)

    def _drop(self, msg: Outgoing, why: str) -> None:
        self.outbox.count_drop(msg)
        self.drop_log.warning("mqtt: dropped a %s message: %s (%d dropped so far: %s)", msg.kind, why,
                              self.outbox.dropped, self.outbox.dropped_by)

    @staticmethod
    def _still_unacked(infos: deque) -> int:
        # acknowledgements come back in publish order: trim the acknowledged head, count the rest
        while infos and infos[0].is_published():
            infos.popleft()
        return len(infos)

    @property
    def pending(self) -> int:
        """QoS>0 detections/targets/status messages not yet acknowledged by the broker."""
        with self._unacked_lock:
            return self._still_unacked(self._unacked)

    @property
    def control_pending(self) -> int:
        """QoS>0 command answers not yet acknowledged by the broker."""
        with self._unacked_lock:
            return self._still_unacked(self._unacked_control)

    def _send(self, msg: Outgoing) -> None:
        if msg.control and self.control_pending >= self.cfg.outbox_size:
            self._drop(msg, f"over {self.cfg.outbox_size} command answers unacknowledged (a command flood?)")
            return
        if msg.droppable and self.pending >= self.cfg.outbox_size:
            self._drop(msg, "the broker is not keeping up")  # shed detections, keep the rest
            return
        info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
            if msg.qos:
                with self._unacked_lock:
                    (self._unacked_control if msg.control else self._unacked).append(info)
        elif info.rc == mqtt.MQTT_ERR_NO_CONN:
            self._queue(msg)
        else:
            self._drop(msg, f"the MQTT client refused it ({mqtt.error_string(info.rc)})")

    def reply(self, suffix: str, payload: dict, request_properties=None) -> None:
        """Answer a command on <base>/<suffix>, and also on the MQTT v5 response topic when the request named one."""
        self.publish(suffix, payload, qos=1, control=True)
        response_topic = getattr(request_properties, "ResponseTopic", None) if request_properties else None
        if response_topic and self.connected.is_set():
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            correlation = getattr(request_properties, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
            self.client.publish(response_topic, encode(payload), qos=1, properties=props)

    def subscribe(self, suffix: str) -> None:
        topic = self.topic(suffix)
        if topic not in self.subscriptions:
            self.subscriptions.append(topic)
            if self.connected.is_set():
                self.client.subscribe(topic, qos=1)

    # paho callbacks run on paho's network thread
    def _failed(self, state: str, why: str) -> None:
        self.state, self.last_error = state, why
        self.failures += 1
        self.fail_log.warning("mqtt: cannot connect to %s:%s: %s (retrying every %g s at most)", self.cfg.host,
                              self.cfg.port, why, self.cfg.reconnect_max_s)

    def describe(self) -> dict:
        """The link's state for health, readiness, stats and metrics."""
        return {"connected": self.connected.is_set(), "state": self.state, "last_error": self.last_error,
                "broker": f"{self.cfg.host}:{self.cfg.port}", "failures": self.failures}

    def _on_connect_fail(self, client, userdata):
        why = client.last_connect_error or "connection failed"
        if (self.cfg.tls or self.cfg.tls_ca_certs) and "SSL" not in why and "refused" not in why:
            why += " (TLS is on: does this port speak TLS?)"  # a plain listener drops the TLS hello like this
        self._failed("unreachable", why)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self._failed("refused", f"the broker refused the connection: {reason_code}")
            return
        self.connects += 1
        self.state, self.last_error = "connected", ""
        log.info("mqtt: connected to %s:%s", self.cfg.host, self.cfg.port)
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()
        queued = self.outbox.drain()
        if queued or self.outbox.dropped:
            log.info("mqtt: sending %d messages queued while offline (%d dropped so far, oldest first)", len(queued),
                     self.outbox.dropped)
        for msg in queued:
            self._send(msg)
        if self.on_connected_cb:
            try:
                self.on_connected_cb()
            except Exception:  # a callback bug must not kill paho's network thread
                log.exception("mqtt: on_connected callback failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        if self.connected.is_set():
            self.disconnects += 1
            log.warning("mqtt: lost the broker (%s); reconnecting in the background", reason_code)
            self.state, self.last_error = "disconnected", f"lost the broker: {reason_code}"
        elif self.state not in ("refused", "stopped"):  # dropped before CONNACK: TLS to a plain port, a broker leaving
            self._failed("unreachable", f"connection closed before the broker answered: {reason_code}")
        self.connected.clear()
        with self._unacked_lock:  # paho re-sends or drops in-flight messages itself on reconnect
            self._unacked.clear()
            self._unacked_control.clear()

    def _on_message(self, client, userdata, message):
        if self.on_message_cb is None:
            return
        try:
            # the retain flag is set only on messages the broker replays at subscribe time (stored state, not news)
            self.on_message_cb(message.topic, message.payload, getattr(message, "properties", None),
                               bool(message.retain))
        except Exception:
            log.exception("mqtt: handling a message on %s failed", message.topic)
