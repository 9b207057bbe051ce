"""The executor: applies the policy's actions within a budget and records every outcome.

It decides nothing. Page moves go through a token bucket in bytes
(`migrate_rate_mib_s`, memtierd's bandwidth-limited mover in spirit): each
batch takes tokens first, waiting for the bucket to refill while the pass
deadline allows, so the daemon never moves more than the configured rate
and never works past its pass. A stop request (SIGTERM) is honoured between
batches, so the daemon exits within about one batch.

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

from autonumad.act.affinity import set_process_affinity
from autonumad.errors import AccessDenied, MalformedProcFile, ProcessError, ProcessGone
from autonumad.host import Host, MoveResult
from autonumad.plan.policy import Action
from autonumad.plan.refine import explain_failures
from autonumad.readers.proc_maps import read_maps

log = logging.getLogger("autonumad")

# One move_pages batch. 16 MiB keeps a SIGTERM answered within a fraction of a
# second even on a slow (TCG) guest, and is large enough that the per-call
# overhead (a page-table walk per call) stays small.
BATCH_BYTES = 16 * 2**20


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
class Outcome:
    action: Action
    status: str  # "done", "partial", "skipped", "gone", "denied", "failed", "dry-run", "budget"
    detail: str = ""
    moved_pages: int = 0
    moved_bytes: int = 0
    moved_from: dict[int, int] = field(default_factory=dict)  # source node -> base pages
    failures: dict[str, int] = field(default_factory=dict)  # errno name -> pages
    threads_set: int = 0


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

    def _wait(self, seconds: float) -> bool:
        return self.wait(seconds) if self.wait is not None else self.stop.wait(seconds)

    def run(self, actions, deadline_s: float) -> list[Outcome]:
        outcomes = []
        for a in actions:
            if self.stop.is_set():
                outcomes.append(Outcome(a, "skipped", "stopping"))
                continue
            if self.dry_run:
                outcomes.append(Outcome(a, "dry-run", "dry run: not applied"))
                continue
            try:
                if a.kind == "migrate":
                    o = self._migrate(a, deadline_s)
                elif a.kind in ("set_affinity", "restore_affinity"):
                    o = self._affinity(a)
                else:
                    o = Outcome(a, "failed", f"unknown action kind {a.kind}")
            except ProcessGone as e:
                o = Outcome(a, "gone", str(e))
            except AccessDenied as e:
                o = Outcome(a, "denied", str(e))
            except (ProcessError, OSError) as e:
                o = Outcome(a, "failed", str(e))
            outcomes.append(o)
        return outcomes

    def _affinity(self, a: Action) -> Outcome:
        r = set_process_affinity(self.host, a.pid, a.cpus)
        # No thread set: the process exited, or its cpuset allows none of the
        # CPUs asked for (counted as EINVAL per thread by set_process_affinity).
        status = "done" if r.threads_set else "failed" if r.errors else "gone"
        return Outcome(a, status, f"{r.threads_set} thread(s) set", threads_set=r.threads_set)

    def _migrate(self, a: Action, deadline_s: float) -> Outcome:
        try:
            maps = read_maps(self.host, a.pid)
        except MalformedProcFile as e:
            return Outcome(a, "failed", str(e))
        ends = {m.start: m.end for m in maps}
        out = Outcome(a, "done")
        budget_left = a.bytes
        for v in a.vmas:
            end = ends.get(v.start) if v.end is None else _range_end(maps, v.start, v.end)
            if end is None:
                continue  # unmapped since the snapshot
            pos = v.start
            while pos < end and budget_left > 0:
                if self.stop.is_set():
                    out.status, out.detail = "partial", "stopping"
                    return out
                chunk = min(BATCH_BYTES, end - pos, budget_left)
                granted = self.bucket.take(chunk)
                while granted < min(chunk, v.page_size_bytes):
                    wait = self.bucket.wait_s(chunk)
                    if self.clock() + wait > deadline_s:
                        out.status, out.detail = "partial", "rate limit: continues next pass"
                        return out
                    if self._wait(min(wait, 0.5)):
                        out.status, out.detail = "partial", "stopping"
                        return out
                    granted += self.bucket.take(chunk - granted)
                # Ask for the rest of the range with a page cap rather than a
                # shorter range: a cut inside a transparent huge page would move
                # the whole THP while counting part of it (syscalls.move_range
                # ends batches on THP boundaries and caps what it sends).
                max_pages = max(1, int(granted) // v.page_size_bytes)
                r = self.host.move_pages(a.pid, pos, end, v.page_size_bytes, a.target_node, max_pages)
                self._count(out, r)
                # Tokens and budget pay for bytes actually moved; pages already in
                # place or absent cost a little kernel time but no copying.
                unused = granted - r.moved_bytes
                if unused > 0:
                    self.bucket.tokens = min(self.bucket.burst, self.bucket.tokens + unused)
                budget_left -= r.moved_bytes
                if r.gone:
                    out.status, out.detail = "gone", "process exited during the move"
                    return out
                if r.failed.get("ENOMEM"):
                    break  # the target node is full: the rest of this range would fail too
                if r.requested <= 0:
                    break  # nothing examined: nothing left to move here
                # The examined pages are a prefix of [pos, end): resume after them.
                pos += r.requested * v.page_size_bytes
        if out.failures and not out.moved_pages:
            out.status = "failed"
        out.detail = (f"moved {out.moved_bytes / 2**20:.1f} MiB to node {a.target_node}"
                      + (f"; not moved: {explain_failures(out.failures)}" if out.failures else ""))
        return out

    @staticmethod
    def _count(out: Outcome, r: MoveResult) -> None:
        scale = r.page_size // 4096 or 1
        out.moved_pages += r.moved * scale
        out.moved_bytes += r.moved_bytes
        for node, n in r.moved_from.items():
            out.moved_from[node] = out.moved_from.get(node, 0) + n * scale
        for name, n in r.failed.items():
            out.failures[name] = out.failures.get(name, 0) + n


def _range_end(maps, start: int, end: int) -> int | None:
    """End of [start, end) clipped to the mapping that contains `start`; None if none does."""
    i = bisect_right([m.start for m in maps], start) - 1
    if i < 0 or maps[i].end <= start:
        return None
    return min(end, maps[i].end)
