"""Shared test fixtures: paths, the shipped model, a real mosquitto on a free loopback port, MQTT subscribers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "tomato-yolo11n"
DATASET = Path(os.environ.get("RIPEYE_DATASET", REPO.parent / "shared" / "datasets" / "laboro-tomato-big"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RIPEYE = [sys.executable, "-m", "daemon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        pytest.fail("mosquitto is not installed: run ./install.sh --dev (it installs it through apt)")
    return found


class Broker:
    """A real mosquitto on 127.0.0.1:port, restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = ""):
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             + extra_conf)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho client collecting every message under a topic filter."""

    def __init__(self, port: int, topic: str = "#"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            # topics are <prefix>/<device_id>/<suffix>: match the suffix exactly (cmd/snapshot is not snapshot)
            return [p for t, p, _ in self.messages if t == suffix or t.split("/", 2)[2:] == [suffix]]

    def json(self, suffix: str) -> list[dict]:
        return [json.loads(p) for p in self.on(suffix)]

    def wait_for(self, suffix: str, predicate=lambda payload: True, timeout: float = 20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.on(suffix):
                if predicate(p):
                    return p
            time.sleep(0.05)
        raise AssertionError(f"no matching message on {suffix} within {timeout} s; got topics "
                             f"{sorted({t for t, _, _ in self.messages})}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber_factory():
    subs = []

    def make(port: int, topic: str = "#") -> Subscriber:
        s = Subscriber(port, topic)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.fail(f"shipped model missing: {MODEL_DIR / 'model.onnx'}")
    return MODEL_DIR


@pytest.fixture(scope="session")
def dataset() -> Path:
    if not (DATASET / "annotations" / "valid.json").is_file():
        pytest.skip(f"dataset not found at {DATASET} (set RIPEYE_DATASET)")
    return DATASET


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def start_daemon(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """`ripeye run` as a subprocess; its log goes to a file beside the config (a pipe nobody reads would fill up
    and block the daemon's logging). `daemon_log(proc)` reads it."""
    e = {**os.environ, "CI": "true", **(env or {})}
    log = open(config.with_suffix(f".{time.monotonic_ns()}.log"), "w")
    proc = subprocess.Popen([*RIPEYE, "run", "--config", str(config), *extra], cwd=REPO, env=e,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = Path(log.name)
    log.close()
    return proc


def daemon_log(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")
