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
thousands of lines, and most of them do not change between passes), and is
not read at all for a settled process whose cheap signals say its placement
cannot have changed (`SnapshotCache.reusable`: the read itself is what the
workload pays for, see there). The snapshot itself stays immutable: the
cache only hands back equal values, and each view says how old its
numa_maps data is (`ProcessView.numa_maps_age_s`).
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
    # Seconds between the read of numa_maps these pages come from and this
    # snapshot: 0 when read in this pass, more when the cache reused a
    # settled process's last read (SnapshotCache.reusable).
    numa_maps_age_s: float = 0.0

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
    # balance.numa_maps_refresh_s: the oldest numa_maps data a cache may hand
    # back for a settled process (SnapshotCache.reusable); 0: read every pass.
    numa_maps_refresh_s: float = 0.0


# vmstat counters of pages the kernel itself moved between nodes: NUMA
# balancing's hint-fault migrations (numa_pages_migrated, counted in
# mm/migrate.c migrate_misplaced_folio, with pgpromote_success for
# promotions to a faster tier) and reclaim's demotions (pgdemote_*,
# mm/vmscan.c demote_folio_list). move_pages(2) and migrate_pages(2), the
# daemon's own movers, count in none of them (only pgmigrate_success), and
# neither does compaction, which stays within a node. Absent counters (an
# older kernel, CONFIG_NUMA_BALANCING=n) count as 0.
KERNEL_NODE_MIGRATION_COUNTERS = ("numa_pages_migrated", "pgpromote_success", "pgdemote_kswapd",
                                  "pgdemote_direct", "pgdemote_khugepaged", "pgdemote_proactive")
# A settled process's resident size may drift this fraction of itself since
# its last numa_maps read before the file is read again: an allocator's
# churn (the intrusion benchmark maps and unmaps 16 pages of a 1 GiB process
# every millisecond) stays far below it, while growth that could change the
# local fraction by more than about 1.5 points does not.
RESIDENT_CHANGE_FRACTION = 1 / 64


@dataclass(frozen=True, slots=True)
class CheapSignals:
    """What a pass knows of a process before reading its numa_maps.

    All of it comes from files the kernel fills from counters and task
    fields without walking page tables (status: task_mem() and the cpuset
    lists, fs/proc/task_mmu.c and kernel/cgroup/cpuset.c; the threads' stat:
    do_task_stat(), fs/proc/array.c), plus the host's vmstat.
    """

    resident_bytes: int
    running_nodes: tuple[int, ...]
    cpus_allowed: tuple[int, ...]
    mems_allowed: tuple[int, ...]
    kernel_migrated_pages: int  # sum of KERNEL_NODE_MIGRATION_COUNTERS

    def changed_since(self, old: "CheapSignals") -> str | None:
        """Why the placement may have changed since `old` was taken, or None."""
        if abs(self.resident_bytes - old.resident_bytes) > old.resident_bytes * RESIDENT_CHANGE_FRACTION:
            return "resident size"
        if self.running_nodes != old.running_nodes:
            return "running nodes"
        if self.cpus_allowed != old.cpus_allowed:
            return "allowed CPUs"
        if self.mems_allowed != old.mems_allowed:
            return "allowed memory nodes"
        if self.kernel_migrated_pages != old.kernel_migrated_pages:
            return "kernel migrations"
        return None


@dataclass(slots=True)
class _Entry:
    numa_maps: NumaMaps
    signals: CheapSignals
    read_s: float  # when the file was read, on the snapshot's clock
    # Set by the daemon after planning (SnapshotCache.settle): the last
    # verdict left the process alone for a reason that lasts while its
    # placement does. Only a settled entry may be reused without a read.
    settled: bool = False


class SnapshotCache:
    """Parsed numa_maps carried from one snapshot to the next, by process.

    The daemon owns one and passes it to every `take_snapshot`; one-shot
    views make none. An entry is keyed by (pid, start time), so a recycled
    pid starts afresh, and holds the file's parse (whose `vmas.text` is the
    text it came from), the process's cheap signals when it was read, and
    when that was. Each completed snapshot replaces the entries with those
    of the processes it read in detail, so the cache never outgrows one
    pass; its memory is those processes' numa_maps text, which their
    `NumaMaps` keep anyway.

    Two savings, in this order:

    1. **No read** (`reusable`). Reading numa_maps is what the workload pays
       for: show_numa_map() walks every page table of the process under its
       mmap_lock held for reading (fs/proc/task_mmu.c: m_start() takes
       mmap_read_lock, walk_page_vma() per VMA), so the process's own mmap,
       munmap, mprotect and brk, which take it for writing, wait for the
       whole walk (docs/benchmarks.md, bench-intrusion: 125 ms worst case
       for a 1 GiB process at the default interval, in a TCG guest). So a
       process is not read when (a) the daemon's last verdict on it was a
       settled one (`settle`: it was left alone because its placement is
       fine or is not ours to change), (b) the daemon has not acted on it
       since (`invalidate`, on every action outcome), (c) none of its cheap
       signals changed (`CheapSignals.changed_since`), and (d) its last read
       is younger than `ScanLimits.numa_maps_refresh_s`. Why this is safe:
       the pages of a process change node only when it allocates or frees
       (its resident size moves), when it runs elsewhere (new pages follow
       the CPU under the default policy, mm/mempolicy.c), when an owner
       re-pins its CPUs or nodes (cpuset migration), when the kernel
       migrates (the vmstat counters), when the daemon acts (invalidate),
       or when another agent calls move_pages/mbind. Invisible to the
       signals are that other agent, a thread's excursion to another node
       between two passes (running nodes are sampled once a pass), and
       allocations that free as much as they add while running elsewhere;
       the refresh bound caps how long any of them stays unseen. A process whose signals changed is read afresh in that
       same pass, before any decision can act on it; and should a reused
       read's verdict turn into an action for a reason outside the process
       (the CPU ledger, a reload), the planner holds that action one pass
       for a fresh read (plan/planner.py act_only_on_fresh_reads), so a
       skipped read only ever leads to inaction. The age of the
       data a verdict used is on the view (`ProcessView.numa_maps_age_s`).
    2. **Partial parse** (`parse_numa_maps`): an unchanged text gives back
       the same `NumaMaps`; a changed one is re-parsed only where its lines
       changed (`reparse_numa_maps`).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._next: dict[tuple[int, int], _Entry] = {}
        # Of the last snapshot: files whose text was unchanged, changed in
        # part, or new to the cache; and processes not read at all (reused).
        self.unchanged = self.changed = self.new = self.reused = 0
        # Cumulative, for metrics: numa_maps files read and reads saved.
        self.reads_total = self.reused_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def text_bytes(self) -> int:
        """Bytes of numa_maps text held (packed, for large files)."""
        return sum(e.numa_maps.vmas.held_bytes() for e in self._entries.values())

    def begin(self) -> None:
        self._next = {}
        self.unchanged = self.changed = self.new = self.reused = 0

    def reusable(self, key: tuple[int, int], signals: CheapSignals, now_s: float,
                 refresh_s: float) -> tuple[NumaMaps, float] | None:
        """The last read's parse and its age in seconds, when the file need not be read (class docstring)."""
        entry = self._entries.get(key)
        if entry is None or not entry.settled or refresh_s <= 0:
            return None
        age_s = now_s - entry.read_s
        if not 0 <= age_s < refresh_s or signals.changed_since(entry.signals) is not None:
            return None
        # Kept for the next snapshot with its original read time and signals:
        # drift is measured from what the data describes, not from last pass.
        self._next[key] = self._entries.pop(key)
        self.reused += 1
        self.reused_total += 1
        return entry.numa_maps, age_s

    def parse_numa_maps(self, key: tuple[int, int], text: str, signals: CheapSignals | None = None,
                        now_s: float = 0.0) -> NumaMaps:
        """`parse_numa_maps(text)`, reusing what the last snapshot parsed for `key`."""
        # Taken out, not looked up: the old text goes as soon as the new one
        # is parsed, so a pass under churn does not hold two passes' texts.
        # (A snapshot that fails part-way loses those entries: their files
        # are parsed whole next time.)
        self.reads_total += 1
        previous = self._entries.pop(key, None)
        if previous is None:
            self.new += 1
            nm = parse_numa_maps(text)
        else:
            previous_text = previous.numa_maps.vmas.text
            if previous_text == text:
                self.unchanged += 1
                nm = previous.numa_maps  # and the new copy of the text is dropped
            else:
                self.changed += 1
                nm = reparse_numa_maps(text, previous_text, previous.numa_maps)
        # A fresh read is not settled until the daemon's next verdict says so.
        self._next[key] = _Entry(nm, signals if signals is not None else _NO_SIGNALS, now_s)
        return nm

    def commit(self) -> None:
        """End of a snapshot: keep only the processes it read."""
        self._entries, self._next = self._next, {}

    def settle(self, keys) -> None:
        """After planning: exactly these processes were left alone for a reason that lasts."""
        keys = set(keys)
        for key, entry in self._entries.items():
            entry.settled = key in keys

    def invalidate(self, key: tuple[int, int]) -> None:
        """The daemon acted on the process (any outcome): read its numa_maps next pass."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.settled = False


# Signals of a read made without them (a caller of parse_numa_maps alone):
# an entry that is never settled, so never reused.
_NO_SIGNALS = CheapSignals(0, (), (), (), -1)


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
    kernel_migrated = sum(vmstat.get(name, 0) for name in KERNEL_NODE_MIGRATION_COUNTERS)
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
            processes.append(_read_process(host, pid, status, topology, cache, t0, limits.numa_maps_refresh_s,
                                           kernel_migrated))
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
                  cache: SnapshotCache | None, now_s: float = 0.0, refresh_s: float = 0.0,
                  kernel_migrated_pages: int = 0) -> ProcessView:
    threads = read_thread_stats(host, pid)
    cgroup, _ = read_cgroup_or_unknown(host, pid)  # optional: never hides a process (issue 10)
    leader = threads.get(pid)
    start_ticks = leader.starttime_ticks if leader else 0
    cpu_to_node = topology.cpu_to_node
    running = tuple(sorted({cpu_to_node[t.processor] for t in threads.values() if t.processor in cpu_to_node}))
    key = (pid, start_ticks)
    age_s = 0.0
    reused = None
    if cache is not None:
        signals = CheapSignals(status.vm_rss_bytes or 0, running, tuple(status.cpus_allowed),
                               tuple(status.mems_allowed), kernel_migrated_pages)
        reused = cache.reusable(key, signals, now_s, refresh_s)
    if reused is not None:
        numa_maps, age_s = reused  # settled and unchanged: no page-table walk (SnapshotCache)
    else:
        text = host.read_proc_text(pid, "numa_maps")
        try:
            numa_maps = (cache.parse_numa_maps(key, text, signals, now_s) if cache is not None
                         else parse_numa_maps(text))
        except ParseError as e:
            raise MalformedProcFile(pid, f"/proc/{pid}/numa_maps", str(e)) from None
    return ProcessView(
        pid=pid, comm=status.name, status=status, cgroup=cgroup, threads=threads,
        numa_maps=numa_maps, running_nodes=running,
        pages_by_node=numa_maps.pages_by_node(host.page_size_bytes),
        start_ticks=start_ticks,
        cpu_ticks=sum(t.utime_ticks + t.stime_ticks for t in threads.values()),
        numa_maps_age_s=age_s)
