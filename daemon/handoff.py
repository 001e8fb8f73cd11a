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
