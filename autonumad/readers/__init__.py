"""One module per kernel interface: a pure parser from text to frozen
dataclasses (format documented above it) plus a reader that takes a Host.

The two helpers below are every reader's error mapping, written once:

- a *host file* (/proc/vmstat, /proc/zoneinfo, DAMON's sysfs, ...) that is
  missing or malformed is a `HostError` naming the file: fatal for a view,
  a skipped pass for the daemon;
- a *process file* (/proc/<pid>/status, ...) maps errno to `ProcessGone` /
  `AccessDenied` (Host.read_proc_text) and a parse error to
  `MalformedProcFile`, because processes exit at any moment.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from autonumad.errors import HostError, MalformedProcFile, ParseError

T = TypeVar("T")


def read_host_file(host, path: str, parse: Callable[[str], T], empty: str | None = None) -> T:
    """parse(host.read_text(path)); HostError naming `path` if it is missing, malformed or (with
    `empty`, the complaint) parses to nothing."""
    try:
        value = parse(host.read_text(path))
    except OSError as e:
        raise HostError(path, e.strerror or str(e)) from None
    except ParseError as e:
        raise HostError(path, str(e)) from None
    if empty is not None and not value:
        raise HostError(path, empty)
    return value


def read_proc_file(host, pid: int, name: str, parse: Callable[[str], T]) -> T:
    """parse(/proc/<pid>/<name>); ProcessGone / AccessDenied / MalformedProcFile."""
    text = host.read_proc_text(pid, name)
    try:
        return parse(text)
    except ParseError as e:
        raise MalformedProcFile(pid, f"/proc/{pid}/{name}", str(e)) from None
