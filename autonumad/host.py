"""The host abstraction: every path autonumad reads hangs off an injected root.

A `Host` is a machine seen through its /proc and /sys trees. Readers (the
modules in `autonumad.readers`) take a Host and never build paths of their
own, so the same reader serves a real machine (`LinuxHost`, root "/") and a
*fake host* (`autonumad.sim.fakehost.FakeHost`, a directory with the same layout
as /proc and /sys, captured from a real kernel by scripts/capture-host or
built by tests). Only the actuators differ: on a real host they are
syscalls and sysctl writes; on a fake host they rewrite the tree so that the
next read sees the effect.

Errors: host-level reads raise `OSError` as is (the reader turns it into a
`HostError` naming the file); per-process reads map errno to the typed
outcomes of `autonumad.errors` because processes exit at any moment.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

from autonumad.act import syscalls
from autonumad.errors import AccessDenied, HostError, MalformedProcFile, ProcessGone
from autonumad.model import DEFAULT_CLOCK_TICKS_PER_S, DEFAULT_PAGE_BYTES, MoveResult

# errno values that, under /proc/<pid>, mean the process went away between
# listing and reading (proc(5); ESRCH comes from files such as numa_maps whose
# mm was torn down while the directory still existed).
_GONE_ERRNOS = {errno.ENOENT, errno.ESRCH}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM}
# One read(2) of a host file; most /proc and sysfs files fit in one.
_READ_CHUNK_BYTES = 65536


class Host:
    """Read side shared by real and fake hosts. Paths are absolute host paths."""

    # Bytes per base page (/proc/<pid>/statm, numa_maps without
    # kernelpagesize_kB, move_pages(2)) and clock ticks per second
    # (/proc/<pid>/stat utime and stime). A fake tree is captured from, or
    # modelled on, an x86-64 kernel; LinuxHost asks the running kernel.
    page_size_bytes = DEFAULT_PAGE_BYTES
    clock_ticks_per_s = DEFAULT_CLOCK_TICKS_PER_S

    def __init__(self, root: str | os.PathLike[str] = "/"):
        self.root = Path(root)
        # Reads build plain strings: a daemon pass opens thousands of /proc
        # files, and pathlib's parsing and joining cost more than the read.
        self._prefix = os.fspath(self.root).rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------
    def path(self, host_path: str) -> Path:
        """Map an absolute host path ("/proc/vmstat") into this host's tree."""
        return self.root / host_path.lstrip("/")

    def _fs_path(self, host_path: str) -> str:
        """`path()` as a plain string, for the read path."""
        return self._prefix + "/" + host_path.lstrip("/")

    def exists(self, host_path: str) -> bool:
        return os.path.exists(self._fs_path(host_path))

    def read_text(self, host_path: str) -> str:
        # Bytes decoded once, no text layer: kernel files are ASCII except
        # for names (comm, file paths), which surrogateescape keeps byte-exact.
        # Binary mode also means no newline translation: a "\r" in a file
        # name on a numa_maps line stays in the name instead of ending the line.
        fd = os.open(self._fs_path(host_path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            # /proc files report size 0 and seq_file hands out what fits the
            # buffer, so read until EOF rather than trusting one read().
            chunks = []
            while chunk := os.read(fd, _READ_CHUNK_BYTES):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "surrogateescape")

    def read_text_or_none(self, host_path: str) -> str | None:
        """Read an optional file: None if it does not exist (kernels differ)."""
        try:
            return self.read_text(host_path)
        except FileNotFoundError:
            return None
        except PermissionError:
            return None

    def listdir(self, host_path: str) -> list[str]:
        try:
            return os.listdir(self._fs_path(host_path))
        except FileNotFoundError:
            return []

    # -- processes -----------------------------------------------------------
    def pids(self) -> list[int]:
        """Process ids present now (numeric entries of /proc), ascending."""
        return sorted(int(n) for n in self.listdir("/proc") if n.isdigit())

    def tids(self, pid: int) -> list[int]:
        """Thread ids of a process; raises ProcessGone if it has exited."""
        p = f"/proc/{pid}/task"
        try:
            return sorted(int(n) for n in os.listdir(self._fs_path(p)) if n.isdigit())
        except OSError as e:
            raise process_error(pid, p, e) from None

    def read_proc_text(self, pid: int, name: str) -> str:
        """Read /proc/<pid>/<name>, mapping errno to ProcessGone/AccessDenied."""
        p = f"/proc/{pid}/{name}"
        try:
            return self.read_text(p)
        except OSError as e:
            raise process_error(pid, p, e) from None

    # -- actuators (implemented by LinuxHost and FakeHost) ----------------------
    def move_pages(self, pid: int, start: int, end: int, page_size: int,
                   target_node: int, max_pages: int | None = None) -> MoveResult:
        """Move the populated pages of [start, end) of `pid` to `target_node`."""
        raise NotImplementedError

    def range_nodes(self, pid: int, ranges: list[tuple[int, int]], max_pages: int) -> list[dict[int, int]]:
        """Bytes per node of each [start, end) range of `pid` (move_pages(2) in query form).

        At most `max_pages` pages are asked about over all ranges; beyond
        that the ranges are sampled evenly and the counts scaled up.
        """
        raise NotImplementedError

    def self_pid(self) -> int | None:
        """This daemon's own pid when it runs on this host (it never plans for itself), else None."""
        return None

    def pidfd_open(self, pid: int) -> int | None:
        """A pidfd(2) for `pid`, or None where there are none: a host tree has no kernel process handles."""
        return None

    def set_thread_affinity(self, tid: int, cpus: Iterable[int]) -> None:
        """sched_setaffinity(2) on one thread; raises ProcessGone/AccessDenied."""
        raise NotImplementedError

    def thread_affinity(self, tid: int) -> frozenset[int]:
        raise NotImplementedError

    def write_text(self, host_path: str, value: str) -> None:
        """Write a kernel knob (sysctl or sysfs file)."""
        raise NotImplementedError


def process_error(pid: int, path: str, e: OSError) -> Exception:
    """The typed outcome of an OSError met on a process's file or thread.

    ENOENT/ESRCH: it is gone; EACCES/EPERM: access refused. Anything else
    (EINVAL from sched_setaffinity(2) means an empty mask, not a gone
    thread) is returned as it is, for the caller to raise.
    """
    if e.errno in _GONE_ERRNOS:
        return ProcessGone(pid, path)
    if e.errno in _DENIED_ERRNOS:
        return AccessDenied(pid, path)
    if e.errno in (errno.ENOTDIR, errno.EISDIR):
        # Only a fake tree does this (/proc/<pid> a file, numa_maps a directory):
        # a malformed process, not a crash (issue 10).
        return MalformedProcFile(pid, path, os.strerror(e.errno))
    return e


class LinuxHost(Host):
    """The machine we run on. Actuators are real syscalls (autonumad.act.syscalls)."""

    def __init__(self, root: str | os.PathLike[str] = "/"):
        super().__init__(root)
        self.page_size_bytes = os.sysconf("SC_PAGE_SIZE")
        self.clock_ticks_per_s = os.sysconf("SC_CLK_TCK")

    def __repr__(self) -> str:
        return "this host" if self.root == Path("/") else f"{type(self).__name__}({str(self.root)!r})"

    def self_pid(self) -> int | None:
        return os.getpid()

    def pidfd_open(self, pid: int) -> int | None:
        from autonumad.act import identity

        return identity.open_pidfd(pid)

    def move_pages(self, pid: int, start: int, end: int, page_size: int,
                   target_node: int, max_pages: int | None = None) -> MoveResult:
        from autonumad.act import identity

        identity.check_held(self, pid)  # still the process the action was decided for (issue 10)
        return syscalls.move_range(pid, start, end, page_size, target_node, max_pages)

    def range_nodes(self, pid: int, ranges: list[tuple[int, int]], max_pages: int) -> list[dict[int, int]]:
        return syscalls.range_nodes(pid, ranges, self.page_size_bytes, max_pages)

    def set_thread_affinity(self, tid: int, cpus: Iterable[int]) -> None:
        try:
            os.sched_setaffinity(tid, set(cpus))
        except OSError as e:
            raise process_error(tid, f"/proc/{tid}", e) from None

    def thread_affinity(self, tid: int) -> frozenset[int]:
        try:
            return frozenset(os.sched_getaffinity(tid))
        except OSError as e:
            raise process_error(tid, f"/proc/{tid}", e) from None

    def write_text(self, host_path: str, value: str) -> None:
        with open(self.path(host_path), "w", encoding="ascii") as f:
            f.write(value)
