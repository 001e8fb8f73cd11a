"""Log lines that would repeat in a flood, said at most once per interval with a count of those held back."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """A warning at most every `interval_s`, saying how many were held back in between."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self.logger, self.interval_s = logger, interval_s
        self.last = float("-inf")
        self.held_back = 0
        self.lock = threading.Lock()

    def warning(self, fmt: str, *args) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.interval_s:
                self.held_back += 1
                return
            self.last, held_back, self.held_back = now, self.held_back, 0
        suffix = f" ({held_back} more like this in the last {self.interval_s:g} s)" if held_back else ""
        self.logger.warning(fmt + suffix, *args)
