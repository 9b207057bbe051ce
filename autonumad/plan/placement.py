"""Where busy processes run: a CPU capacity ledger per pass, and the
assignment of processes to nodes (pure; no host access).

The kernel's AutoNUMA benchmarks (numa01: two processes whose memory both
starts on one node; numa02: one process with a thread per CPU) show what a
balancer that moves tasks one process at a time does wrong: it pins every
process to the node holding its memory, in the same pass, and crowds four
busy threads onto two CPUs. The rules here prevent that.

1. *Demand, per thread.* A thread's demand is its CPU use between the
   last two passes (utime + stime ticks from /proc/<pid>/task/<tid>/stat,
   per second). A thread that used at least BUSY_THREAD_CORES of a CPU, or
   is runnable now (state R), counts as a whole CPU: a busy thread on a
   crowded CPU shows less use than it wants (four threads sharing two CPUs
   show half a CPU each). A process's demand is booked on the nodes its
   threads last ran on. A process is moved only once *measured*: its
   threads' use between the last two passes, with no thread new since the
   last pass (a process still starting threads has not shown its demand,
   and threads started later inherit an affinity set now). At first sight
   a process settled for SETTLED_TICKS is measured by its threads' lifetime
   use instead (CPU ticks since each thread started over the time since,
   the clock being /proc/stat's per-CPU tick total; a thread younger than
   MIN_LIFETIME_TICKS counts as a whole CPU); a younger one waits a pass
   (rule "measuring", booked meanwhile at its threads' lifetime use).
2. *Capacity.* A node's capacity is its CPU count. The ledger starts each
   pass with every scanned process's demand booked where it runs, plus the
   node's *background* load: CPU time /proc/stat shows busy on the node
   that no scanned process explains. A thread's use is charged to the node
   it last ran on, so a thread that hopped nodes in the interval leaves
   busy time on one node and use on the other: a node's unexplained time
   is capped at the host's (busy minus used over all nodes). Background
   counts only what *persisted*: the least unexplained time of the last
   BACKGROUND_PASSES passes, in whole CPUs and only where at least
   BACKGROUND_MIN_CORES of a CPU is left (so the daemon's own pass, a
   sampler's burst and a migrating thread are not taken for a resident
   load, which a pinned process is).
3. *A task move must fit* against the load that cannot leave the target.
   A process is *confined* to a node when its allowed CPUs all lie on it
   (sched_setaffinity(2), a cpuset); the other busy threads are the
   scheduler's to move, and its load balancer pulls a runnable thread to an
   idle CPU of another node (Documentation/scheduler/sched-domains.rst).
   Moving a process to node N is allowed when N's confined load (its
   background, the processes confined there, the moves booked this pass),
   plus the process's whole demand, is at most N's capacity
   (+ FIT_SLACK_CORES). Every move of the pass books from and to the same
   ledger, so a second process cannot take the capacity the first just
   took. Unconfined threads on N do not block it: such a move never adds
   to the host's least possible cramming (the moved demand leaves the
   unconfined pool and takes the same amount of the room it could use),
   and when the host has more busy threads than CPUs (numa01 with a fifth,
   light thread beside it) refusing every move would not un-cram anyone.
4. *Assignment.* The candidates (busy processes whose threads are not
   confined to one node by affinity, not excluded, not explicitly placed)
   each either *stay* (the threads stay where the scheduler spread them,
   their demand stays booked where it is) or *go* to one node (all their
   demand booked there, their memory follows unless it cannot). Among the
   combinations that fit (rule 3), the chosen one minimises, in order:
   (a) bytes left remote afterwards (a process that stays is charged, for
   each node its threads run on, the bytes not on that node, weighted by
   its demand there: a permanent cost on every access; one that goes
   leaves none if its memory can follow); (b) bytes to move (paid once);
   (c) task moves. So when two processes compete for the node holding
   both their memories (numa01), one stays with its memory and the other
   takes the other node and its memory follows; a process with more busy
   threads than any node has CPUs (numa02) stays spread; one that fits on
   a node (numa02_SMT) goes to its memory. The search is exact over all
   combinations up to EXACT_COMBINATIONS, and greedy beyond (largest
   process first, each taking its best option that fits with every other
   process where it is or where it was already sent: it never crams, but
   may miss an exchange of two processes that the exact search finds).

5. *Un-cram.* An affinity autonumad set on a node whose confined load
   (rule 3) is above its capacity (+ FIT_SLACK_CORES), where the process
   has busy threads, is undone at once, cool-down or not (rule
   "undo-crammed"; the policy applies it): a process that started threads
   after it was placed, or a node that filled up since with pinned work.
   After an undo the process is placed again from the next pass on,
   without waiting out a cool-down.

`explain` prints the ledger (capacity, background, bookings per node, and
each process's demand and outcome).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BUSY_THREAD_CORES = 0.3
MIN_LIFETIME_TICKS = 100  # 1 s at USER_HZ 100: younger threads count as busy
SETTLED_TICKS = 1000  # 10 s: a process this old at first sight is measured by its lifetime use
BACKGROUND_MIN_CORES = 0.95  # a CPU-bound process alone on a CPU shows ~1.0; the daemon's own pass less
BACKGROUND_PASSES = 3  # background is the least unexplained load of this many passes
FIT_SLACK_CORES = 0.1
EXACT_COMBINATIONS = 4096
STAY = None  # the assignment choice "leave its threads where they run"


@dataclass(frozen=True, slots=True)
class Demand:
    """CPU a process wants, in cores, by the node its threads last ran on."""

    cores_by_node: Mapping[int, float]  # every node a thread last ran on, 0.0 if idle there
    measured: bool  # False: first sight, one CPU per thread assumed
    busy_threads: int = 0
    confined_to: int | None = None  # the node whose CPUs hold all its allowed CPUs, if one does

    @property
    def total_cores(self) -> float:
        return sum(self.cores_by_node.values())


def thread_demand_cores(used_cores: float | None, state: str) -> float:
    """Rule 1 for one thread: its use, or a whole CPU when busy or runnable."""
    if used_cores is None or state == "R" or used_cores >= BUSY_THREAD_CORES:
        return 1.0
    return max(0.0, used_cores)


def process_demand(threads: Mapping[int, object], thread_cores: Mapping[int, float] | None,
                   cpu_to_node: Mapping[int, int], uptime_ticks: int | None = None,
                   confined_to: int | None = None) -> Demand:
    """A process's demand from its threads' stat lines (`TaskStat`: .processor, .state,
    .utime_ticks, .stime_ticks, .starttime_ticks) and their use between the last two passes
    (`thread_cores`, tid -> cores; None on first sight, when the lifetime use since each
    thread started is taken instead if `uptime_ticks`, the clock, is known)."""
    by_node: dict[int, float] = {}
    busy = 0
    if thread_cores is not None:
        # Measured between passes, if its thread set has not changed since: a
        # process still starting threads has not shown its demand yet.
        measured = all(tid in thread_cores for tid in threads)
    else:
        # First sight: its lifetime use is a measurement only for a process
        # settled for SETTLED_TICKS (a young one may still be starting threads,
        # and threads started later inherit any affinity set now).
        first = min((t.starttime_ticks for t in threads.values()), default=0)
        measured = uptime_ticks is not None and uptime_ticks - first >= SETTLED_TICKS
    for tid, t in threads.items():
        node = cpu_to_node.get(t.processor)
        if node is None:
            continue
        if thread_cores is not None:
            used = thread_cores.get(tid)
        elif uptime_ticks is not None and uptime_ticks - t.starttime_ticks >= MIN_LIFETIME_TICKS:
            used = (t.utime_ticks + t.stime_ticks) / (uptime_ticks - t.starttime_ticks)
        else:
            used = None
        d = thread_demand_cores(used, t.state)
        if d >= 1.0:
            busy += 1
        by_node[node] = by_node.get(node, 0.0) + d  # 0.0: an idle thread still says where it runs
    return Demand(by_node, measured, busy, confined_to)


def unexplained_cores(node_cpus: Mapping[int, Iterable[int]], busy_fraction_by_cpu: Mapping[int, float],
                      used_cores_by_node: Mapping[int, float]) -> dict[int, float]:
    """Rule 2, one pass: CPU time busy on each node that no scanned process's use explains, capped
    at the host's unexplained time (use is charged to the node a thread last ran on)."""
    busy = {n: sum(busy_fraction_by_cpu.get(c, 0.0) for c in cpus) for n, cpus in node_cpus.items()}
    host = max(0.0, sum(busy.values()) - sum(used_cores_by_node.get(n, 0.0) for n in busy))
    return {n: min(host, max(0.0, b - used_cores_by_node.get(n, 0.0))) for n, b in busy.items()}


def background_cores(recent: Sequence[Mapping[int, float]], nodes: Iterable[int]) -> dict[int, float]:
    """Rule 2: the load that persisted over `recent` passes' unexplained cores, in whole CPUs."""
    out = {}
    for n in nodes:
        least = min((r.get(n, 0.0) for r in recent), default=0.0)
        whole = int(least)
        if least - whole >= BACKGROUND_MIN_CORES - 1e-9:
            whole += 1
        out[n] = float(whole)
    return out


@dataclass
class CpuLedger:
    """One pass's CPU bookings per node (rules 2 and 3): everything booked where it runs or goes,
    and, of that, what cannot leave the node (background, confined processes)."""

    capacity_cores: dict[int, float]
    background_cores: dict[int, float]
    booked_cores: dict[int, float] = field(default_factory=dict)
    confined_cores: dict[int, float] = field(default_factory=dict)
    demands: dict[int, Demand] = field(default_factory=dict)  # pid -> demand as booked now
    log: list[str] = field(default_factory=list)  # the pass's bookings, in order

    @classmethod
    def build(cls, node_cpus: Mapping[int, Iterable[int]], demands: Mapping[int, Demand],
              recent_unexplained: Sequence[Mapping[int, float]] = ()) -> "CpuLedger":
        """Capacity from `node_cpus` (CPU-less nodes left out); every demand booked where it runs;
        background from the last passes' unexplained cores (`unexplained_cores`, newest last)."""
        cap = {n: float(len(tuple(c))) for n, c in node_cpus.items() if tuple(c)}
        background = background_cores(recent_unexplained, cap)
        ledger = cls(cap, background, dict(background), dict(background))
        for pid, d in demands.items():
            ledger.demands[pid] = d
            for n, c in d.cores_by_node.items():
                if n in ledger.booked_cores:
                    ledger.booked_cores[n] += c
            if d.confined_to in ledger.confined_cores:
                ledger.confined_cores[d.confined_to] += d.total_cores
        return ledger

    def crammed(self, node: int) -> bool:
        """Rule 5: more load that cannot leave `node` than it has CPUs."""
        return self.confined_cores.get(node, 0.0) > self.capacity_cores.get(node, 0.0) + FIT_SLACK_CORES

    def free_cores(self, node: int) -> float:
        """CPUs of `node` not taken by load that cannot leave it."""
        return self.capacity_cores[node] - self.confined_cores.get(node, 0.0)

    def fits(self, pid: int, node: int) -> bool:
        """Rule 3: would all of `pid`'s demand fit on `node`, given everything confined there so far?"""
        d = self.demands[pid]
        own = d.total_cores if d.confined_to == node else 0.0
        return self.confined_cores[node] - own + d.total_cores <= self.capacity_cores[node] + FIT_SLACK_CORES

    def move(self, pid: int, node: int, why: str = "") -> None:
        """Book all of `pid`'s demand on `node` (releasing it where it was), confined there."""
        d = self.demands[pid]
        for n, c in d.cores_by_node.items():
            if n in self.booked_cores:
                self.booked_cores[n] -= c
        if d.confined_to in self.confined_cores:
            self.confined_cores[d.confined_to] -= d.total_cores
        self.booked_cores[node] += d.total_cores
        self.confined_cores[node] += d.total_cores
        self.demands[pid] = Demand({node: d.total_cores}, d.measured, d.busy_threads, node)
        self.log.append(f"pid {pid}: {d.total_cores:.1f} CPU booked on node {node}" + (f" ({why})" if why else ""))

    def describe(self) -> str:
        """One line per node: booked / capacity (confined, background)."""
        return "; ".join(f"node {n}: {self.booked_cores[n]:.1f} of {self.capacity_cores[n]:.0f} CPUs booked "
                         f"({self.confined_cores[n]:.1f} confined, {self.background_cores[n]:.0f} background)"
                         for n in sorted(self.capacity_cores))

    def as_json(self) -> dict:
        return {"nodes": {str(n): {"capacity_cores": self.capacity_cores[n],
                                   "background_cores": self.background_cores[n],
                                   "confined_cores": round(self.confined_cores[n], 2),
                                   "booked_cores": round(self.booked_cores[n], 2)} for n in sorted(self.capacity_cores)},
                "demands": {str(pid): {"cores_by_node": {str(n): round(c, 2) for n, c in d.cores_by_node.items()},
                                       "measured": d.measured, "busy_threads": d.busy_threads,
                                       "confined_to": d.confined_to}
                            for pid, d in sorted(self.demands.items())},
                "bookings": list(self.log)}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A process whose node the assignment chooses (rule 4)."""

    pid: int
    bytes_by_node: Mapping[int, int]  # its resident bytes per node
    nodes: tuple[int, ...]  # nodes it may go to (CPU nodes its cpuset allows, with memory room)
    memory_follows: bool = True  # False: page moves off, its memory stays where it is


@dataclass(frozen=True, slots=True)
class Choice:
    pid: int
    node: int | None  # STAY or the node its threads go to
    bytes_to_move: int
    remote_bytes_after: int
    reason: str


def _option_cost(c: Candidate, d: Demand, node: int | None) -> tuple[int, int, int]:
    total = sum(c.bytes_by_node.values())
    if node is STAY:
        w, shares = d.total_cores, dict(d.cores_by_node)
        if w <= 0:  # idle threads: weigh the nodes they run on equally
            shares = {n: 1.0 for n in shares}
            w = float(len(shares)) or 1.0
        remote = sum(share / w * (total - c.bytes_by_node.get(n, 0)) for n, share in shares.items())
        return int(remote), 0, 0
    off = total - c.bytes_by_node.get(node, 0)
    moves_task = 0 if set(d.cores_by_node) <= {node} else 1
    return (0, off, moves_task) if c.memory_follows else (off, 0, moves_task)


def assign(ledger: CpuLedger, candidates: Sequence[Candidate]) -> dict[int, Choice]:
    """Rule 4: each candidate stays or goes to a node; books the result in `ledger`."""
    cands = [c for c in candidates if c.pid in ledger.demands]
    options: list[list[int | None]] = []
    for c in cands:
        d = ledger.demands[c.pid]
        opts: list[int | None] = [STAY]
        if d.measured:
            opts += [n for n in c.nodes if n in ledger.capacity_cores]
        options.append(opts)
    n_comb = 1
    for o in options:
        n_comb *= len(o)
    if n_comb <= EXACT_COMBINATIONS:
        plan = _exact(ledger, cands, options)
        how = "exact"
    else:
        plan = _greedy(ledger, cands, options)
        how = "greedy"
    reasons: dict[int, str] = {}
    for c, node in zip(cands, plan):  # the moves first: a stay's reason sees the whole pass booked
        if node is not STAY:
            d = ledger.demands[c.pid]
            reasons[c.pid] = (f"its {d.total_cores:.1f} CPU of demand fits on node {node} "
                              f"({ledger.free_cores(node) + (d.total_cores if d.confined_to == node else 0.0):.1f}"
                              f" CPU not held by confined load)")
            ledger.move(c.pid, node, f"{how} assignment of {len(cands)} candidate(s)")
    out: dict[int, Choice] = {}
    for c, node in zip(cands, plan):
        remote, moved, _ = _option_cost(c, ledger.demands[c.pid], node)
        if node is STAY:
            reasons[c.pid] = _stay_reason(ledger, c, ledger.demands[c.pid])
        out[c.pid] = Choice(c.pid, node, moved, remote, reasons[c.pid])
    return out


def _stay_reason(ledger: CpuLedger, c: Candidate, d: Demand) -> str:
    if not d.measured:
        return ("new, or started threads since the last pass: its threads' CPU use is measured over a "
                "pass before any task move")
    fits = [n for n in c.nodes if n in ledger.capacity_cores and ledger.fits(c.pid, n)]
    if not fits:
        return (f"its {d.busy_threads} busy thread(s) need {d.total_cores:.1f} CPU and no node has that free "
                f"({ledger.describe()}): its threads stay where the scheduler spread them")
    return (f"leaving its threads where they run needs the fewest bytes moved and leaves the fewest remote "
            f"({ledger.describe()})")


def _feasible(ledger: CpuLedger, cands: Sequence[Candidate], plan: Sequence[int | None]) -> bool:
    """Rule 3 for a whole plan: every node a candidate goes to holds what is confined there."""
    confined = dict(ledger.confined_cores)
    targets = set()
    for c, node in zip(cands, plan):
        if node is STAY:
            continue
        d = ledger.demands[c.pid]
        if d.confined_to in confined:
            confined[d.confined_to] -= d.total_cores
        confined[node] += d.total_cores
        targets.add(node)
    return all(confined[n] <= ledger.capacity_cores[n] + FIT_SLACK_CORES for n in targets)


def _exact(ledger: CpuLedger, cands: Sequence[Candidate], options) -> list[int | None]:
    best, best_cost = [STAY] * len(cands), None
    for plan in itertools.product(*options):
        cost = [0, 0, 0]
        for c, node in zip(cands, plan):
            r, m, t = _option_cost(c, ledger.demands[c.pid], node)
            cost[0] += r
            cost[1] += m
            cost[2] += t
        if best_cost is not None and tuple(cost) >= best_cost:
            continue
        if _feasible(ledger, cands, plan):
            best, best_cost = list(plan), tuple(cost)
    return best


def _greedy(ledger: CpuLedger, cands: Sequence[Candidate], options) -> list[int | None]:
    order = sorted(range(len(cands)), key=lambda i: -sum(cands[i].bytes_by_node.values()))
    plan: list[int | None] = [STAY] * len(cands)
    for i in order:
        c = cands[i]
        d = ledger.demands[c.pid]
        ranked = sorted(options[i], key=lambda n: (_option_cost(c, d, n), n is not STAY, n if n is not None else -1))
        for node in ranked:
            trial = list(plan)
            trial[i] = node
            if node is STAY or _feasible(ledger, [cands[j] for j in range(len(cands)) if trial[j] is not STAY],
                                         [trial[j] for j in range(len(cands)) if trial[j] is not STAY]):
                plan[i] = node
                break
    return plan
