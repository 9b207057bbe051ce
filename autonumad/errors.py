"""Typed outcomes of reading and acting on a host.

Expected conditions on a live host (a process exiting mid-read, a file the
daemon may not read, a kernel without some interface) are values of these
types, never bare OSErrors: callers count them and go on, and one process
never fails a pass. The mapping from errno follows what /proc does
(proc(5)): ENOENT/ESRCH under /proc/<pid> mean the process is gone, EACCES
and EPERM mean ptrace access was refused.
"""

from __future__ import annotations


class AutonumadError(Exception):
    """Base of every error autonumad reports as one line to the user."""


class ParseError(ValueError):
    """A parser was handed text that does not match the documented format.

    Parsers raise it with a short reason; readers add the file name.
    """


class HostError(AutonumadError):
    """A host-level file is missing or malformed, or --root is not a host tree.

    This is fatal for a view (exit non-zero with one line naming the file).
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ProcessError(AutonumadError):
    """A per-process read or action failed; the process is skipped, not the pass."""

    kind = "error"

    def __init__(self, pid: int, path: str, reason: str = ""):
        msg = f"pid {pid}: {path}: {reason or self.kind}"
        super().__init__(msg)
        self.pid = pid
        self.path = path
        self.reason = reason or self.kind


class ProcessGone(ProcessError):
    """The process exited (or its pid was never there) while we read it."""

    kind = "process gone"


class AccessDenied(ProcessError):
    """The kernel refused access (ptrace mode check; needs CAP_SYS_PTRACE)."""

    kind = "access denied"


class MalformedProcFile(ProcessError):
    """A per-process file did not parse; the process is left out with a warning."""

    kind = "malformed"


class NotSupported(AutonumadError):
    """The kernel or host lacks an interface (no DAMON, no debugfs knob, ...)."""
