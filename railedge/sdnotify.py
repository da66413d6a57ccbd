"""The systemd notify protocol (sd_notify(3)), without libsystemd.

A service with Type=notify tells systemd how it is doing by sending datagrams such as
"READY=1", "WATCHDOG=1", "STATUS=..." or "STOPPING=1" to the unix socket named in
$NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). $WATCHDOG_USEC asks for
"WATCHDOG=1" at least that often (send at half the interval); $WATCHDOG_PID, when set, names the
process the watchdog is meant for. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op."""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping

import structlog

# A lazy proxy: it follows setup_logging() calls made after import.
log = structlog.get_logger("railedge.sdnotify")


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address for a $NOTIFY_SOCKET value: '@name' is the abstract name '\\0name'."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other forms are not supported here


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout from $WATCHDOG_USEC in seconds, or None when no watchdog is asked
    for (unset, invalid, or $WATCHDOG_PID names another process)."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class SdNotifier:
    """Sends notify messages to systemd. Never raises: a lost notification must not stop the
    service (systemd would notice through the watchdog anyway)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET")
        self.address = notify_address(raw)
        self.watchdog_s = watchdog_interval_s(env)
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None
        if raw and self.address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw, fix="only unix socket paths and @abstract names are supported")
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of newline-separated KEY=VALUE fields; True when it was sent."""
        if self._sock is None:
            return False
        msg = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            self._sock.sendto(msg, self.address)
        except OSError as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("notify_failed", error=str(e), errors=self.errors, address=str(self.address).replace("\0", "@"))
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload; older ones ignore it.
        fields = ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
