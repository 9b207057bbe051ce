"""The planner: one pure function from a pass's inputs to everything the pass will do.

    plan(inputs, history, config) -> Plan

No I/O, no clock: the daemon and `autonumad explain` call exactly this.
The phases, in the order they run (each a function of its own, tested on
its own):

1. *selection* (selection.py): who may be managed at all, for balancing and
   tiering alike;
2. *balancing* (policy.decide): socket locality, a verdict per process and
   affinity and page-move actions;
3. *the slow-tier rule* (`leave_slow_tier_to_tiering`): on a tiered host,
   balancing does not pull a process's slow-tier memory up wholesale;
   tiering promotes only what is hot there;
4. *the budget* (`pass_budget_bytes`): the bytes this pass may move,
   `balance.pass_budget_mib`; balancing's planned moves come first, tiering
   plans in what is left of it and of what the mover's rate moves in the
   pass's window, on the free memory balancing's moves leave;
5. *tiering* (tiering.decide_tiering): tier planning, refining hot regions
   (refine.py: at VMA bounds, by the write probes' maps), candidates,
   headroom control, the budget split, demotions (and spares: `Plan.top_up`
   says which to run when the planned ones move less), promotions.

The actions are in execution order: affinity first (memory moves after it
land where tasks run), then balancing's migrations largest first, then
demotions (they make the room promotions land in), then promotions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from autonumad.model import MIGRATE, Action, Decision, Verdict, mib, node_list
from autonumad.plan.history import History
from autonumad.plan.policy import decide
from autonumad.plan.refine import top_up
from autonumad.plan.tiering import RULE_DEMOTE, TieringDecision, decide_tiering, plan_tiers

if TYPE_CHECKING:
    from autonumad.observe.inputs import PassInputs

RULE_LEFT_TO_TIERING = "left-to-tiering"


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]  # in execution order (module docstring)
    balancing: Decision  # a verdict for every process
    tiering: TieringDecision
    budget_bytes: int  # what the executor may move this pass

    @property
    def verdicts(self):
        return self.balancing.verdicts

    def verdict(self, pid: int) -> Verdict | None:
        return self.balancing.verdicts.get(pid)

    def top_up(self, outcomes) -> list[Action]:
        """Spare demotions to run after the planned actions, because those freed less than planned
        (refine.top_up; the executor calls this once, in the same run, budget and deadline)."""
        return top_up(self.tiering.planned_demotion_bytes, self.tiering.spare_demotions, outcomes, RULE_DEMOTE)


def plan(inputs: PassInputs, history: History, config) -> Plan:
    snap = inputs.snapshot
    balancing = decide(snap, history, config.balance, inputs.now_s, history.prev_cpu_times)
    balancing = act_only_on_fresh_reads(snap, balancing)
    balancing = leave_slow_tier_to_tiering(inputs, balancing, config)
    budget = pass_budget_bytes(config)
    planned = sum(a.bytes for a in balancing.actions if a.kind == MIGRATE)
    tiering = decide_tiering(snap, inputs.hotness, history.tiering, config.tiering, inputs.now_s,
                             balance=config.balance,
                             budget_bytes=max(0, min(budget, rate_bytes(config, inputs.window_s)) - planned),
                             vma_ends=inputs.vma_ends, placement=inputs.placement,
                             free_bytes=free_after(inputs, balancing), write_maps=inputs.write_maps)
    return Plan(balancing.actions + tiering.actions, balancing, tiering, budget)


RULE_REREAD = "re-reading"


def act_only_on_fresh_reads(snap, decision: Decision) -> Decision:
    """Balancing's actions without those planned from a reused numa_maps read; those wait one pass.

    The snapshot cache reuses a settled process's last read while its cheap
    signals hold (observe/snapshot.py SnapshotCache). Its verdict usually
    repeats, but it can turn into an action for reasons outside the process
    (another process's CPU demand on the ledger, free memory, a reload that
    lifts an exclusion). Such an action waits: its verdict says so, its rule
    is not a settled one, so the next pass reads the file afresh and decides
    on that. A skipped read thus only ever leads to inaction.
    """
    stale = {pid: p.numa_maps_age_s for pid, v in decision.verdicts.items() if v.actions
             and (p := snap.process(pid)) is not None and p.numa_maps_age_s > 0}
    if not stale:
        return decision
    verdicts = dict(decision.verdicts)
    for pid, age_s in stale.items():
        v = verdicts[pid]
        verdicts[pid] = replace(v, rule=RULE_REREAD, actions=(), reason=(
            f"would {v.rule}, but its numa_maps data is {age_s:.0f} s old (a settled process's last read, "
            "reused): read afresh next pass before acting"))
    kept = tuple(a for a in decision.actions if a.pid not in stale)
    return Decision(kept, verdicts, decision.ledger)


def pass_budget_bytes(config) -> int:
    """Phase 4: the most bytes one pass moves, `balance.pass_budget_mib` (the executor enforces it)."""
    return int(config.balance.pass_budget_mib * 2**20)


def rate_bytes(config, window_s: float) -> int:
    """What the mover's rate moves in the pass's window: the most tiering plans for."""
    return int(config.balance.migrate_rate_mib_s * 2**20 * max(0.0, window_s))


def free_after(inputs: PassInputs, balancing: Decision) -> dict[int, int]:
    """Each node's free memory once balancing's planned moves are done (targets fill; sources, estimated
    from where the process's other pages are, free)."""
    snap = inputs.snapshot
    free = {n.id: n.memory_free_bytes for n in snap.topology.nodes}
    for a in balancing.actions:
        p = snap.process(a.pid) if a.kind == MIGRATE else None
        if p is None:
            continue
        free[a.target_node] = free.get(a.target_node, 0) - a.bytes
        off = {n: c for n, c in p.pages_by_node.items() if n != a.target_node and c}
        total = sum(off.values())
        for n, c in off.items():
            free[n] = free.get(n, 0) + a.bytes * c // total
    return free


def leave_slow_tier_to_tiering(inputs: PassInputs, decision: Decision, config) -> Decision:
    """Phase 3: balancing's page moves without the ones that would pull slow-tier memory up wholesale.

    The balancing policy moves every page of a process that is off its home
    node; on a tiered host that would promote a process's cold memory along
    with its hot memory. While tiering runs (enabled, more than one tier),
    a balancing migration whose off-home pages sit mostly on slow nodes is
    dropped and its verdict says tiering owns them; migrations between fast
    nodes and every affinity action stand. Only processes tiering can see
    are claimed (`inputs.tier_observable`: DAMON on the host, or a readable
    /proc/<pid>/pagemap; a captured host tree has neither, and there
    balancing keeps moving slow-tier memory as before).
    """
    snap = inputs.snapshot
    tiers = plan_tiers(snap.topology, config.tiering) if config.tiering.enabled else None
    if tiers is None:
        return decision
    slow = set(tiers.slow_nodes)
    dropped: dict[int, str] = {}
    for a in decision.actions:
        p = snap.process(a.pid) if a.kind == MIGRATE and a.pid in inputs.tier_observable else None
        if p is None:
            continue
        off = {n: c for n, c in p.pages_by_node.items() if n != a.target_node}
        on_slow = sum(c for n, c in off.items() if n in slow)
        if on_slow and on_slow >= sum(off.values()) - on_slow:
            dropped[a.pid] = (f"{mib(on_slow * snap.page_size_bytes)} of its memory away from node "
                              f"{a.target_node} is on the slow tier ({node_list(tiers.slow_nodes)}): "
                              "tiering promotes only what is hot there")
    if not dropped:
        return decision
    verdicts = dict(decision.verdicts)
    for pid, why in dropped.items():
        v = verdicts[pid]
        verdicts[pid] = replace(v, rule=RULE_LEFT_TO_TIERING, reason=why,
                                actions=tuple(a for a in v.actions if a.kind != MIGRATE))
    kept = tuple(a for a in decision.actions if not (a.kind == MIGRATE and a.pid in dropped))
    return Decision(kept, verdicts)
