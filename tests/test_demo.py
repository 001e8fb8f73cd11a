"""`ripeye demo` stopped with Ctrl-C: the daemon stops before the broker it started, and says so in one line."""

import os
import signal
import socket
import subprocess
import time

from tests.conftest import REPO, RIPEYE, free_port


def test_ctrl_c_stops_daemon_then_broker_cleanly(tmp_path):
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        # a session of its own, like a terminal's foreground job: Ctrl-C is SIGINT to the whole process group
        proc = subprocess.Popen([*RIPEYE, "demo", "--port", str(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "CI": "true"}, start_new_session=True)
    try:
        deadline = time.time() + 60
        while "first detections published" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.3)
        assert "started mosquitto" in log.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "lost the broker" not in text and "Traceback" not in text, text[-2000:]
    assert text.strip().splitlines()[-1] == "ripeye demo: stopped (and the broker it started)"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        broker_left = True
    except OSError:
        broker_left = False
    assert not broker_left, "the demo's mosquitto outlived it"
