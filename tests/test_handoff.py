"""The hand-offs between threads: newest-only frames, results in order."""

import random
import threading
import time

from daemon.handoff import InOrder, LatestSlot


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


def test_in_order_releases_results_in_ticket_order():
    q = InOrder(maxlen=8)
    a, b, c = q.take(), q.take(), q.take()
    q.finish(c, "c")
    q.finish(b, "b")
    assert q.get(timeout=0) is None  # a is still in flight: b and c must not overtake it
    q.finish(a, "a")
    assert [q.get(timeout=0), q.get(timeout=0), q.get(timeout=0)] == ["a", "b", "c"]


def test_in_order_failed_work_unblocks_later_results():
    q = InOrder()
    a, b = q.take(), q.take()
    q.finish(b, "b")
    threading.Timer(0.05, lambda: q.finish(a, None)).start()
    assert q.get(timeout=2) == "b"


def test_in_order_is_bounded_and_counts_drops():
    q = InOrder(maxlen=3)
    for i in range(5):
        q.finish(q.take(), i)
    assert q.dropped == 2
    assert [q.get(timeout=0) for _ in range(4)] == [2, 3, 4, None]


def test_in_order_close_unblocks_a_waiting_consumer():
    q = InOrder()
    q.take()
    threading.Timer(0.05, q.close).start()
    t0 = time.monotonic()
    assert q.get(timeout=5) is None and time.monotonic() - t0 < 2


def test_in_order_with_concurrent_workers_loses_nothing_and_keeps_order():
    q, take_lock, work, finished = InOrder(maxlen=1000), threading.Lock(), iter(range(300)), []
    rng = random.Random(7)

    def worker():
        while True:
            with take_lock:  # as the daemon does: the item and its ticket are taken together
                item = next(work, None)
                ticket = q.take() if item is not None else None
            if item is None:
                return
            time.sleep(rng.random() * 0.002)  # requests finish out of order
            finished.append(item)
            q.finish(ticket, item)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    got = [q.get(timeout=5) for _ in range(300)]
    for t in threads:
        t.join()
    assert finished != sorted(finished)  # the workers did finish out of order ...
    assert got == list(range(300))  # ... and the consumer still saw every item, in order
