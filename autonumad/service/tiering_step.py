"""The daemon's tiering step: track, sample, decide (tiering.decide_tiering), execute, remember.

Runs once per pass after the balancing decision has been executed, when
`tiering.enabled` and the host has more than one memory tier. It owns the
hotness tracker (started on the first pass that needs it, closed at exit or
when tiering is switched off by a reload) and the TieringHistory.

The tracker follows the largest `MAX_TRACKED` processes the selection rules
allow (DAMON gives each one a scheme; the soft-dirty fallback reads its
pagemap every pass). Before deciding, the step asks the kernel where the
pages of the regions the policy may act on are (move_pages(2) query, at
most `HOT_PLACEMENT_PAGES` pages of hot regions and `IDLE_PLACEMENT_PAGES`
of idle ones a pass, sampled beyond that). The moves share the executor,
and so the token bucket, with the balancing loop; the bytes left in this
pass's budget after balancing are what tiering may move.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from autonumad.errors import HostError, NotSupported, ProcessError
from autonumad.plan.policy import BalancePolicyConfig
from autonumad.observe.snapshot import HostSnapshot
from autonumad.plan.tiering import (TieringDecision, TieringHistory, _selection, decide_tiering, is_hot, plan_tiers,
                                regions_to_place)
from autonumad.observe.tracker import describe, make_tracker, read_vma_ends
from autonumad.observe.probe import WriteProbe
from autonumad.plan.refine import split_hot_at_vmas, top_up
from autonumad.plan.tiering import RULE_DEMOTE

log = logging.getLogger("autonumad")

MAX_TRACKED = 64
# Pages whose node the step asks the kernel for each pass, over all tracked
# processes: hot regions exactly up to 512 MiB (promotion's ≥ 99 % needs the
# last pages found), idle ones up to 256 MiB (demotion only needs to know
# roughly where a range's bulk is). Larger regions are sampled. Together
# about 10 ms of kernel time at the 0.05 µs a page measured in syscalls.py;
# measured in the tiered TCG guest: 0.3 s a pass for 110,000 pages.
HOT_PLACEMENT_PAGES = 131_072
IDLE_PLACEMENT_PAGES = 65_536


@dataclass(frozen=True, slots=True)
class TieringReport:
    """One pass of tiering, for PassReport, metrics and views: the decision and the totals so far."""

    decision: TieringDecision
    tracker: str  # "damon", "softdirty (DAMON unavailable: ...)", "none (...)"
    tracker_cost_s: float  # cumulative wall time in track() and sample()
    moved_pages: Mapping[tuple[str, int, int], int]  # (rule, from node, to node) -> base pages, cumulative
    moved_bytes: Mapping[tuple[str, int, int], int]
    blocked_promotions: int  # promotion moves that met ENOMEM, cumulative
    pingpongs: int
    # Seconds until a tiering pass could do more than this one did (the
    # tracker's first sample, idle memory maturing for an exchange); the
    # daemon wakes for it instead of waiting a whole interval. None: nothing.
    recheck_in_s: float | None = None
    failed_pages: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (rule, errno) -> pages, cumulative

    @property
    def headroom(self):
        return self.decision.headroom

    @property
    def note(self) -> str:
        return self.decision.note


class TieringStep:
    def __init__(self, host, clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.clock = clock
        self.tracker = None
        self.tracker_error: str | None = None
        self.history = TieringHistory()
        self.last: TieringReport | None = None
        self.last_outcomes: list = []
        self.probe = WriteProbe(host, clock)

    @property
    def tracker_name(self) -> str:
        if self.tracker is not None:
            return describe(self.tracker)
        return f"none ({self.tracker_error})" if self.tracker_error else "none"

    @property
    def tracker_cost_s(self) -> float:
        return self.tracker.cost_s if self.tracker is not None else 0.0

    def run(self, snap: HostSnapshot, config, executor, deadline_s: float, now_s: float,
            budget_bytes: int) -> tuple[TieringReport, list]:
        t = config.tiering
        balance = BalancePolicyConfig.from_config(config.balance)
        if not t.enabled or plan_tiers(snap.topology, t) is None:
            self.close()
            self.last_outcomes = []
            return self._report(decide_tiering(snap, {}, self.history, t, now_s, balance=balance)), []
        tracker = self._tracker(config)
        hot = {}
        if tracker is not None:
            pids = self._candidates(snap, balance)
            try:
                tracker.track(pids)
                hot = tracker.sample()
            except (NotSupported, HostError, OSError) as e:
                log.warning("hotness tracker %s failed: %s", tracker.name, e)
        ends = read_vma_ends(self.host, hot)
        # Hot regions cut at VMA bounds, then to what a write probe saw written (plan/refine.py, observe/probe.py).
        hot = split_hot_at_vmas(hot, ends, lambda r: is_hot(r, t))
        placement = self._placement(hot, t)
        if tracker is not None and tracker.name == "damon":
            hot, placement = self.probe.refine(hot, placement, lambda r: is_hot(r, t), plan_tiers(
                snap.topology, t).slow_nodes, t.hot_access_fraction / 2,
                lambda pid, ranges: self.host.range_nodes(pid, ranges, HOT_PLACEMENT_PAGES))
        d = decide_tiering(snap, hot, self.history, t, now_s, balance=balance, budget_bytes=max(0, budget_bytes),
                           vma_ends=ends, placement=placement)
        self.history.record_decision(d, now_s)
        outcomes = executor.run(d.actions, deadline_s) if d.actions else []
        # Demotions that freed less than planned are made good from the spares (plan/refine.py).
        outcomes += executor.run(top_up(d.planned_demotion_bytes, d.spare_demotions, outcomes, RULE_DEMOTE),
                                 deadline_s)
        done = self.clock()
        for o in outcomes:
            self.history.record_outcome(o, done, t.promote_cooldown_s)
        self.last_outcomes = outcomes
        waits = [w for w in (d.recheck_in_s, tracker.ready_in_s() if tracker is not None else None,
                             self.probe.recheck_in_s)
                 if w is not None and w > 0]
        return self._report(d, min(waits) if waits else None), outcomes

    def _placement(self, hot, t) -> dict[int, dict[tuple[int, int], dict[int, int]]]:
        """pid -> {(start, end): {node: bytes}} for the regions the policy may act on."""
        want = {pid: regions_to_place(regions, t) for pid, regions in hot.items()}
        want = {pid: regions for pid, regions in want.items() if regions}
        out: dict[int, dict[tuple[int, int], dict[int, int]]] = {}
        for pid, regions in want.items():
            for want_hot, budget in ((True, HOT_PLACEMENT_PAGES), (False, IDLE_PLACEMENT_PAGES)):
                ranges = [(r.start, r.end) for r in regions
                          if is_hot(r, t) == want_hot]
                if not ranges:
                    continue
                try:
                    nodes = self.host.range_nodes(pid, ranges, max(1, budget // len(want)))
                except (ProcessError, OSError) as e:
                    log.debug("pid %d: page locations not read: %s", pid, e)
                    break
                if nodes is None:
                    break
                out.setdefault(pid, {}).update(zip(ranges, nodes))
        return out

    def _report(self, d: TieringDecision, recheck_in_s: float | None = None) -> TieringReport:
        h = self.history
        self.last = TieringReport(d, self.tracker_name, self.tracker_cost_s, dict(h.moved_pages),
                                  dict(h.moved_bytes), h.blocked_promotions, h.pingpongs_total, recheck_in_s,
                                  dict(h.failed_pages))
        return self.last

    def _tracker(self, config):
        if self.tracker is None and self.tracker_error is None:
            try:
                self.tracker = make_tracker(self.host, config.tiering, Path(config.daemon.runtime_dir), self.clock)
                log.info("tiering: hotness tracker %s", describe(self.tracker))
            except (NotSupported, HostError, OSError) as e:
                self.tracker_error = str(e)
                log.warning("tiering: no hotness tracker: %s", e)
        return self.tracker

    @staticmethod
    def _candidates(snap: HostSnapshot, balance: BalancePolicyConfig) -> list[int]:
        ex = tuple(re.compile(x) for x in balance.exclude_comm)
        inc = tuple(re.compile(x) for x in balance.include_comm)
        ok = [p for p in snap.processes if _selection(p, balance, ex, inc) is None and p.total_pages]
        ok.sort(key=lambda p: (-p.total_pages, p.pid))
        return [p.pid for p in ok[:MAX_TRACKED]]

    def close(self) -> None:
        if self.tracker is not None:
            try:
                self.tracker.close()
            except (HostError, OSError) as e:
                log.warning("tiering: closing the hotness tracker: %s", e)
            self.tracker = None
        self.tracker_error = None


def tiering_doc(report: TieringReport | None, max_verdicts: int = 200) -> dict | None:
    """The JSON form of a tiering pass, for state.json (read back by `status` and `explain`)."""
    if report is None:
        return None
    d = report.decision
    plan = d.plan
    interesting = [v for v in d.verdicts.values() if v.actions or v.rule not in ("in-place", "not-tracked")]
    return {
        "note": d.note,
        "tracker": report.tracker,
        "tracker_seconds": round(report.tracker_cost_s, 3),
        "fast_nodes": list(plan.fast_nodes) if plan else [],
        "slow_nodes": list(plan.slow_nodes) if plan else [],
        "demotion_targets": {str(k): v for k, v in plan.demotion_targets.items()} if plan else {},
        "headroom": [{"node": h.node, "target_bytes": h.target_bytes, "free_bytes": h.free_bytes,
                      "floor_bytes": h.floor_bytes, "headroom_bytes": h.headroom_bytes,
                      "hot_bytes": h.hot_bytes, "cold_bytes": h.cold_bytes,
                      "candidate_bytes": h.candidate_bytes, "change": h.change}
                     for h in sorted(d.headroom.values(), key=lambda h: h.node)],
        "hot_bytes_by_node": {str(n): b for n, b in sorted(d.hot_bytes_by_node.items())},
        "cold_bytes_by_node": {str(n): b for n, b in sorted(d.cold_bytes_by_node.items())},
        "moved_bytes": [{"rule": r, "from_node": s, "to_node": t, "bytes": b}
                        for (r, s, t), b in sorted(report.moved_bytes.items())],
        "blocked_promotions": report.blocked_promotions,
        "pingpongs": report.pingpongs,
        "verdicts": {str(v.pid): {"rule": v.rule, "reason": v.reason} for v in interesting[:max_verdicts]},
    }


def leave_slow_tier_to_tiering(snap: HostSnapshot, decision, config, host):
    """Balancing's page moves without the ones that would pull slow-tier memory up wholesale.

    The balancing policy moves every page of a process that is off its home
    node; on a tiered host that would promote a process's cold memory along
    with its hot memory. While tiering runs (enabled, more than one tier),
    a balancing migration whose off-home pages sit mostly on slow nodes is
    dropped and its verdict says tiering owns them; migrations between fast
    nodes and every affinity action stand. Only processes tiering can see
    are claimed: with DAMON on the host, or a readable /proc/<pid>/pagemap
    for the soft-dirty fallback (a captured host tree has neither, and
    there balancing keeps moving slow-tier memory as before).
    """
    from autonumad.observe.damon import damon_available
    from dataclasses import replace

    from autonumad.plan.policy import Decision

    plan = plan_tiers(snap.topology, config.tiering) if config.tiering.enabled else None
    if plan is None:
        return decision
    slow = set(plan.slow_nodes)
    damon = config.tiering.tracker in ("auto", "damon") and damon_available(host)

    def observable(pid: int) -> bool:
        return damon or host.exists(f"/proc/{pid}/pagemap")
    dropped: dict[int, str] = {}
    kept = []
    for a in decision.actions:
        p = snap.process(a.pid) if a.kind == "migrate" and observable(a.pid) else None
        if p is not None:
            off = {n: c for n, c in p.pages_by_node.items() if n != a.target_node}
            on_slow = sum(c for n, c in off.items() if n in slow)
            if on_slow and on_slow >= sum(off.values()) - on_slow:
                dropped[a.pid] = (f"{on_slow * 4096 / 2**20:,.0f} MiB of its memory away from node "
                                  f"{a.target_node} is on the slow tier ({','.join(map(str, plan.slow_nodes))}): "
                                  "tiering promotes only what is hot there")
                continue
        kept.append(a)
    if not dropped:
        return decision
    verdicts = dict(decision.verdicts)
    for pid, why in dropped.items():
        v = verdicts[pid]
        verdicts[pid] = replace(v, rule="left-to-tiering", reason=why,
                                actions=tuple(a for a in v.actions if a.kind != "migrate"))
    return Decision(tuple(kept), verdicts)
