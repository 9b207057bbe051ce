"""Act on the process the snapshot saw, never on whoever holds its pid now.

The actuators take a bare pid (move_pages(2), sched_setaffinity(2), the
`clear_refs` file, DAMON's target pid), and a pid is recycled once its
process is reaped: between the snapshot and an action, or between setting
an affinity and restoring it at exit, the number can come to name an
unrelated process. So every action first proves identity:

1. open a pidfd (`os.pidfd_open`, pidfd_open(2), Linux >= 5.3): a handle on
   whichever process holds the pid *now*;
2. read that pid's start time (proc(5) /proc/<pid>/stat field 22, clock
   ticks after boot) and compare it with the one the decision was made
   on. Equal means the process at the pid now is the one the snapshot saw:
   it existed then and exists now, and a pid names one live process at a
   time, so it also held the pid when the pidfd was opened. The pidfd
   therefore refers to the snapshot's process;
3. before each step of the action (a move_pages batch, each thread's
   affinity), poll the pidfd: it becomes readable when the process exits
   (pidfd_open(2) "poll"), and until then the pid cannot be reused, so the
   bare-pid syscall that follows reaches the same process. What remains is
   the gap between that poll and the syscall (microseconds); reusing a pid
   needs the process to exit, be reaped and the pid counter to wrap inside it.

Without pidfds (kernels before 5.3, a seccomp filter refusing the call, a
fake host) step 3 re-reads the start time instead, before every step.

A process whose identity does not hold is `ProcessGone` (the snapshot's
process is gone, whoever has its number now), so callers already treat it
as an outcome, not an error. `hold()` keeps the proof for one action in a
per-host slot that the host's actuators check (`check_held`), so the
executor needs one call per action and the actuators one per step.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from dataclasses import dataclass

from autonumad.errors import ProcessError, ProcessGone
from autonumad.readers.task_stat import read_stat

log = logging.getLogger("autonumad")


class ProcessReplaced(ProcessGone):
    """The pid now names another process than the one the decision was about."""

    kind = "process replaced"


def start_ticks(host, pid: int) -> int:
    """The start time of whoever holds `pid` now (stat field 22); ProcessGone if nobody."""
    return read_stat(host, pid).starttime_ticks


def confirm(host, pid: int, expected_start_ticks: int) -> None:
    """Raise ProcessGone/ProcessReplaced unless `pid` is still the process started at `expected_start_ticks`."""
    if expected_start_ticks <= 0:
        # The snapshot could not read a start time: no identity to prove, so no action.
        raise ProcessReplaced(pid, f"/proc/{pid}/stat", "start time unknown: identity cannot be checked")
    now = start_ticks(host, pid)
    if now != expected_start_ticks:
        raise ProcessReplaced(pid, f"/proc/{pid}/stat",
                              f"pid reused: start time {now}, the decision was about start time "
                              f"{expected_start_ticks}")


def open_pidfd(pid: int) -> int | None:
    """A pidfd for `pid`, None where the kernel or the sandbox has none; ProcessGone if no such pid."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except ProcessLookupError:
        raise ProcessGone(pid, "pidfd_open") from None
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            return None  # no pidfds here: the start-time check alone
        if e.errno == errno.EINVAL:
            # pidfd_open(2): EINVAL for a pid that is not a thread-group leader
            # (or bad flags): not the process the snapshot listed.
            raise ProcessGone(pid, "pidfd_open", "not a process (thread-group leader)") from None
        raise


@dataclass
class Handle:
    """Proof that `pid` is the process started at `start_ticks`, kept for one action."""

    host: object
    pid: int
    start_ticks: int
    pidfd: int | None = None

    @classmethod
    def open(cls, host, pid: int, expected_start_ticks: int) -> "Handle":
        pidfd = host.pidfd_open(pid)
        try:
            confirm(host, pid, expected_start_ticks)
        except ProcessError:
            if pidfd is not None:
                os.close(pidfd)
            raise
        return cls(host, pid, expected_start_ticks, pidfd)

    def check(self) -> None:
        """Raise ProcessGone if the process exited, ProcessReplaced if its pid was reused."""
        if self.pidfd is not None:
            p = select.poll()
            p.register(self.pidfd, select.POLLIN)
            if p.poll(0):
                raise ProcessGone(self.pid, "pidfd", "the process exited")
            return
        confirm(self.host, self.pid, self.start_ticks)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


# One held handle per host object: the action in progress. The executor runs
# one action at a time, so one slot is enough, and holding it past the end of
# an action costs one file descriptor until the next one replaces it.
_HELD = "_autonumad_held_handle"


def hold(host, pid: int, expected_start_ticks: int) -> Handle:
    """Prove identity for the action about to start on `pid` and keep the proof on `host`.

    Replaces (and closes) the handle of the previous action. Raises
    ProcessGone/ProcessReplaced (and holds nothing) when the proof fails.
    """
    release(host)
    h = Handle.open(host, pid, expected_start_ticks)
    setattr(host, _HELD, h)
    # One line per action at debug level: the pid-reuse storm test matches
    # each against the kernel's own trace of who held the pid.
    log.debug("acting on pid %d start_ticks %d", pid, expected_start_ticks)
    return h


def release(host) -> None:
    h = getattr(host, _HELD, None)
    if h is not None:
        h.close()
        setattr(host, _HELD, None)


def check_held(host, pid: int) -> None:
    """Called by the actuators before each step on `pid`: re-check the held proof, if any.

    An actuator called without a held handle for `pid` (tools and tests
    that act on a pid directly) is not checked: identity is the caller's
    decision then.
    """
    h = getattr(host, _HELD, None)
    if h is not None and h.pid == pid:
        h.check()
