"""One immutable snapshot of a host per pass.

A pass reads everything it needs once, here, and the policy and the views
work on the result, never on the host (the oomd `updateContext` shape).
Nothing keeps a snapshot beyond the next pass; rates come from comparing
two snapshots.

Reading is two-stage because the daemon scans thousands of processes and
`numa_maps` is expensive (the kernel walks the page tables under the
target's mmap lock; fs/proc/task_mmu.c):

1. cheap: `/proc/<pid>/status` for every process (RSS, allowed CPUs and
   nodes, thread count); kernel threads and small processes stop here;
2. detailed, for candidates only: the threads' `stat` (where each last
   ran), `cgroup`, `numa_maps`.

A process that exits or refuses us at any point is recorded in `skipped`
and left out; it never fails the snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from autonumad.errors import AccessDenied, MalformedProcFile, ProcessError, ProcessGone
from autonumad.host import Host
from autonumad.readers.cgroup import read_cgroup
from autonumad.readers.knobs import Knobs, read_knobs
from autonumad.readers.nodes import Topology, read_topology
from autonumad.readers.numa_maps import NumaMaps, read_numa_maps
from autonumad.readers.proc_stat import CpuTimes, read_proc_stat
from autonumad.readers.proc_status import ProcStatus, read_status
from autonumad.readers.task_stat import TaskStat, read_thread_stats
from autonumad.readers.vmstat import read_vmstat
from autonumad.readers.zoneinfo import Zone, read_zoneinfo

BASE_PAGE_BYTES = 4096


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
        for v in self.numa_maps.vmas:
            if v.policy not in ("default", "local"):
                return v.policy
        return "default"

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
    scanned: int  # processes whose status was read
    read_duration_s: float = 0.0

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


def take_snapshot(host: Host, limits: ScanLimits = ScanLimits(),
                  clock: Callable[[], float] = time.monotonic) -> HostSnapshot:
    """Read the host once. Raises HostError only for host-level files."""
    t0 = clock()
    topology = read_topology(host)
    knobs = read_knobs(host)
    vmstat = read_vmstat(host)
    zones = read_zoneinfo(host)
    cpu_times = read_proc_stat(host)
    processes: list[ProcessView] = []
    skipped: list[Skipped] = []
    scanned = 0
    import os

    me = os.getpid() if limits.skip_self and not host.is_fake else None
    pids = host.pids() if limits.only_pids is None else sorted(limits.only_pids)
    for pid in pids:
        if pid == me:
            continue
        scanned += 1
        try:
            status = read_status(host, pid)
            if status.vm_rss_bytes is None:
                continue  # kernel thread: no mm, nothing to place
            if limits.only_pids is None and status.vm_rss_bytes < limits.min_rss_bytes:
                continue
            processes.append(_read_process(host, pid, status, topology))
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
    return HostSnapshot(
        taken_monotonic_s=t0, topology=topology, knobs=knobs, vmstat=vmstat, zones=zones,
        cpu_times=cpu_times, processes=tuple(processes), skipped=tuple(skipped), scanned=scanned,
        read_duration_s=clock() - t0)


def _read_process(host: Host, pid: int, status: ProcStatus, topology: Topology) -> ProcessView:
    threads = read_thread_stats(host, pid)
    cgroup = read_cgroup(host, pid)
    numa_maps = read_numa_maps(host, pid)
    cpu_to_node = topology.cpu_to_node
    running = tuple(sorted({cpu_to_node[t.processor] for t in threads.values() if t.processor in cpu_to_node}))
    leader = threads.get(pid)
    return ProcessView(
        pid=pid, comm=status.name, status=status, cgroup=cgroup, threads=threads,
        numa_maps=numa_maps, running_nodes=running,
        pages_by_node=numa_maps.pages_by_node(BASE_PAGE_BYTES),
        start_ticks=leader.starttime_ticks if leader else 0,
        cpu_ticks=sum(t.utime_ticks + t.stime_ticks for t in threads.values()))
