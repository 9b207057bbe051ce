"""CPU time per CPU: the `cpuN` lines of /proc/stat.

Format (proc(5) "/proc/stat"; fs/proc/stat.c `show_stat`): an aggregate
`cpu` line, then one line per online CPU, times in USER_HZ ticks:

    cpu  1584 0 749 35784 90 0 18 7 0 0
    cpu0 354 0 281 18474 9 0 5 2 0 0
    cpu1 1229 0 467 17309 80 0 13 5 0 0
    intr 76368 0 0 ...

    columns: user nice system idle iowait irq softirq steal guest guest_nice

Older kernels print fewer columns (iowait/irq/softirq since 2.6, steal
2.6.11, guest 2.6.24, guest_nice 2.6.33); at least user..idle is required.
Busy time is user + nice + system + irq + softirq + steal. `guest` and
`guest_nice` are already included in user and nice (kernel/sched/cputime.c
`account_guest_time`), so they are not added again. iowait counts as idle:
the CPU was free to run something else. Offline CPUs have no line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from autonumad.readers import read_host_file
from autonumad.errors import ParseError

# Column indexes (after the cpuN name) that count as busy; 3 idle and 4 iowait do not.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
_IDLE_COLUMNS = (3, 4)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    cpu: int
    busy_ticks: int
    total_ticks: int  # busy + idle + iowait


def parse_proc_stat(text: str) -> dict[int, CpuTimes]:
    cpus: dict[int, CpuTimes] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        # "cpu " (the aggregate) is skipped; "cpu0".. are kept.
        if not (line.startswith("cpu") and line[3:4].isdecimal()):
            continue
        fields = line.split()
        name = fields[0]
        if not name[3:].isdecimal() or len(fields) < 5:
            raise ParseError(f"line {lineno}: bad cpu line {line[:60]!r}")
        ticks_text = fields[1:11]
        # isdecimal(): the kernel prints %llu; a sign would make busy > total.
        if not all(v.isdecimal() for v in ticks_text):
            raise ParseError(f"line {lineno}: non-numeric time in {line[:60]!r}")
        ticks = [int(v) for v in ticks_text]
        busy = sum(ticks[i] for i in _BUSY_COLUMNS if i < len(ticks))
        idle = sum(ticks[i] for i in _IDLE_COLUMNS if i < len(ticks))
        cpu = int(name[3:])
        cpus[cpu] = CpuTimes(cpu, busy, busy + idle)
    if not cpus:
        raise ParseError("no per-CPU lines")
    return cpus


def read_proc_stat(host) -> dict[int, CpuTimes]:
    """Read /proc/stat through `host`; HostError naming the file if missing or malformed."""
    return read_host_file(host, "/proc/stat", parse_proc_stat)


def cpu_busy_fraction(prev: Mapping[int, CpuTimes], cur: Mapping[int, CpuTimes]) -> dict[int, float]:
    """Busy share of each CPU between two samples, in [0, 1].

    Only CPUs present in both samples are reported (a CPU that went offline
    or came online in between has no meaningful delta). An interval with no
    elapsed ticks gives 0.0; counters that went backwards (the kernel's
    iowait accounting can) are clamped into range.
    """
    out: dict[int, float] = {}
    for cpu, now in cur.items():
        before = prev.get(cpu)
        if before is None:
            continue
        total = now.total_ticks - before.total_ticks
        busy = now.busy_ticks - before.busy_ticks
        out[cpu] = min(1.0, max(0.0, busy / total)) if total > 0 else 0.0
    return out
