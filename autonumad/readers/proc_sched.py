"""The kernel NUMA balancer's view of a task: the tail of /proc/<pid>/sched.

Present only with CONFIG_SCHED_DEBUG and CONFIG_NUMA_BALANCING (format:
kernel/sched/debug.c `proc_sched_show_task` -> `sched_show_numa` and
`print_numa_stats`). The file is a header and padded `name : value` lines
(`"%-45s:%21Ld"`); the NUMA part is

    mm->numa_scan_seq                            :                    0
    numa_pages_migrated                          :                    0
    numa_preferred_nid                           :                   -1
    total_numa_faults                            :                    0
    current_node=0, numa_group_id=0
    numa_faults node=0 task_private=0 task_shared=0 group_private=0 group_shared=0
    numa_faults node=1 task_private=12 task_shared=0 group_private=0 group_shared=0

- `mm->numa_scan_seq` is printed only for tasks with an mm (None otherwise).
- `numa_preferred_nid` is -1 until the balancer has picked a node.
- `numa_group_id` is 0 when the task is in no NUMA group.
- One `numa_faults` line per possible node, and only once the task has
  taken NUMA hinting faults (p->numa_faults allocated); the counts are
  decayed fault averages, not totals.

Other lines (the scheduler statistics above the tail, and
`numa_task_migrated`/`numa_task_swapped` on schedstat kernels) are ignored.
No tail at all (kernel without NUMA balancing) gives None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from autonumad.errors import MalformedProcFile, ParseError, ProcessGone

_VALUE_KEYS = frozenset({
    "mm->numa_scan_seq", "numa_pages_migrated", "numa_preferred_nid", "total_numa_faults",
})
_FAULT_KEYS = ("node", "task_private", "task_shared", "group_private", "group_shared")


class NodeFaults(NamedTuple):
    """One `numa_faults` line; a tuple, so it also unpacks positionally."""

    node: int
    task_private: int
    task_shared: int
    group_private: int
    group_shared: int


@dataclass(frozen=True, slots=True)
class SchedNuma:
    numa_scan_seq: int | None  # None for a task without an mm
    numa_pages_migrated: int
    numa_preferred_nid: int  # -1: none chosen yet
    total_numa_faults: int
    current_node: int
    numa_group_id: int  # 0: not in a NUMA group
    faults_by_node: tuple[NodeFaults, ...]  # sorted by node; () before the first fault


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ParseError(f"{key}: bad value {value.strip()[:30]!r}") from None


def _key_values(text: str) -> dict[str, str]:
    """`a=1, b=2` or `a=1 b=2` -> {"a": "1", "b": "2"}."""
    out: dict[str, str] = {}
    for item in text.replace(",", " ").split():
        key, eq, value = item.partition("=")
        if not eq:
            raise ParseError(f"expected key=value, got {item[:30]!r}")
        out[key] = value
    return out


def parse_sched_numa(text: str) -> SchedNuma | None:
    values: dict[str, int] = {}
    where: dict[str, str] | None = None
    faults: dict[int, NodeFaults] = {}
    for line in text.split("\n"):
        if line.startswith("numa_faults "):
            kv = _key_values(line[len("numa_faults "):])
            try:
                row = NodeFaults(*(_int(k, kv[k]) for k in _FAULT_KEYS))
            except KeyError as e:
                raise ParseError(f"numa_faults line without {e.args[0]}") from None
            faults[row.node] = row
        elif line.startswith("current_node="):
            where = _key_values(line)
        else:
            key, sep, value = line.partition(":")
            key = key.strip()
            if sep and key in _VALUE_KEYS:
                values[key] = _int(key, value)

    if not values and where is None and not faults:
        return None
    missing = [k for k in ("numa_pages_migrated", "numa_preferred_nid", "total_numa_faults")
               if k not in values]
    if missing:
        raise ParseError(f"NUMA tail without {', '.join(missing)}")
    if where is None or "current_node" not in where or "numa_group_id" not in where:
        raise ParseError("NUMA tail without 'current_node=N, numa_group_id=G'")
    return SchedNuma(
        numa_scan_seq=values.get("mm->numa_scan_seq"),
        numa_pages_migrated=values["numa_pages_migrated"],
        numa_preferred_nid=values["numa_preferred_nid"],
        total_numa_faults=values["total_numa_faults"],
        current_node=_int("current_node", where["current_node"]),
        numa_group_id=_int("numa_group_id", where["numa_group_id"]),
        faults_by_node=tuple(faults[n] for n in sorted(faults)),
    )


def read_sched_numa(host, pid: int) -> SchedNuma | None:
    """Read the NUMA tail of /proc/<pid>/sched.

    None if the kernel prints none, or if /proc/<pid>/sched itself does not
    exist (no CONFIG_SCHED_DEBUG) -- that case cannot be told apart from a
    vanished process by the read alone, so it is checked against
    /proc/<pid>/stat. Raises ProcessGone / AccessDenied / MalformedProcFile.
    """
    try:
        text = host.read_proc_text(pid, "sched")
    except ProcessGone:
        host.read_proc_text(pid, "stat")  # raises ProcessGone if the process exited
        return None
    try:
        return parse_sched_numa(text)
    except ParseError as e:
        raise MalformedProcFile(pid, f"/proc/{pid}/sched", str(e)) from None
