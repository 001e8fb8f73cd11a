"""systemd integration: sd_notify READY/WATCHDOG/STATUS over $NOTIFY_SOCKET (no-op outside systemd)."""

from __future__ import annotations

import os
import socket
from typing import Optional


class Notifier:
    """Sends sd_notify datagrams; every call is a cheap no-op when not started by systemd."""

    def __init__(self, environ: Optional[dict] = None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        enabled = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_s = int(usec) / 1e6 if enabled else None
        self.ready_sent = False
        self._sock: Optional[socket.socket] = None

    @property
    def active(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(message.encode(), addr)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        if not self.ready_sent:
            self.ready_sent = self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")
