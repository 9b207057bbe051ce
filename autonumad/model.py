"""The data model every stage of a pass shares: what is planned, why, and what a move did.

    read (observe/) -> plan (plan/) -> execute (act/) -> record (service/)

The planner returns `Action`s with a `Verdict` per process; the executor
turns each action into an `Outcome`, counting pages through `MoveResult`s;
the tracker describes hotness as `Region`s. This module imports nothing
from the package, so any stage can use it without pulling in another.

Page geometry: `DEFAULT_PAGE_BYTES` is the one literal base page size in
the package, the x86-64 page a captured or built fake tree is modelled on.
A running kernel's page size comes from the host (`Host.page_size_bytes`,
sysconf(_SC_PAGESIZE) on Linux) and travels with the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Mapping

# The base page of the x86-64 kernels the fake trees model (getpagesize(2)).
DEFAULT_PAGE_BYTES = 4096
# USER_HZ, the unit of utime/stime in /proc/<pid>/stat (proc(5)), on every
# architecture Linux builds for; LinuxHost asks sysconf(_SC_CLK_TCK).
DEFAULT_CLOCK_TICKS_PER_S = 100

ProcKey = tuple[int, int]  # (pid, starttime in clock ticks): a process across passes

# Action kinds.
MIGRATE = "migrate"
SET_AFFINITY = "set_affinity"
RESTORE_AFFINITY = "restore_affinity"


@dataclass(frozen=True, slots=True)
class VmaMove:
    start: int
    page_size_bytes: int
    pages: int  # pages of this VMA not on the target node (VMA page units)
    # None: the whole VMA from `start`. Set: just [start, end) within the
    # VMA containing `start` (tiering moves address ranges, not VMAs).
    end: int | None = None


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # MIGRATE | SET_AFFINITY | RESTORE_AFFINITY
    pid: int
    start_ticks: int
    comm: str
    rule: str  # short machine-readable reason: memory-follows-task, task-follows-memory, ...
    reason: str  # one human sentence
    target_node: int | None = None
    cpus: tuple[int, ...] = ()  # for affinity actions
    original_cpus: tuple[int, ...] = ()  # what set_affinity replaces (kept for undo)
    vmas: Sequence[VmaMove] = ()  # for migrate: a tuple, or a lazy sequence from the planner
    bytes: int = 0  # bytes to move (migrate)

    @property
    def key(self) -> ProcKey:
        return (self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why the planner did or did not act on one process (for explain, logs and metrics)."""

    pid: int
    comm: str
    rule: str
    reason: str
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    verdicts: Mapping[int, Verdict]
    ledger: object | None = None  # the pass's CPU bookings (plan/placement.py's CpuLedger)


@dataclass(frozen=True, slots=True)
class Region:
    """An address range of one process and how hot the tracker found it."""

    start: int
    end: int  # exclusive
    accesses_fraction: float  # 0..1
    age_s: float
    # What refined it from the tracker's region (plan/refine.py), for the decision's reason.
    note: str = ""

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class MoveResult:
    """Outcome of one page-move request, counted per page.

    `moved` pages now sit on the target node because of this call,
    `already` were on it before, `absent` were not populated (-ENOENT in
    move_pages(2) status), and `failed` counts the other per-page errors by
    errno name (EBUSY, ENOMEM, EACCES, EFAULT, ...).
    """

    requested: int = 0
    moved: int = 0
    already: int = 0
    absent: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    moved_from: dict[int, int] = field(default_factory=dict)  # source node -> pages
    page_size: int = DEFAULT_PAGE_BYTES
    gone: bool = False  # the process exited during the move

    @property
    def moved_bytes(self) -> int:
        return self.moved * self.page_size


@dataclass
class Outcome:
    """What the executor did with one action."""

    action: Action
    status: str  # "done", "partial", "skipped", "gone", "denied", "failed", "dry-run", "budget"
    detail: str = ""
    moved_pages: int = 0  # base pages
    moved_bytes: int = 0
    moved_from: dict[int, int] = field(default_factory=dict)  # source node -> base pages
    failures: dict[str, int] = field(default_factory=dict)  # errno name -> pages
    threads_set: int = 0
    page_size_bytes: int = DEFAULT_PAGE_BYTES  # the host's base page, the unit of the page counts
    # Which limit ended a "partial" or "budget" move: CUT_DEADLINE, CUT_BUDGET, CUT_RATE or CUT_STOP
    # ("" when none did). The daemon starts the next pass at once after a deadline cut only.
    cut: str = ""


# Outcome.cut: the limit that ended a move early.
CUT_DEADLINE = "deadline"  # the pass's moving window ended (the mover was slower than its rate)
CUT_BUDGET = "budget"  # the pass's byte budget was spent
CUT_RATE = "rate"  # the token bucket would not refill before the deadline
CUT_STOP = "stop"  # SIGTERM


def mib(n: float) -> str:
    """Bytes as the MiB text every reason uses."""
    return f"{n / 2**20:,.0f} MiB"


def node_list(ns) -> str:
    return ",".join(map(str, ns)) or "-"
