"""Broker TLS (CA + client certificate) and username/password, with certificates generated here by openssl."""

import json
import shutil
import ssl
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Broker, daemon_log, free_port, start_daemon, write_config
from tests.test_daemon_mqtt import _stop

PASSWORD = "tomato-s3cret-pw"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    if not shutil.which("openssl") or not shutil.which("mosquitto_passwd"):
        pytest.fail("openssl and mosquitto_passwd are needed (./install.sh --dev installs mosquitto)")
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
            "-subj", "/CN=ripeye test CA", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={'localhost' if name == 'server' else 'ripeye-client'}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", "-extfile", "san.cnf", cwd=d)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(d / "passwd"), "arm", PASSWORD], check=True,
                   capture_output=True)
    for f in d.iterdir():
        f.chmod(0o644)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    return d


@pytest.fixture
def tls_broker(tmp_path, pki):
    port = free_port()
    b = Broker(tmp_path, port)
    b.conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pki / 'passwd'}\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
        "user root\n")  # when started as root, stay root: the test files sit in a root-only tmp dir
    b.start()
    yield b
    b.stop()


def tls_subscriber(port, pki, got):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.username_pw_set("arm", PASSWORD)
    c.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / "client.crt"), keyfile=str(pki / "client.key"),
              cert_reqs=ssl.CERT_REQUIRED)
    c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe("ripeye/#")
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
    c.connect("localhost", port)
    c.loop_start()
    return c


def test_daemon_over_tls_with_password_file(tmp_path, pki, tls_broker, model_dir):
    cfg = write_config(tmp_path / "tls.yaml", {
        "device_id": "tlsbox", "source": {"uri": "sample"},
        "mqtt": {"host": "localhost", "port": tls_broker.port, "tls": True, "tls_ca_certs": str(pki / "ca.crt"),
                 "tls_client_cert": str(pki / "client.crt"), "tls_client_key": str(pki / "client.key"),
                 "username": "arm", "password_file": str(tmp_path / "pw")}})
    got = []
    sub = tls_subscriber(tls_broker.port, pki, got)
    proc = start_daemon(cfg)
    try:
        deadline = time.time() + 30
        while not any(t.endswith("/detections") for t, _ in got) and time.time() < deadline:
            time.sleep(0.1)
        assert any(t == "ripeye/tlsbox/detections" for t, _ in got)
        config = json.loads(next(p for t, p in got if t.endswith("/config")))
        assert config["mqtt"]["password_file"] == "***"
        assert all(PASSWORD.encode() not in p for _, p in got)
    finally:
        sub.loop_stop()
        out = _stop(proc)
    assert PASSWORD not in out and PASSWORD not in daemon_log(proc)


def test_wrong_password_is_reported_and_does_not_block(tmp_path, pki, tls_broker, model_dir):
    (tmp_path / "bad").write_text("nope\n")
    cfg = write_config(tmp_path / "tls.yaml", {
        "device_id": "tlsbox", "source": {"uri": "sample"},
        "mqtt": {"host": "localhost", "port": tls_broker.port, "tls": True, "tls_ca_certs": str(pki / "ca.crt"),
                 "tls_client_cert": str(pki / "client.crt"), "tls_client_key": str(pki / "client.key"),
                 "username": "arm", "password_file": str(tmp_path / "bad")}})
    proc = start_daemon(cfg)
    try:
        time.sleep(6)
        assert proc.poll() is None
        log = daemon_log(proc)
        assert "refused" in log and "first detections published" in log  # detection went on without the broker
    finally:
        _stop(proc)
