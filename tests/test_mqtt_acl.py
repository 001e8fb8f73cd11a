"""examples/mosquitto: the role ACL against a real mosquitto with logins; the daemon runs with the device role."""

import json
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import REPO, Broker, start_daemon, write_config

ACL = REPO / "examples" / "mosquitto" / "ripeye.acl"
BASE = "ripeye/aclbox"
PASSWORDS = {"device": "dev-pass-1", "left": "arm-pass-2", "right": "arm-pass-4", "operator": "op-pass-3"}


class Client:
    """A logged-in paho client that records what it receives."""

    def __init__(self, port: int, user: str, subscribe: list[str]):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.on_connect = lambda c, u, f, rc, p=None: [c.subscribe(t, qos=1) for t in subscribe]
        self.client.on_message = lambda c, u, m: self._add(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _add(self, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == f"{BASE}/{suffix}"]

    def wait_for(self, suffix: str, timeout: float = 30) -> bytes:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.on(suffix):
                return self.on(suffix)[-1]
            time.sleep(0.05)
        raise AssertionError(f"nothing on {suffix}; got {sorted({t for t, _ in self.messages})}")

    def publish(self, suffix: str, body: dict) -> None:
        self.client.publish(f"{BASE}/{suffix}", json.dumps(body), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def acl_broker(tmp_path):
    passwd = tmp_path / "ripeye.passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True)
    b = Broker(tmp_path)
    b.conf.write_text(f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
                      f"acl_file {ACL}\npersistence false\nlistener {b.port} 127.0.0.1\n"
                      "user root\n")  # as root, mosquitto would drop to `mosquitto`: no access to tmp
    b.start()
    yield b
    b.stop()


def test_roles_limit_topics_and_device_role_runs_the_daemon(tmp_path, acl_broker):
    (tmp_path / "device.secret").write_text(PASSWORDS["device"] + "\n")
    cfg = write_config(tmp_path / "c.yaml", {
        "device_id": "aclbox", "source": {"uri": "sample"}, "runtime": {"threads": 1}, "stats": {"interval_s": 30},
        "mqtt": {"port": acl_broker.port, "username": "device", "password_file": str(tmp_path / "device.secret")},
        "tracking": {"enabled": False}, "targets": {"enabled": False}})
    operator = Client(acl_broker.port, "operator", [f"{BASE}/#"])
    arm = Client(acl_broker.port, "left", [f"{BASE}/detections", f"{BASE}/arm/+/result", f"{BASE}/cmd/+/result"])
    proc = start_daemon(cfg)
    try:
        operator.wait_for("detections", timeout=40)  # the device role publishes, the operator reads
        arm.wait_for("detections")
        arm.publish("cmd/pause", {"id": "from-arm"})  # refused by the ACL: the daemon never sees it
        arm.publish("arm/right/claim", {"arm_id": "right", "track_id": 1, "id": "as-right"})  # not its topic
        arm.publish("arm/left/claim", {"arm_id": "left", "track_id": 1, "id": "claim-1"})  # its own: answered
        assert json.loads(arm.wait_for("arm/left/result"))["id"] == "claim-1"  # (targets are off here)
        assert arm.on("arm/claim/result") == []  # the shared answers are not the arm's to read
        assert [json.loads(p)["id"] for p in operator.on("arm/claim/result")] == ["claim-1"]  # right's never came
        operator.publish("cmd/stats", {"id": "from-operator"})
        assert json.loads(operator.wait_for("cmd/stats/result"))["ok"] is True
        assert operator.on("cmd/pause/result") == [] and operator.on("cmd/pause") == []
        assert arm.on("cmd/stats/result") == []  # the arm may not read command results either
        assert b"paused" not in b"".join(operator.on("errors"))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        operator.close()
        arm.close()
