"""What the daemon remembers between passes.

The policy is pure: it reads a snapshot and this history and returns
actions. Only the daemon mutates the history, after the executor reports
what happened. A process is identified by (pid, start time) so a recycled
pid is a new process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from autonumad.model import ProcKey
from autonumad.plan.placement import BACKGROUND_PASSES, unexplained_cores
from autonumad.plan.tiering import TieringHistory
from autonumad.readers.proc_stat import cpu_busy_fraction

# How many passes of "where did its threads run" to keep per process.
RUN_HISTORY_PASSES = 3
# Ping-pong: a process whose pages we send back to a node we moved them away
# from within this window is backing off, doubling each time.
PINGPONG_WINDOW_S = 600.0
PINGPONG_BACKOFF_S = 60.0
PINGPONG_BACKOFF_MAX_S = 3600.0


@dataclass
class OwnedAffinity:
    """An affinity autonumad set, and what it replaced (for undo)."""

    cpus: frozenset[int]
    original: frozenset[int]
    node: int
    reason: str


@dataclass
class ProcessHistory:
    running_nodes: deque[tuple[int, ...]] = field(default_factory=lambda: deque(maxlen=RUN_HISTORY_PASSES))
    local_fractions: deque[float] = field(default_factory=lambda: deque(maxlen=RUN_HISTORY_PASSES))
    last_action_s: float | None = None
    # The node a page migration cut short by the pass's budget or deadline
    # was moving to: the next pass continues it instead of cooling down.
    continuing_to: int | None = None
    # (time, target node) of each page migration we made, for ping-pong.
    migrations: list[tuple[float, int]] = field(default_factory=list)
    pingpongs: int = 0
    backoff_until_s: float = 0.0
    owned_affinity: OwnedAffinity | None = None
    # CPU use in cores between the last two passes (None until seen twice).
    cpu_cores: float | None = None
    # Its allowed CPUs as last seen, and as they were when the daemon last
    # acted: an owner's re-pin since then is new information that ends a
    # cool-down early.
    cpus_allowed: tuple[int, ...] = ()
    acted_cpus: tuple[int, ...] | None = None
    last_cpu_ticks: int | None = None
    last_seen_s: float | None = None
    # Per thread (placement.py's demand): CPU ticks as last seen, and cores
    # used between the last two passes (None until the process is seen twice).
    thread_ticks: dict[int, int] = field(default_factory=dict)
    thread_cores: dict[int, float] | None = None


@dataclass
class History:
    processes: dict[ProcKey, ProcessHistory] = field(default_factory=dict)
    passes: int = 0
    # /proc/stat of the last pass and of the one before: each node's CPU headroom.
    cpu_times: Mapping[int, Any] | None = None
    prev_cpu_times: Mapping[int, Any] | None = None
    tiering: TieringHistory = field(default_factory=TieringHistory)
    # Per node, the CPU busy between the last passes that no scanned process
    # explains, newest last (placement.py rule 2: background is what persisted).
    unexplained: deque[dict[int, float]] = field(default_factory=lambda: deque(maxlen=BACKGROUND_PASSES))

    def get(self, key: ProcKey) -> ProcessHistory | None:
        return self.processes.get(key)

    def entry(self, key: ProcKey) -> ProcessHistory:
        return self.processes.setdefault(key, ProcessHistory())

    def observe(self, snapshot, now_s: float) -> None:
        """Record where each process ran this pass; forget processes that are gone."""
        self.passes += 1
        self.prev_cpu_times, self.cpu_times = self.cpu_times, snapshot.cpu_times
        clock_ticks_per_s = snapshot.clock_ticks_per_s
        seen = set()
        for p in snapshot.processes:
            key = (p.pid, p.start_ticks)
            seen.add(key)
            h = self.entry(key)
            h.running_nodes.append(p.running_nodes)
            h.cpus_allowed = tuple(p.status.cpus_allowed)
            h.local_fractions.append(p.local_fraction())
            if h.last_cpu_ticks is not None and h.last_seen_s is not None and now_s > h.last_seen_s:
                h.cpu_cores = max(0, p.cpu_ticks - h.last_cpu_ticks) / clock_ticks_per_s / (now_s - h.last_seen_s)
                h.thread_cores = {tid: max(0, t.utime_ticks + t.stime_ticks - h.thread_ticks[tid])
                                  / clock_ticks_per_s / (now_s - h.last_seen_s)
                                  for tid, t in p.threads.items() if tid in h.thread_ticks}
            h.last_cpu_ticks, h.last_seen_s = p.cpu_ticks, now_s
            h.thread_ticks = {tid: t.utime_ticks + t.stime_ticks for tid, t in p.threads.items()}
        self._observe_unexplained(snapshot)
        # Processes that exited: drop them, except those below the scan
        # threshold this pass whose affinity we own (kept for undo at exit).
        for key in list(self.processes):
            if key not in seen and self.processes[key].owned_affinity is None:
                del self.processes[key]

    def _observe_unexplained(self, snapshot) -> None:
        """This pass's unexplained CPU per node (placement.unexplained_cores), from /proc/stat's two
        last samples and the scanned threads' use charged to the node each last ran on."""
        if not self.prev_cpu_times:
            return
        cpu_to_node = snapshot.topology.cpu_to_node
        used: dict[int, float] = {}
        for p in snapshot.processes:
            tc = self.processes[(p.pid, p.start_ticks)].thread_cores
            for tid, t in p.threads.items():
                n = cpu_to_node.get(t.processor)
                if tc is not None and n is not None:
                    used[n] = used.get(n, 0.0) + tc.get(tid, 0.0)
        node_cpus = {n.id: n.cpus for n in snapshot.topology.nodes if n.cpus}
        self.unexplained.append(unexplained_cores(node_cpus, cpu_busy_fraction(self.prev_cpu_times,
                                                                                snapshot.cpu_times), used))

    def record_migration(self, key: ProcKey, now_s: float, target: int, complete: bool = True) -> None:
        """Note a page migration (`complete` False: cut short, to be continued); detect moves back to
        a node we moved away from."""
        h = self.entry(key)
        h.last_action_s = now_s
        h.continuing_to = None if complete else target
        h.acted_cpus = h.cpus_allowed
        recent = [(t, n) for t, n in h.migrations if now_s - t < PINGPONG_WINDOW_S]
        if recent and recent[-1][1] != target and any(n == target for _, n in recent[:-1]):
            h.pingpongs += 1
            backoff = min(PINGPONG_BACKOFF_MAX_S, PINGPONG_BACKOFF_S * 2 ** (h.pingpongs - 1))
            h.backoff_until_s = now_s + backoff
        recent.append((now_s, target))
        h.migrations = recent[-8:]

    def end_continuations(self, migrated: set[ProcKey]) -> None:
        """After a pass: a cut-short move this pass did not take up again is over (the executor's stop
        point is dropped the same way), so it no longer skips the cool-down or runs past the target."""
        for key, h in self.processes.items():
            if h.continuing_to is not None and key not in migrated:
                h.continuing_to = None

    def record_affinity(self, key: ProcKey, now_s: float, owned: OwnedAffinity | None) -> None:
        h = self.entry(key)
        h.last_action_s = now_s
        h.owned_affinity = owned
        # The affinity this action leaves in place (what the next pass will see).
        h.acted_cpus = tuple(sorted(owned.cpus)) if owned is not None else None
