"""Logging that fits both a terminal and the systemd journal.

Under systemd, stderr is a stream connected to journald, which stamps every
line with its own time, host and unit. Our own timestamps would then appear
twice, and the level would be lost, because journald gives every line of a
stream the same default priority. sd-daemon(3) defines the fix: start each
line with "<N>", N being the syslog priority (LOG_ERR = 3 ... LOG_DEBUG = 7);
journald strips the prefix and records N as the entry's PRIORITY.

How we know stderr is the journal (systemd.exec(5), "$JOURNAL_STREAM"): the
service manager sets JOURNAL_STREAM="<device>:<inode>" of the stream it
connected stdout/stderr to. The variable is inherited by children that may
have redirected stderr elsewhere, so the man page recommends comparing it
with fstat() of our own stderr; we do.

Elsewhere (a terminal, a test, `autonumad run` by hand): a readable
"2024-05-01 12:00:00 INFO message" line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping, TextIO

# The names accepted by `[daemon] log_level` and setup_logging(), lowest first.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Python level -> syslog priority (syslog(3): LOG_CRIT 2, LOG_ERR 3,
# LOG_WARNING 4, LOG_NOTICE 5, LOG_INFO 6, LOG_DEBUG 7).
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a Python level; levels between two map down to the more severe."""
    for lvl in sorted(_SYSLOG_PRIORITY, reverse=True):
        if levelno >= lvl:
            return _SYSLOG_PRIORITY[lvl]
    return 7


class JournalFormatter(logging.Formatter):
    """`<N>message`, with the prefix repeated on every line.

    journald splits a stream at newlines and each piece becomes its own entry
    with the default priority unless it carries its own prefix; a traceback
    would otherwise be logged at the stream's default level.
    """

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


class ConsoleFormatter(logging.Formatter):
    """`2024-05-01 12:00:00 INFO    message` for terminals and log files."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def stderr_is_journal(env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when JOURNAL_STREAM names the very stream we log to (systemd.exec(5))."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    dev_s, sep, ino_s = value.partition(":")
    if not sep:
        return False
    try:
        dev, ino = int(dev_s), int(ino_s)
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        # Not numbers, or a stream without a file descriptor (pytest's capture
        # raises io.UnsupportedOperation, an OSError): not the journal's socket.
        return False
    return st.st_dev == dev and st.st_ino == ino


def level_number(level: str) -> int:
    """"info" -> logging.INFO; raises ValueError naming the accepted levels."""
    name = level.strip().lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
    return getattr(logging, name.upper())


class _AutonumadHandler(logging.StreamHandler):
    """Marks the handler we installed, so a second call (a reload) replaces it."""


def setup_logging(level: str, *, stream: TextIO | None = None,
                  env: Mapping[str, str] | None = None, journal: bool | None = None) -> logging.Handler:
    """Send log records at `level` and above to stderr in the format that fits it.

    Idempotent: calling it again (for example after a reload changed
    `[daemon] log_level`) replaces the handler installed before. It owns the
    stream: any other root handler already writing to the same stream (a
    logging.basicConfig() default set up before the config was read) is
    removed too, or every line would reach the journal twice. Handlers
    writing elsewhere (pytest's caplog) are kept. `journal` forces the
    format; by default it is detected from JOURNAL_STREAM. Returns the
    installed handler.
    """
    levelno = level_number(level)
    out = stream if stream is not None else sys.stderr
    use_journal = stderr_is_journal(env, out) if journal is None else journal
    handler = _AutonumadHandler(out)
    handler.setFormatter(JournalFormatter() if use_journal else ConsoleFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers
                if isinstance(h, _AutonumadHandler)
                or (type(h) is logging.StreamHandler and getattr(h, "stream", None) in (out, sys.stderr))]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler
