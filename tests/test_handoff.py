"""The newest-only hand-off between threads."""

import threading
import time

from daemon.handoff import LatestSlot


def test_slow_consumer_gets_newest_and_drops_are_counted():
    slot = LatestSlot()
    for i in range(10):
        slot.put(i)
    assert slot.get(timeout=0) == 9
    assert slot.dropped == 9 and slot.get(timeout=0) is None


def test_get_waits_for_a_producer():
    slot = LatestSlot()
    threading.Timer(0.05, lambda: slot.put("x")).start()
    assert slot.get(timeout=2) == "x"


def test_wait_mode_is_lossless():
    slot = LatestSlot()
    got = []

    def consume():
        for _ in range(5):
            got.append(slot.get(timeout=2))
            time.sleep(0.01)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(5):
        slot.put(i, wait=True, timeout=2)
    t.join()
    assert got == [0, 1, 2, 3, 4] and slot.dropped == 0


def test_close_wakes_consumers():
    slot = LatestSlot()
    threading.Timer(0.05, slot.close).start()
    assert slot.get(timeout=2) is None and slot.closed
