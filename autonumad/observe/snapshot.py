"""One immutable snapshot of a host per pass.

A pass reads everything it needs once, here, and the policy and the views
work on the result, never on the host (the oomd `updateContext` shape).
Nothing keeps a snapshot beyond the next pass; rates come from comparing
two snapshots.

Reading is two-stage because the daemon scans thousands of processes and
`numa_maps` is expensive (the kernel walks the page tables under the
target's mmap lock; fs/proc/task_mmu.c):

1. cheap, for every process: `/proc/<pid>/statm` (one line, the resident
   size) when there is a `min_rss_bytes` to apply; kernel threads (no mm)
   and small processes stop here;
2. detailed, for candidates only: `status` (allowed CPUs and nodes, thread
   count), the threads' `stat` (where each last ran), `cgroup`,
   `numa_maps`.

A process that exits or refuses us at any point is recorded in `skipped`
and left out; it never fails the snapshot.

The daemon passes a `SnapshotCache` so that a process's numa_maps is parsed
again only where its text changed since the last pass (a large process has
thousands of lines, and most of them do not change between passes). The
snapshot itself stays immutable: the cache only hands back equal values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

from autonumad.errors import AccessDenied, MalformedProcFile, ParseError, ProcessError, ProcessGone
from autonumad.host import Host
from autonumad.readers.cgroup import read_cgroup_or_unknown
from autonumad.readers.knobs import Knobs, read_knobs
from autonumad.readers.nodes import Topology, read_topology
from autonumad.model import DEFAULT_CLOCK_TICKS_PER_S, DEFAULT_PAGE_BYTES
from autonumad.readers.numa_maps import NumaMaps, parse_numa_maps, reparse_numa_maps
from autonumad.readers.proc_stat import CpuTimes, read_proc_stat
from autonumad.readers.proc_status import ProcStatus, read_status
from autonumad.readers.statm import read_statm
from autonumad.readers.task_stat import TaskStat, read_thread_stats
from autonumad.readers.vmstat import read_vmstat
from autonumad.readers.zoneinfo import Zone, read_zoneinfo



@dataclass(frozen=True, slots=True)
class Skipped:
    pid: int
    kind: str  # "gone", "denied", "malformed"
    message: str


@dataclass(frozen=True, slots=True)
class ProcessView:
    """What one pass knows about one process."""

    pid: int
    comm: str
    status: ProcStatus
    cgroup: str
    threads: Mapping[int, TaskStat]  # tid -> its stat line
    numa_maps: NumaMaps
    running_nodes: tuple[int, ...]  # nodes of the CPUs its threads last ran on
    pages_by_node: Mapping[int, int]  # base pages, from numa_maps
    start_ticks: int  # with pid, the process's identity across passes
    cpu_ticks: int  # utime + stime over all threads

    @property
    def rss_bytes(self) -> int:
        return self.status.vm_rss_bytes or 0

    @property
    def total_pages(self) -> int:
        return sum(self.pages_by_node.values())

    @property
    def policy(self) -> str:
        """The process's memory policy: "default", or its first explicit one."""
        return self.numa_maps.first_explicit_policy() or "default"

    def local_fraction(self, nodes: tuple[int, ...] | None = None) -> float:
        """Fraction of its pages on `nodes` (default: where its threads run)."""
        nodes = self.running_nodes if nodes is None else nodes
        total = self.total_pages
        if total == 0:
            return 1.0
        return sum(self.pages_by_node.get(n, 0) for n in nodes) / total


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    taken_monotonic_s: float
    topology: Topology
    knobs: Knobs
    vmstat: Mapping[str, int]
    zones: tuple[Zone, ...]
    cpu_times: Mapping[int, CpuTimes]
    processes: tuple[ProcessView, ...]
    skipped: tuple[Skipped, ...]
    scanned: int  # processes looked at (their statm or status read)
    read_duration_s: float = 0.0
    # The host's page geometry and clock: pages_by_node counts pages of
    # page_size_bytes; cpu_ticks count clock_ticks_per_s a second.
    page_size_bytes: int = DEFAULT_PAGE_BYTES
    clock_ticks_per_s: int = DEFAULT_CLOCK_TICKS_PER_S

    def process(self, pid: int) -> ProcessView | None:
        for p in self.processes:
            if p.pid == pid:
                return p
        return None


@dataclass(frozen=True, slots=True)
class ScanLimits:
    """Which processes get the expensive detailed read."""

    min_rss_bytes: int = 0
    only_pids: frozenset[int] | None = None  # explain/status PID: read just these
    skip_self: bool = True
    # balance.scan_max_processes: read at most this many in detail, largest
    # resident size first (by statm); None: no limit.
    max_detailed: int | None = None


class SnapshotCache:
    """Parsed numa_maps carried from one snapshot to the next, by process.

    The daemon owns one and passes it to every `take_snapshot`; one-shot
    views make none. An entry is keyed by (pid, start time), so a recycled
    pid starts afresh, and holds the file's text with its parse: the same
    text gives back the same `NumaMaps`, a changed text is re-parsed only
    where its lines changed (`reparse_numa_maps`). Each completed snapshot
    replaces the entries with those of the processes it read in detail, so
    the cache never outgrows one pass; its memory is those processes'
    numa_maps text, which their `NumaMaps` keep anyway.
    """

    def __init__(self) -> None:
        # The text an entry was parsed from is its `vmas.text` (held packed
        # when large: numa_maps.VmaLines), not kept a second time here.
        self._entries: dict[tuple[int, int], NumaMaps] = {}
        self._next: dict[tuple[int, int], NumaMaps] = {}
        # Of the last snapshot: files whose text was unchanged, changed in
        # part, or new to the cache.
        self.unchanged = self.changed = self.new = 0

    def __len__(self) -> int:
        return len(self._entries)

    def text_bytes(self) -> int:
        """Bytes of numa_maps text held (packed, for large files)."""
        return sum(nm.vmas.held_bytes() for nm in self._entries.values())

    def begin(self) -> None:
        self._next = {}
        self.unchanged = self.changed = self.new = 0

    def parse_numa_maps(self, key: tuple[int, int], text: str) -> NumaMaps:
        """`parse_numa_maps(text)`, reusing what the last snapshot parsed for `key`."""
        # Taken out, not looked up: the old text goes as soon as the new one
        # is parsed, so a pass under churn does not hold two passes' texts.
        # (A snapshot that fails part-way loses those entries: their files
        # are parsed whole next time.)
        previous = self._entries.pop(key, None)
        if previous is None:
            self.new += 1
            entry = parse_numa_maps(text)
        else:
            previous_text = previous.vmas.text
            if previous_text == text:
                self.unchanged += 1
                entry = previous  # and the new copy of the text is dropped
            else:
                self.changed += 1
                entry = reparse_numa_maps(text, previous_text, previous)
        self._next[key] = entry
        return entry

    def commit(self) -> None:
        """End of a snapshot: keep only the processes it read."""
        self._entries, self._next = self._next, {}


def take_snapshot(host: Host, limits: ScanLimits = ScanLimits(),
                  clock: Callable[[], float] = time.monotonic,
                  cache: SnapshotCache | None = None) -> HostSnapshot:
    """Read the host once. Raises HostError only for host-level files."""
    t0 = clock()
    topology = read_topology(host)
    knobs = read_knobs(host)
    vmstat = read_vmstat(host)
    zones = read_zoneinfo(host)
    cpu_times = read_proc_stat(host)
    processes: list[ProcessView] = []
    skipped: list[Skipped] = []
    if cache is not None:
        cache.begin()
    me = host.self_pid() if limits.skip_self else None
    pids = host.pids() if limits.only_pids is None else sorted(limits.only_pids)
    pids = [pid for pid in pids if pid != me]
    scanned = len(pids)
    # statm first only when it can rule processes out; else status alone.
    check_size = limits.only_pids is None and limits.min_rss_bytes > 0
    if limits.only_pids is None and limits.max_detailed is not None:
        pids = _largest(host, pids, limits.min_rss_bytes, limits.max_detailed)
        check_size = False
    for pid in pids:
        try:
            if check_size and _too_small(host, pid, limits.min_rss_bytes):
                continue
            status = read_status(host, pid)
            if status.vm_rss_bytes is None:
                continue  # kernel thread: no mm, nothing to place
            if limits.only_pids is None and status.vm_rss_bytes < limits.min_rss_bytes:
                continue
            processes.append(_read_process(host, pid, status, topology, cache))
        except ProcessGone:
            if limits.only_pids is not None:
                skipped.append(Skipped(pid, "gone", f"pid {pid}: no such process"))
            continue  # exited since listing: routine on a live host
        except AccessDenied as e:
            skipped.append(Skipped(pid, "denied", str(e)))
        except MalformedProcFile as e:
            skipped.append(Skipped(pid, "malformed", str(e)))
        except ProcessError as e:
            skipped.append(Skipped(pid, "error", str(e)))
    if cache is not None:
        cache.commit()
    return HostSnapshot(
        taken_monotonic_s=t0, topology=topology, knobs=knobs, vmstat=vmstat, zones=zones,
        cpu_times=cpu_times, processes=tuple(processes), skipped=tuple(skipped), scanned=scanned,
        read_duration_s=clock() - t0, page_size_bytes=host.page_size_bytes,
        clock_ticks_per_s=host.clock_ticks_per_s)


def _largest(host: Host, pids: list[int], min_rss_bytes: int, limit: int) -> list[int]:
    """The `limit` processes with the largest resident size at or above `min_rss_bytes`, by statm."""
    sizes = []
    for pid in pids:
        try:
            resident = read_statm(host, pid).resident_bytes(host.page_size_bytes)
        except ProcessError:
            resident = min_rss_bytes  # status decides, as for a tree without statm
        if resident >= min_rss_bytes:
            sizes.append((-resident, pid))
    return [pid for _, pid in sorted(sizes)[:limit]]


def _too_small(host: Host, pid: int, min_rss_bytes: int) -> bool:
    """The cheap first stage: is the process's resident size below the threshold?

    Kernel threads and zombies print zeros, so they stop here too. A tree
    without statm (captured before the daemon read it) answers False and
    status decides, as it does for a process that has just exited.
    """
    try:
        statm = read_statm(host, pid)
    except ProcessGone:
        return False  # status tells gone from missing
    return statm.resident_bytes(host.page_size_bytes) < min_rss_bytes


def _read_process(host: Host, pid: int, status: ProcStatus, topology: Topology,
                  cache: SnapshotCache | None) -> ProcessView:
    threads = read_thread_stats(host, pid)
    cgroup, _ = read_cgroup_or_unknown(host, pid)  # optional: never hides a process (issue 10)
    leader = threads.get(pid)
    start_ticks = leader.starttime_ticks if leader else 0
    text = host.read_proc_text(pid, "numa_maps")
    try:
        numa_maps = (cache.parse_numa_maps((pid, start_ticks), text) if cache is not None
                     else parse_numa_maps(text))
    except ParseError as e:
        raise MalformedProcFile(pid, f"/proc/{pid}/numa_maps", str(e)) from None
    cpu_to_node = topology.cpu_to_node
    running = tuple(sorted({cpu_to_node[t.processor] for t in threads.values() if t.processor in cpu_to_node}))
    return ProcessView(
        pid=pid, comm=status.name, status=status, cgroup=cgroup, threads=threads,
        numa_maps=numa_maps, running_nodes=running,
        pages_by_node=numa_maps.pages_by_node(host.page_size_bytes),
        start_ticks=start_ticks,
        cpu_ticks=sum(t.utime_ticks + t.stime_ticks for t in threads.values()))
