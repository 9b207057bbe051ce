"""The systemd notify protocol, with the standard library only.

Protocol (sd_notify(3), "NOTES"; systemd's own notify-selfcontained-example
in man/): the service manager passes the path of an AF_UNIX datagram socket
in $NOTIFY_SOCKET. A path starting with "@" names a socket in the abstract
namespace, whose address starts with a NUL byte instead. The service sends
one datagram per notification, newline-separated VAR=VALUE assignments:

    READY=1                       start-up finished (Type=notify)
    RELOADING=1                   a reload began; with MONOTONIC_USEC=<µs of
    MONOTONIC_USEC=123456789      CLOCK_MONOTONIC> (required by Type=notify-reload,
                                  harmless before systemd 253); READY=1 ends it
    STOPPING=1                    shutting down
    STATUS=free text              shown by `systemctl status`
    WATCHDOG=1                    keep-alive ping (WatchdogSec=)
    EXTEND_TIMEOUT_USEC=<µs>      more time for the current start/stop step

Without NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every
call is a no-op. Sending never raises: a lost notification must not stop the
balancer; the first failure is logged as a warning, later ones at debug.

Watchdog (sd_watchdog_enabled(3)): $WATCHDOG_USEC is the timeout the manager
enforces; $WATCHDOG_PID, when set, names the process it applies to. The
daemon should ping at half the timeout, and only from its main loop after a
completed pass, so a wedged pass trips the watchdog.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)


def notify_address(value: str) -> str | bytes | None:
    """The socket address for a NOTIFY_SOCKET value, or None if we cannot use it.

    "/run/systemd/notify" -> the path; "@name" -> b"\\0name" (abstract).
    Other forms (systemd >= 254 also accepts "vsock:CID:PORT") are not
    spoken here.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends sd_notify messages to the socket systemd gave us, if any.

    `env` and `pid` default to the process's own; tests pass their own
    instead of changing the environment.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, pid: int | None = None):
        self._env = dict(os.environ if env is None else env)
        self._pid = os.getpid() if pid is None else pid
        self._sock: socket.socket | None = None
        self._warned = False
        raw = self._env.get("NOTIFY_SOCKET", "")
        self._address = notify_address(raw) if raw else None
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket address this daemon understands; "
                        "systemd will not hear from it", raw)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (we were started as Type=notify)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send "VAR=VALUE" lines as one datagram; True if it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                # One socket for the daemon's lifetime; CLOEXEC so children
                # (none today) never inherit it.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
            return True
        except OSError as e:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "sd_notify to %s failed: %s (%s)", self._env.get("NOTIFY_SOCKET"),
                    e.strerror or e, message.decode(errors="replace").replace("\n", " "))
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the messages the daemon sends ------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """After the first complete pass, and again at the end of each reload."""
        return self.notify("READY=1", *([_status_line(status)] if status is not None else []))

    def reloading(self) -> bool:
        """At the start of a reload: RELOADING=1 with the CLOCK_MONOTONIC time in µs."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """One line for `systemctl status`."""
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        """Keep-alive ping: call after each completed pass, never from a side thread."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """Ask the manager to act as if the watchdog expired (the loop knows it is stuck)."""
        return self.notify("WATCHDOG=trigger")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start (or stop) times out, e.g. a slow first pass."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval_s(self) -> float | None:
        """Seconds between pings (half of WatchdogSec=), or None if no watchdog applies to us."""
        usec_s = self._env.get("WATCHDOG_USEC", "")
        if not usec_s:
            return None
        pid_s = self._env.get("WATCHDOG_PID", "")
        if pid_s:
            # Set for a different process (we are a child that inherited it): not ours.
            if not pid_s.isascii() or not pid_s.isdigit() or int(pid_s) != self._pid:
                return None
        if not usec_s.isascii() or not usec_s.isdigit() or int(usec_s) == 0:
            return None
        return int(usec_s) / 2 / 1_000_000


def _status_line(text: str) -> str:
    # Each line of a datagram is one assignment; a newline in the text would
    # start a bogus one.
    return "STATUS=" + " ".join(text.splitlines())
