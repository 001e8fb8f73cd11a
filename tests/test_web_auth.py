"""The live view beyond loopback: a token (Bearer or basic auth) on every endpoint but /healthz; no open start."""

import base64
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from daemon import config
from tests.conftest import REPO, RIPEYE, free_port, start_daemon
from tests.test_daemon_mqtt import _cfg, _stop

TOKEN = "s3cret-token-for-tests"


def _status(url: str, authorization: str = "") -> int:
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read(100)
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_required_on_every_endpoint_beyond_loopback(tmp_path, broker):
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    proc = start_daemon(_cfg(tmp_path, broker, http={"enabled": True, "host": "0.0.0.0", "port": port,
                                                     "token_file": str(tmp_path / "token")}))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if _status(base + "/healthz") in (200, 503):
                    break
            except OSError:
                time.sleep(0.3)
        basic = "Basic " + base64.b64encode(f"grower:{TOKEN}".encode()).decode()
        for path in ("/", "/metrics", "/stream.mjpg"):
            assert _status(base + path) == 401, path
            assert _status(base + path, "Bearer wrong") == 401, path
            assert _status(base + path, "Basic " + base64.b64encode(b"grower:wrong").decode()) == 401, path
            assert _status(base + path, f"Bearer {TOKEN}") == 200, path
            assert _status(base + path, basic) == 200, path
        assert _status(base + "/healthz") in (200, 503)  # open on purpose (probes), see config/ripeye.yaml
    finally:
        _stop(proc)


def test_refuses_to_serve_open_beyond_loopback(tmp_path, broker):
    cfg = _cfg(tmp_path, broker, http={"enabled": True, "host": "0.0.0.0", "port": free_port()})
    r = subprocess.run([*RIPEYE, "run", "--config", str(cfg)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "http.token_file" in r.stderr and "http.allow_unauthenticated" in r.stderr


@pytest.mark.parametrize("http,ok", [({"host": "127.0.0.1"}, True), ({"host": "localhost"}, True),
                                     ({"host": "::1"}, True), ({"host": "192.168.1.20"}, False),
                                     ({"host": "0.0.0.0", "allow_unauthenticated": True}, True),
                                     ({"host": "0.0.0.0", "token_file": "/etc/ripeye/http-token"}, True),
                                     ({"host": "0.0.0.0", "enabled": False}, True)])
def test_open_beyond_loopback_only_when_explicit(http, ok):
    data = {"http": {"enabled": True, **http}}
    if ok:
        config.validate(data)
    else:
        with pytest.raises(config.ConfigError, match="allow_unauthenticated"):
            config.validate(data)
