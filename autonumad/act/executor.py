"""The executor: applies the policy's actions within a budget and records every outcome.

It decides nothing, and runs once per pass over the whole plan (balancing
and tiering actions alike). Page moves go through a token bucket in bytes
(`migrate_rate_mib_s`, memtierd's bandwidth-limited mover in spirit): each
batch takes tokens first, waiting for the bucket to refill while the pass
deadline allows, so the daemon never moves more than the configured rate.
Three limits end a pass's moves, each checked before every batch: the
pass's byte budget (`pass_budget_mib`), the pass deadline (a mover slower
than its rate never waits for tokens, so the clock is read per batch), and
a stop request (SIGTERM), so the daemon exits within about one batch.

A move one of these limits cut short is continued by the next pass's
action on the same process and node, and that action starts where the
last one stopped (`Executor.resume`): the pages before it were examined
last pass, and a 512 MiB move cut three times would otherwise query its
moved prefix three times more (each query a page-table walk under the
target's mmap lock, move_pages(2), plus a Python loop over its statuses).
The skipped prefix is not forgotten: it is examined last, so the action
still covers every range the planner gave it before it reports "done".

Expected failures (the process exited, EPERM, a full node, huge pages) are
outcomes, not exceptions: one process never fails a pass.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from autonumad.act import identity
from autonumad.act.affinity import set_process_affinity
from autonumad.errors import AccessDenied, MalformedProcFile, ProcessError, ProcessGone
from autonumad.host import Host
from autonumad.model import (CUT_BUDGET, CUT_DEADLINE, CUT_RATE, CUT_STOP, MIGRATE, RESTORE_AFFINITY,
                             SET_AFFINITY, Action, MoveResult, Outcome)
from autonumad.readers.proc_maps import read_maps

log = logging.getLogger("autonumad")

# One move_pages batch. 16 MiB keeps a SIGTERM answered within a fraction of a
# second even on a slow (TCG) guest, and is large enough that the per-call
# overhead (a page-table walk per call) stays small.
BATCH_BYTES = 16 * 2**20

_STOPPING = ("partial", "stopping", CUT_STOP)
_DEADLINE_PASSED = "the pass deadline has passed: continues next pass"
_BUDGET_SPENT = "this pass's byte budget is spent: continues next pass"


class TokenBucket:
    """Bytes per second with a burst of one second's worth (or `burst_bytes`)."""

    def __init__(self, rate_bytes_s: float, burst_bytes: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate_bytes_s)
        self.burst = float(burst_bytes if burst_bytes is not None else rate_bytes_s)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, want: float) -> float:
        """Take up to `want` tokens now; returns how many were granted."""
        self._refill()
        got = min(want, self.tokens)
        self.tokens -= got
        return got

    def wait_s(self, want: float) -> float:
        """Seconds until `want` tokens (capped at the burst) are available."""
        self._refill()
        need = min(want, self.burst) - self.tokens
        return max(0.0, need / self.rate) if self.rate > 0 else float("inf")


@dataclass
class Executor:
    host: Host
    bucket: TokenBucket
    stop: threading.Event = field(default_factory=threading.Event)
    dry_run: bool = False
    clock: Callable[[], float] = time.monotonic
    # Waits for the bucket; returns True when stopping. Tests inject a fake
    # that advances a fake clock.
    wait: Callable[[float], bool] | None = None
    _deadline_s: float = field(default=float("inf"), init=False, repr=False)
    _budget_left: float = field(default=float("inf"), init=False, repr=False)
    # (pid, start time, target node) -> the address where that move stopped last run (module docstring).
    resume: dict[tuple[int, int, int], int] = field(default_factory=dict, init=False)

    def _wait(self, seconds: float) -> bool:
        return self.wait(seconds) if self.wait is not None else self.stop.wait(seconds)

    def run(self, actions, deadline_s: float, budget_bytes: int | None = None,
            then: Callable[[list[Outcome]], list[Action]] | None = None) -> list[Outcome]:
        """Apply `actions` in order until `deadline_s` (on self.clock), moving at most `budget_bytes`.

        `then` (the plan's `Plan.top_up`) names, from the outcomes, the actions to run after them in
        the same budget and deadline: spare demotions when the planned ones moved less than planned.
        """
        self._deadline_s = deadline_s
        self._budget_left = budget_bytes if budget_bytes is not None else float("inf")
        # A stop point is good for the very next run only: a move the planner did not continue
        # (the process settled, was re-pinned elsewhere, exited) starts from the beginning next time.
        planned = {_resume_key(a) for a in actions if a.kind == MIGRATE and a.target_node is not None}
        self.resume = {k: v for k, v in self.resume.items() if k in planned}
        outcomes = [self._one(a) for a in actions]
        if then is not None and not self.dry_run:
            outcomes += [self._one(a) for a in then(outcomes)]
        return outcomes

    def _one(self, a: Action) -> Outcome:
        """One action, with every expected failure turned into its outcome.

        The one place each action passes through before it touches a
        process: a check that the process is still the one planned for
        belongs here.
        """
        if self.stop.is_set():
            return Outcome(a, "skipped", "stopping")
        if self.dry_run:
            return Outcome(a, "dry-run", "dry run: not applied")
        try:
            identity.hold(self.host, a.pid, a.start_ticks)  # the snapshot's process, or ProcessGone
            if a.kind == MIGRATE:
                if self._budget_left <= 0:
                    return Outcome(a, "budget", _BUDGET_SPENT, cut=CUT_BUDGET)
                if self.clock() >= self._deadline_s:
                    return Outcome(a, "budget", _DEADLINE_PASSED, cut=CUT_DEADLINE)
                return self._migrate(a)
            if a.kind in (SET_AFFINITY, RESTORE_AFFINITY):
                return self._affinity(a)
            return Outcome(a, "failed", f"unknown action kind {a.kind}")
        except ProcessGone as e:
            return Outcome(a, "gone", str(e))
        except AccessDenied as e:
            return Outcome(a, "denied", str(e))
        except (ProcessError, OSError) as e:
            return Outcome(a, "failed", str(e))

    def _affinity(self, a: Action) -> Outcome:
        r = set_process_affinity(self.host, a.pid, a.cpus)
        # No thread set: the process exited, or its cpuset allows none of the
        # CPUs asked for (counted as EINVAL per thread by set_process_affinity).
        status = "done" if r.threads_set else "failed" if r.errors else "gone"
        return Outcome(a, status, f"{r.threads_set} thread(s) set", threads_set=r.threads_set)

    def _migrate(self, a: Action) -> Outcome:
        try:
            maps = read_maps(self.host, a.pid)
        except MalformedProcFile as e:
            return Outcome(a, "failed", str(e))
        ends = {m.start: m.end for m in maps}
        out = Outcome(a, "done", page_size_bytes=self.host.page_size_bytes)
        left = [a.bytes]  # this action's bytes still to move
        ranges = []
        for v in a.vmas:
            end = ends.get(v.start) if v.end is None else _range_end(maps, v.start, v.end)
            if end is not None:  # else unmapped since the snapshot
                ranges.append((v.start, end, v.page_size_bytes))
        key = _resume_key(a)
        for start, end, page_size in resume_order(ranges, self.resume.pop(key, None)):
            stopped, pos = self._move_range(a, start, end, page_size, out, left)
            if stopped:
                out.status, out.detail, out.cut = stopped
                if out.cut in (CUT_DEADLINE, CUT_BUDGET, CUT_RATE):
                    self.resume[key] = pos
                return out
        if out.failures and not out.moved_pages:
            out.status = "failed"
        # The pages not moved are in out.failures; the record step explains them per errno.
        out.detail = f"moved {out.moved_bytes / 2**20:.1f} MiB to node {a.target_node}"
        return out

    def _move_range(self, a: Action, pos: int, end: int, page_size: int, out: Outcome,
                    left: list[int]) -> tuple[tuple[str, str, str] | None, int]:
        """Move [pos, end) batch by batch.

        Returns (status, detail, cut) when the pass must stop moving, else None, and the first
        address not yet examined.
        """
        while pos < end and left[0] > 0:
            stopped = self._batch_gate()
            if stopped:
                return stopped, pos
            chunk = min(BATCH_BYTES, end - pos, left[0], self._budget_left)
            granted = self._tokens(chunk, page_size)
            if isinstance(granted, tuple):
                return granted, pos
            # Ask for the rest of the range with a page cap rather than a
            # shorter range: a cut inside a transparent huge page would move
            # the whole THP while counting part of it (syscalls.move_range
            # ends batches on THP boundaries and caps what it sends).
            max_pages = max(1, int(granted) // page_size)
            r = self.host.move_pages(a.pid, pos, end, page_size, a.target_node, max_pages)
            self._count(out, r)
            # Tokens and budgets pay for bytes actually moved; pages already in
            # place or absent cost a little kernel time but no copying.
            unused = granted - r.moved_bytes
            if unused > 0:
                self.bucket.tokens = min(self.bucket.burst, self.bucket.tokens + unused)
            left[0] -= r.moved_bytes
            self._budget_left -= r.moved_bytes
            if r.gone:
                return ("gone", "process exited during the move", ""), pos
            if r.failed.get("ENOMEM") or r.requested <= 0:
                # The target node is full (the rest would fail too), or
                # nothing was examined: nothing left to move here.
                return None, end
            # The examined pages are a prefix of [pos, end): resume after them.
            pos += r.requested * page_size
        return None, pos

    def _batch_gate(self) -> tuple[str, str, str] | None:
        """Before each batch: a stop request, the pass budget, the deadline."""
        if self.stop.is_set():
            return _STOPPING
        if self._budget_left <= 0:
            return "partial", _BUDGET_SPENT, CUT_BUDGET
        if self.clock() >= self._deadline_s:
            return "partial", _DEADLINE_PASSED, CUT_DEADLINE
        return None

    def _tokens(self, chunk: int, page_size: int) -> float | tuple[str, str, str]:
        """Tokens for one batch (at least a page), waiting while the deadline allows."""
        granted = self.bucket.take(chunk)
        while granted < min(chunk, page_size):
            wait = self.bucket.wait_s(chunk)
            if self.clock() + wait > self._deadline_s:
                return "partial", "rate limit: continues next pass", CUT_RATE
            if self._wait(min(wait, 0.5)):
                return _STOPPING
            granted += self.bucket.take(chunk - granted)
        return granted

    def _count(self, out: Outcome, r: MoveResult) -> None:
        scale = r.page_size // self.host.page_size_bytes or 1
        out.moved_pages += r.moved * scale
        out.moved_bytes += r.moved_bytes
        for node, n in r.moved_from.items():
            out.moved_from[node] = out.moved_from.get(node, 0) + n * scale
        for name, n in r.failed.items():
            out.failures[name] = out.failures.get(name, 0) + n


def _resume_key(a: Action) -> tuple[int, int, int]:
    return a.pid, a.start_ticks, a.target_node if a.target_node is not None else -1


def resume_order(ranges: list[tuple[int, int, int]], at: int | None) -> list[tuple[int, int, int]]:
    """`ranges` ((start, end, page size), in address order) from address `at` on, then the part before it.

    Pure. `at` None, or past every range: unchanged. A range containing `at` is split there; `at` is a
    page boundary of it (an executor stop point), so both parts stay page-aligned.
    """
    if at is None:
        return list(ranges)
    after, before = [], []
    for start, end, page in ranges:
        if end <= at:
            before.append((start, end, page))
        elif start >= at:
            after.append((start, end, page))
        else:
            after.append((at, end, page))
            before.append((start, at, page))
    return after + before


def _range_end(maps, start: int, end: int) -> int | None:
    """End of [start, end) clipped to the mapping that contains `start`; None if none does."""
    i = bisect_right([m.start for m in maps], start) - 1
    if i < 0 or maps[i].end <= start:
        return None
    return min(end, maps[i].end)
