"""Thread affinity for a whole process: sched_setaffinity(2) on every thread.

sched_setaffinity(2) acts on one thread (a TID), so a process's affinity is
the affinity of each entry of /proc/<pid>/task. psutil's `cpu_affinity()`
and `os.sched_setaffinity(pid)` set only the thread whose TID equals the
pid; the other threads keep running anywhere. numad does the same walk
over /proc/<pid>/task (numad.c, bind_process_and_migrate_memory).

The requested CPUs are intersected with what the process's cpuset allows.
The kernel does that too (kernel/sched/core.c __sched_setaffinity ANDs the
mask with cpuset_cpus_allowed()), but doing it here first means the daemon
records the mask that really applies, and a request outside the cpuset is
reported instead of failing with EINVAL on every thread.

Everything goes through the Host (`host.tids`, `host.set_thread_affinity`,
`host.thread_affinity`, file reads), so a fake host works the same way.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Iterable

from autonumad.act import identity
from autonumad.errors import AccessDenied, ParseError, ProcessGone
from autonumad.host import Host
from autonumad.readers.lists import parse_list

# Threads created while we walk the task list are caught by listing again;
# a process spawning threads faster than we can set them is not going to
# settle, so the walk is bounded.
MAX_LIST_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class AffinityResult:
    """Outcome of `set_process_affinity`.

    `cpus` is the mask applied (requested ∩ the cpuset's CPUs);
    `threads_set` threads now have it; `threads_gone` exited between being
    listed and being set; `errors` counts other failures by errno name
    ("EPERM" for an AccessDenied from the host, "EINVAL" when no requested
    CPU is allowed, one per thread).
    """

    cpus: frozenset[int]
    threads_set: int
    threads_gone: int
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CgroupEntry:
    """One line of /proc/<pid>/cgroup."""

    hierarchy_id: int
    controllers: tuple[str, ...]  # () for the cgroup v2 unified hierarchy
    path: str


# /proc/<pid>/cgroup (cgroups(7), "/proc/[pid]/cgroup"): one line per
# hierarchy, "hierarchy-ID:controller-list:cgroup-path". cgroup v2 has one
# line "0::/path"; cgroup v1 (and the hybrid layout) adds a line per
# mounted v1 hierarchy, e.g. "3:cpuset:/" or "1:name=systemd:/user.slice".
# The path is relative to the hierarchy's mount point and may itself
# contain ':' (so split at most twice).
#
#     0::/system.slice/foo.service
#     3:cpuset:/docker/abc
def parse_proc_cgroup(text: str) -> tuple[CgroupEntry, ...]:
    out: list[CgroupEntry] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ParseError(f"cgroup line without two ':' {line[:60]!r}")
        hid_s, ctrl_s, path = parts
        try:
            hid = int(hid_s)
        except ValueError:
            raise ParseError(f"bad hierarchy id {hid_s[:20]!r}") from None
        if hid < 0 or not path.startswith("/"):
            raise ParseError(f"bad cgroup line {line[:60]!r}")
        controllers = tuple(c for c in ctrl_s.split(",") if c)
        out.append(CgroupEntry(hid, controllers, path))
    return tuple(out)


# Where each layout mounts the hierarchy holding cpusets, and the file name
# of the effective CPU list there (Documentation/admin-guide/cgroup-v2.rst
# "cpuset.cpus.effective"; cgroup-v1/cpusets.rst "cpuset.effective_cpus").
_V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
_V2_FILE = "cpuset.cpus.effective"
_V1_ROOT = "/sys/fs/cgroup/cpuset"
_V1_FILES = ("cpuset.effective_cpus", "cpuset.cpus")


def _walk_up(host: Host, root: str, path: str, names: Iterable[str]) -> frozenset[int] | None:
    """First readable, non-empty CPU list at `root/path`, then its parents.

    In cgroup v2 a cgroup without the cpuset controller enabled has no
    cpuset.* files and is bound by its nearest ancestor that has them.
    """
    names = tuple(names)
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        d = root + "/" + "/".join(parts[:depth]) if depth else root
        for name in names:
            text = host.read_text_or_none(f"{d}/{name}")
            if text is not None and text.strip():
                return frozenset(parse_list(text))
    return None


def cpuset_cpus(host: Host, pid: int) -> frozenset[int] | None:
    """The CPUs the process's cpuset allows; all online CPUs if it has none.

    Reads /proc/<pid>/cgroup, then the cgroup's effective CPU list (v1
    cpuset hierarchy if the process is in one, else v2), falling back to
    /sys/devices/system/cpu/online, then to the union of the nodes'
    cpulists. None if none of these can be read (no restriction known).
    Raises ProcessGone/AccessDenied from reading /proc/<pid>/cgroup.
    """
    try:
        entries = parse_proc_cgroup(host.read_proc_text(pid, "cgroup"))
    except ParseError:
        entries = ()
    for e in entries:
        if "cpuset" in e.controllers:
            found = _walk_up(host, _V1_ROOT, e.path, _V1_FILES)
            if found:
                return found
    for e in entries:
        if e.hierarchy_id == 0 and not e.controllers:
            for root in _V2_ROOTS:
                found = _walk_up(host, root, e.path, (_V2_FILE,))
                if found:
                    return found
    online = host.read_text_or_none("/sys/devices/system/cpu/online")
    if online is not None and online.strip():
        return frozenset(parse_list(online))
    cpus: set[int] = set()
    for name in host.listdir("/sys/devices/system/node"):
        if name.startswith("node") and name[4:].isdigit():
            text = host.read_text_or_none(f"/sys/devices/system/node/{name}/cpulist")
            if text:
                cpus.update(parse_list(text))
    return frozenset(cpus) or None


def set_process_affinity(host: Host, pid: int, cpus: Iterable[int]) -> AffinityResult:
    """Set the CPU affinity of every thread of `pid` to `cpus` ∩ its cpuset.

    Lists /proc/<pid>/task, sets each thread, and lists again until no new
    thread shows up (threads created by an already-set thread inherit the
    mask; the re-listing catches those created by one not yet set), at
    most MAX_LIST_ROUNDS times.

    Raises ProcessGone if the process is gone before any thread was set,
    and AccessDenied if every thread was refused (the permission is the
    same for all threads of a process); partial outcomes are counted in
    the result instead.
    """
    requested = frozenset(cpus)
    allowed = cpuset_cpus(host, pid)
    mask = requested & allowed if allowed is not None else requested

    done: set[int] = set()
    gone = 0
    errors: dict[str, int] = {}
    for _ in range(MAX_LIST_ROUNDS):
        try:
            tids = host.tids(pid)
        except ProcessGone:
            if not done and not gone and not errors:
                raise
            break
        new = [t for t in tids if t not in done]
        if not new:
            break
        for tid in new:
            done.add(tid)
            # Before each thread: the held process is still the one decided about
            # (act/identity.py), so this tid, listed under its task/, is its thread.
            identity.check_held(host, pid)
            if not mask:
                errors["EINVAL"] = errors.get("EINVAL", 0) + 1
                continue
            try:
                host.set_thread_affinity(tid, mask)
            except ProcessGone:
                gone += 1
            except AccessDenied:
                errors["EPERM"] = errors.get("EPERM", 0) + 1
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, "EIO")
                errors[name] = errors.get(name, 0) + 1
    threads_set = len(done) - gone - sum(errors.values())
    if threads_set == 0 and errors and set(errors) == {"EPERM"}:
        raise AccessDenied(pid, f"/proc/{pid}/task", "sched_setaffinity refused (needs CAP_SYS_NICE)")
    return AffinityResult(cpus=mask, threads_set=threads_set, threads_gone=gone, errors=errors)


def get_process_affinity(host: Host, pid: int) -> dict[int, frozenset[int]]:
    """Affinity of each live thread of `pid`: {tid: cpus}.

    Threads that exit while being read are left out; raises ProcessGone
    if the process itself is gone.
    """
    out: dict[int, frozenset[int]] = {}
    for tid in host.tids(pid):
        try:
            out[tid] = host.thread_affinity(tid)
        except ProcessGone:
            continue
    return out
