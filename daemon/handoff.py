"""A bounded newest-only hand-off between pipeline threads: a slow consumer never builds a backlog."""

from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item; put() replaces an unread item (counted as dropped) unless asked to wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item: T, wait: bool = False, timeout: Optional[float] = None) -> bool:
        """Offer an item. With wait=True block until the previous one was taken (lossless, for benchmarks)."""
        with self._cond:
            if wait and self._item is not None:
                self._cond.wait_for(lambda: self._item is None or self._closed, timeout)
            if self._closed:
                return False
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.put_count += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: Optional[float] = None) -> Optional[T]:
        """Take the newest item, waiting up to timeout; None on timeout or when closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def peek(self) -> Optional[T]:
        with self._cond:
            return self._item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class InOrder(Generic[T]):
    """Hands results to one consumer in the order their work was taken, while several workers run at once.

    A worker takes a ticket when it takes work and finishes it with a result (or None when the work failed); get()
    returns the oldest finished result once no older ticket is still in flight, so a request that finishes early
    never overtakes an older one. At most `maxlen` results wait; beyond that the oldest is dropped (and counted).
    """

    def __init__(self, maxlen: int = 8) -> None:
        self._cond = threading.Condition()
        self._maxlen = maxlen
        self._next_ticket = 0
        self._in_flight: set[int] = set()
        self._done: dict[int, T] = {}
        self._closed = False
        self.dropped = 0

    def take(self) -> int:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._in_flight.add(ticket)
            return ticket

    def finish(self, ticket: int, result: Optional[T]) -> None:
        with self._cond:
            self._in_flight.discard(ticket)
            if result is not None:
                self._done[ticket] = result
                if len(self._done) > self._maxlen:
                    del self._done[min(self._done)]
                    self.dropped += 1
            self._cond.notify_all()

    def _ready(self) -> Optional[int]:
        if not self._done:
            return None
        oldest = min(self._done)
        return oldest if not self._in_flight or oldest < min(self._in_flight) else None

    def get(self, timeout: Optional[float] = None) -> Optional[T]:
        """The next result in ticket order, waiting up to timeout; None on timeout or when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._ready() is not None, timeout)
            ticket = self._ready()
            return None if ticket is None else self._done.pop(ticket)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
