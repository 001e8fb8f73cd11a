"""The MQTT link: bounded outbox policy, non-blocking start on a dead broker, delivery after the broker returns."""

import time

from daemon.config import MqttConfig
from daemon.mqtt import MqttLink, Outbox, Outgoing
from tests.conftest import Broker, free_port


def _msg(i, droppable=True):
    return Outgoing(f"t/{i}", str(i).encode(), 0, False, droppable)


def test_outbox_drops_oldest_detections_first_and_keeps_status():
    box = Outbox(3)
    box.add(_msg("status", droppable=False))
    for i in range(4):
        box.add(_msg(i))
    topics = [m.topic for m in box.drain()]
    assert topics == ["t/status", "t/2", "t/3"] and box.dropped == 2


def test_outbox_full_of_undroppable_drops_oldest():
    box = Outbox(2)
    for i in range(3):
        box.add(_msg(i, droppable=False))
    assert [m.topic for m in box.drain()] == ["t/1", "t/2"]


def test_dead_broker_never_blocks_and_outbox_is_delivered_later(tmp_path, subscriber_factory):
    port = free_port()
    link = MqttLink(MqttConfig(port=port, outbox_size=5, reconnect_min_s=0.5, reconnect_max_s=1), "dev")
    t0 = time.perf_counter()
    link.start()
    for i in range(8):
        link.publish("detections", {"i": i})
    assert time.perf_counter() - t0 < 0.5  # nothing waited for the broker
    assert len(link.outbox) == 5 and link.outbox.dropped == 3
    broker = Broker(tmp_path, port)
    sub = None
    try:
        broker.start()
        sub = subscriber_factory(port, "ripeye/dev/#")
        assert link.connected.wait(10)
        deadline = time.time() + 5
        while link.published < 5 and time.time() < deadline:
            time.sleep(0.05)
        assert link.published >= 5 and len(link.outbox) == 0  # the 5 queued messages went out on reconnect
        # retained status is there for the late subscriber; queued detections were flushed on connect
        sub.wait_for("status", lambda p: p == b"online", timeout=5)
        link.publish("detections", {"i": 99})
        sub.wait_for("detections", lambda p: b"99" in p, timeout=5)
    finally:
        link.stop()
        broker.stop()


def test_rate_limited_log_says_once_then_counts_what_it_held_back(caplog):
    import logging

    from daemon.ratelimit import RateLimitedLog

    limited = RateLimitedLog(logging.getLogger("ripeye-test"), interval_s=0.2)
    with caplog.at_level(logging.WARNING, logger="ripeye-test"):
        for i in range(100):
            limited.warning("dropped %d", i)
        time.sleep(0.25)
        limited.warning("dropped %d", 100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dropped 0", "dropped 100 (99 more like this in the last 0.2 s)"]
