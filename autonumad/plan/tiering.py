"""The tiering policy: a pure function from a snapshot and hotness to page moves with reasons.

    decide_tiering(snapshot, hotness, history, config, now_s, ...) -> TieringDecision

Like policy.decide(), nothing here touches the host: the daemon's executor
moves the address ranges it returns (Action kind "migrate" with explicit
range ends, rules "promote-hot" and "demote-cold"), and `explain` prints
the same verdicts.

Tiers. The fast nodes are the first (fastest) memory tier and the slow
nodes the others, from /sys/devices/virtual/memory_tiering or the
CPU-less fallback (readers/memtiers.py); `tiering.fast_nodes` and
`tiering.slow_nodes` override them. Each fast node's demotion target is
`tiering.demotion_targets`' entry or else its nearest slow node by SLIT
distance (ties: the lower id). A host with one tier has nothing to tier.

Rules, per process, in order:

1. Selection and explicit placement exactly as in the balancing policy:
   excluded pids, commands and cgroups are left alone, and so is any process
   with a non-default memory policy on a VMA (its owner placed it).
2. Ping-pong: a process whose ranges went back and forth (a promotion
   brought back at least a quarter of what was demoted from the same ranges
   within `promote_cooldown_s`) backs off, doubling each time.
3. Promote hot: ranges the tracker saw accessed in at least
   `hot_access_fraction` of its samples, that lie in VMAs with pages on a
   slow node, move to the fast node where the process's threads run (the
   node running most of them; it must be in Mems_allowed_list). Hottest
   first. Promotion may use a fast node's free memory down to its *floor*,
   the node's summed zone `promo` watermarks (`high` on kernels without
   one), so a promotion never itself pushes the kernel into reclaim.
4. Demote cold, idlest first, to the fast node's demotion target. The free
   memory demotion keeps on a fast node, its *free target*, is the floor
   plus the (adaptive) headroom: the headroom is room above what the
   kernel reserves, for promotions and new allocations to land in, as in
   TPP's decoupled demotion watermark. Two reasons to demote:
   - *headroom*: while the node's free memory is below its free target,
     ranges not accessed (fraction 0) for at least `cold_age_s` move until
     the target and a margin above it (a quarter of the headroom, as the
     kernel's low/high watermark gap) are met, and, if they are not enough, ranges idle for
     `exchange_age_s` (a filler that keeps allocating would otherwise hold
     the node below its target for `cold_age_s`; issue 16);
   - *exchange*: while hot memory waits on the slow tier for the node,
     ranges idle for at least `exchange_age_s` move until the node has
     room for all of it and, after it, its free target. Memory seen idle
     for seconds is worth less on the fast tier than memory accessed in a
     fifth of all samples now; the kernel's own reclaim-driven demotion
     asks for no idle time at all.
   A range promoted within `promote_cooldown_s` is not demoted
   (hysteresis). Candidates are ranked colder class first, then by the
   bytes they hold on the fast node (the placement query), then idlest
   (refine.demotion_key); one with nothing there is skipped. Candidates
   beyond the need are planned as spares, run when the planned demotions
   move less than planned (refine.top_up, through `Plan.top_up`), so a pass
   keeps demoting until the free target is met or the planned bytes are
   spent.
3b. Before the candidates, hot regions are split at VMA bounds and wide
   ones cut to what a soft-dirty write probe saw written (`refine_hotness`:
   refine.py over the `WriteMap`s observe/probe.py read); the reason says
   how much was refined away.

Where a region's pages are comes from the host (move_pages(2) in query
form, sampled when the regions are large; observe/inputs.py), so a range
that already moved is not planned again; a region without a placement is
estimated from numa_maps, spreading each VMA's pages evenly. An action
takes at most the bytes found where it moves them from, within the room and
the budget left.

Budget: promotion gets `promote_share` of the pass's bytes, demotion the
rest; a side that needs less than its share leaves the remainder to the
other, so neither starves the other and neither idles the mover. Both run
through the daemon's one token bucket, so balancing and tiering together
never exceed `balance.migrate_rate_mib_s`.

The adaptive headroom, per fast node. It starts at `tiering.headroom` and
stays within [headroom_min, headroom_max]. Each pass looks at what the last
pass saw:

- *Promotion was blocked for lack of room* when any of: a promotion to the
  node failed with ENOMEM; the bytes wanting promotion exceeded the bytes
  promoted while the node had no room above its floor (so room, not the
  budget, was the limit); the node's free pages sat below its `promo`
  watermark while promotions were waiting. Then the target widens, by a
  quarter or by the bytes that were blocked, whichever is more: demotion
  makes room ahead of demand rather than after it.
- *Fast memory sat idle* when nothing wanted promotion and free memory was
  at or above the free target. Then the headroom narrows by a tenth of its
  distance to headroom_min per pass: slowly, so a lull does not throw away
  the room the next burst will need.
- Otherwise it holds.

Widening fast and narrowing slowly (multiplicative increase, geometric
decrease) settles at the smallest headroom that keeps promotions flowing.
With `adaptive_headroom = false` the headroom is `tiering.headroom`.

Kernel coexistence (kernel.numa_balancing bit 1 = NUMA_BALANCING_MEMORY_TIERING,
/sys/kernel/mm/numa/demotion_enabled):

- tiering mode off: the daemon promotes and demotes;
- tiering mode on: the kernel promotes on hint faults (verdict
  "kernel-promotes"); the daemon demotes, for the headroom and in exchange
  for the hot memory it sees waiting on the slow tier, which is the room
  kernel promotion lacks under pressure. Hot memory a process has had
  waiting on the slow tier for `kernel_grace_s`, pass after pass, the
  daemon promotes itself: the kernel's hot-page threshold (a page must
  fault again within hot_threshold_ms of its scan once the node is short of
  1 GiB above its promo watermark) strands part of a hot set under
  pressure, room or no room (bench-tiering, docs/benchmarks.md);
- demotion_enabled on: the kernel also demotes during reclaim; the daemon's
  proactive demotion keeps reclaim from being reached at all on fast
  nodes, and the two never conflict (both move cold pages down).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from autonumad.model import MIGRATE, Action, ProcKey, Region, Verdict, VmaMove, mib, node_list
from autonumad.plan import selection
from autonumad.plan.refine import (WriteMap, demotion_key, is_edge, refill_margin, refine_by_probes,
                                   split_hot_at_vmas)
from autonumad.readers.nodes import Topology
from autonumad.readers.numa_maps import Vma
from autonumad.readers.zoneinfo import node_watermarks
from autonumad.observe.snapshot import HostSnapshot, ProcessView

NUMA_BALANCING_MEMORY_TIERING = 2
WIDEN_FACTOR = 1.25
NARROW_FRACTION = 0.1
PINGPONG_BACKOFF_MAX_S = 3600.0
# A promotion is a ping-pong when it brings back at least this share of the
# bytes demoted from the same ranges within the cool-down.
PINGPONG_FRACTION = 0.25
RULE_PROMOTE = "promote-hot"
RULE_DEMOTE = "demote-cold"


# -- tiers -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TierPlan:
    fast_nodes: tuple[int, ...]
    slow_nodes: tuple[int, ...]
    demotion_targets: Mapping[int, int]  # fast node -> slow node
    source: str  # "config" or the topology's tier source


def plan_tiers(topology: Topology, config) -> TierPlan | None:
    """Fast and slow nodes and demotion targets; None when the host has a single tier."""
    mem = set(topology.memory_nodes)
    if config.fast_nodes or config.slow_nodes:
        fast = tuple(n for n in config.fast_nodes if n in mem) or tuple(
            n for n in topology.tiers[0].nodes if n in mem and n not in config.slow_nodes)
        slow = tuple(n for n in config.slow_nodes if n in mem) or tuple(
            sorted(mem - set(fast)))
        source = "config"
    else:
        if len(topology.tiers) < 2:
            return None
        fast = tuple(n for n in topology.tiers[0].nodes if n in mem)
        slow = tuple(sorted(n for t in topology.tiers[1:] for n in t.nodes if n in mem))
        source = topology.tier_source
    if not fast or not slow:
        return None
    targets = {}
    for f in fast:
        want = config.demotion_target(f)
        if want is not None and want in slow:
            targets[f] = want
            continue
        dist = topology.node(f).distances
        targets[f] = min(slow, key=lambda s: (dist.get(s, 255), s))
    return TierPlan(fast, slow, targets, source)


# -- state carried between passes -------------------------------------------------------------

@dataclass
class _ProcTiering:
    promoted: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, when)
    demoted: list[tuple[int, int, float, int]] = field(default_factory=list)  # (start, end, when, bytes moved)
    pingpongs: int = 0
    backoff_until_s: float = 0.0
    # Since when it has had hot memory on the slow tier, pass after pass (None: not now).
    waiting_since_s: float | None = None


@dataclass
class TieringHistory:
    """What tiering remembers between passes: headroom targets, recent moves, last pass's signals."""

    headroom_bytes: dict[int, int] = field(default_factory=dict)  # the adaptive headroom, per fast node
    processes: dict[ProcKey, _ProcTiering] = field(default_factory=dict)
    # Of the last pass, per fast node: bytes that wanted promotion, bytes
    # promoted, pages that failed with ENOMEM, and whether room was short.
    last_candidate_bytes: dict[int, int] = field(default_factory=dict)
    last_promoted_bytes: dict[int, int] = field(default_factory=dict)
    last_enomem_pages: dict[int, int] = field(default_factory=dict)
    last_room_short: dict[int, bool] = field(default_factory=dict)
    # Totals for metrics: (source node, target node) -> base pages / bytes.
    moved_pages: dict[tuple[str, int, int], int] = field(default_factory=dict)  # (rule, src, dst)
    moved_bytes: dict[tuple[str, int, int], int] = field(default_factory=dict)
    blocked_promotions: int = 0
    pingpongs_total: int = 0
    # Pages a move did not take, by (rule, errno name): not progress, explained in the log (refine.py).
    failed_pages: dict[tuple[str, str], int] = field(default_factory=dict)

    def record_decision(self, d: "TieringDecision", now_s: float | None = None) -> None:
        """Before executing: keep the new headroom targets, this pass's demand and who is waiting."""
        for node, h in d.headroom.items():
            self.headroom_bytes[node] = h.headroom_bytes
        self.last_candidate_bytes = {n: h.candidate_bytes for n, h in d.headroom.items()}
        self.last_room_short = {n: h.room_short for n, h in d.headroom.items()}
        self.last_promoted_bytes = {n: 0 for n in d.headroom}
        self.last_enomem_pages = {n: 0 for n in d.headroom}
        live = {(p.pid, p.start_ticks) for p in d.processes_seen}
        for key in list(self.processes):
            if key not in live:
                del self.processes[key]
        for key, h in self.processes.items():
            if key not in d.waiting:
                h.waiting_since_s = None
        if now_s is not None:
            for key in d.waiting:
                h = self.processes.setdefault(key, _ProcTiering())
                if h.waiting_since_s is None:
                    h.waiting_since_s = now_s

    def record_outcome(self, outcome, now_s: float, cooldown_s: float) -> None:
        """After executing one tiering action (an executor Outcome)."""
        a = outcome.action
        if a.rule not in (RULE_PROMOTE, RULE_DEMOTE):
            return
        dst = a.target_node
        for name, pages in outcome.failures.items():
            self.failed_pages[(a.rule, name)] = self.failed_pages.get((a.rule, name), 0) + pages
        for src, pages in outcome.moved_from.items():
            k = (a.rule, src, dst)
            self.moved_pages[k] = self.moved_pages.get(k, 0) + pages
            self.moved_bytes[k] = self.moved_bytes.get(k, 0) + pages * outcome.page_size_bytes
        if a.rule == RULE_PROMOTE:
            self.last_promoted_bytes[dst] = self.last_promoted_bytes.get(dst, 0) + outcome.moved_bytes
            enomem = outcome.failures.get("ENOMEM", 0)
            if enomem:
                self.last_enomem_pages[dst] = self.last_enomem_pages.get(dst, 0) + enomem
                self.blocked_promotions += 1
        if not outcome.moved_bytes:
            return
        h = self.processes.setdefault(a.key, _ProcTiering())
        ranges = [(v.start, v.end or v.start) for v in a.vmas]
        if a.rule == RULE_PROMOTE:
            # Bringing back a good part of what was demoted within the cool-down:
            # ping-pong. A small part is the tracker's regions being coarse (a
            # few hot pages idle ranges held, found again): corrected, not
            # punished. The part is an upper bound, this move's bytes against
            # the bytes demoted from the ranges it overlaps.
            demoted = sum(b for ds, de, t, b in h.demoted
                          if now_s - t < cooldown_s and any(_overlaps(s, e, ds, de) for s, e in ranges))
            if demoted and min(outcome.moved_bytes, demoted) >= PINGPONG_FRACTION * demoted:
                h.pingpongs += 1
                self.pingpongs_total += 1
                h.backoff_until_s = now_s + min(PINGPONG_BACKOFF_MAX_S, max(cooldown_s, 1.0) * 2 ** h.pingpongs)
            h.promoted = [x for x in h.promoted if now_s - x[2] < cooldown_s] + [(s, e, now_s) for s, e in ranges]
        else:
            h.demoted = [x for x in h.demoted if now_s - x[2] < cooldown_s] + [
                (s, e, now_s, outcome.moved_bytes // len(ranges)) for s, e in ranges]


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


# -- the decision ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeHeadroom:
    """One fast node's free room this pass, for the policy, status and metrics."""

    node: int
    demotion_target: int
    total_bytes: int
    free_bytes: int
    target_bytes: int  # free memory demotion keeps: floor_bytes + headroom_bytes
    floor_bytes: int  # promotions stop here: the node's promo watermark
    headroom_bytes: int  # the (adaptive) headroom above the floor
    hot_bytes: int  # from the tracker's regions and where their pages are
    cold_bytes: int
    candidate_bytes: int  # hot bytes on slow nodes wanting this node
    room_short: bool  # candidates exceeded the room above the floor
    change: str  # "widened: ...", "narrowed: ...", "held", "fixed"


@dataclass(frozen=True, slots=True)
class TieringDecision:
    plan: TierPlan | None
    actions: tuple[Action, ...]
    verdicts: Mapping[int, Verdict]
    headroom: Mapping[int, NodeHeadroom]
    note: str  # one line: why tiering is idle, or what it runs with
    processes_seen: tuple[ProcessView, ...] = ()
    # Resident bytes the tracker saw hot / cold (unused for cold_age_s), by
    # node, every memory node.
    hot_bytes_by_node: Mapping[int, int] = field(default_factory=dict)
    cold_bytes_by_node: Mapping[int, int] = field(default_factory=dict)
    # Seconds after which a pass could do what this one could not: hot
    # memory waits for room that idle memory will free once it has been
    # idle for exchange_age_s, or for the kernel's grace to run out. None:
    # nothing is waiting on time.
    recheck_in_s: float | None = None
    # Processes with hot memory on the slow tier this pass.
    waiting: frozenset[ProcKey] = frozenset()
    # Demotions beyond the plan, (fast node, action) in rank order, run only
    # when the planned ones free less than planned (refine.top_up), and the
    # planned bytes per fast node they make good.
    spare_demotions: tuple[tuple[int, Action], ...] = ()
    planned_demotion_bytes: Mapping[int, int] = field(default_factory=dict)


@dataclass
class _Candidate:
    p: ProcessView
    region: Region
    vmas: list[Vma]
    # Bytes this move should take: the range's bytes on the slow tier
    # (promotion) or on the fast node (demotion).
    est_bytes: int
    node: int  # promotion target, or the fast node it is demoted from


def is_hot(r: Region, config) -> bool:
    """Accessed in at least `hot_access_fraction` of the tracker's samples (rule 3)."""
    return r.accesses_fraction >= config.hot_access_fraction


def regions_to_place(regions: Sequence[Region], config) -> list[Region]:
    """The regions the policy may act on, whose page locations are worth asking the kernel for.

    Hot regions (promotion candidates) and regions idle long enough for
    either demotion rule; the rest are never moved.
    """
    idle_s = min(config.cold_age_s, config.exchange_age_s)
    return [r for r in regions
            if is_hot(r, config) or is_edge(r) or (r.accesses_fraction == 0 and r.age_s >= idle_s)]


def decide_tiering(snapshot: HostSnapshot, hotness: Mapping[int, Sequence[Region]], history: TieringHistory,
                   config, now_s: float, *, balance=None, budget_bytes: int = 1 << 62,
                   vma_ends: Mapping[int, Mapping[int, int]] | None = None,
                   placement: Mapping[int, Mapping[tuple[int, int], Mapping[int, int]]] | None = None,
                   free_bytes: Mapping[int, int] | None = None,
                   write_maps: Mapping[int, WriteMap] | None = None) -> TieringDecision:
    """Plan this pass's promotions and demotions (see the module docstring for the rules).

    The phases, in order: tier planning, refining the hot regions (at VMA
    bounds and by the write probes' maps), candidates (selection and where
    each region's pages are), headroom control, the kernel's share and the
    budget split, demotions, promotions, verdicts.

    `hotness` is the tracker's sample, `balance` the config's BalanceConfig
    (selection; None: every process), `budget_bytes` what the mover may move
    this pass, `vma_ends` pid -> {VMA start: end} from /proc/<pid>/maps,
    `placement` pid -> {(start, end): {node: bytes}}: where the kernel says a
    region's pages are (move_pages(2) query; a region without one is
    estimated from numa_maps, its VMAs' pages spread evenly), and
    `free_bytes` each node's free memory once this pass's balancing moves
    are done (default: the snapshot's), `write_maps` pid -> what the last
    soft-dirty write probe of it saw (observe/probe.py; none: no cut).
    """
    if not config.enabled:
        return TieringDecision(None, (), {}, {}, "tiering is disabled in the config")
    plan = plan_tiers(snapshot.topology, config)
    if plan is None:
        return TieringDecision(None, (), {}, {}, "the host has a single memory tier: nothing to tier")
    knobs = snapshot.knobs.as_json()
    hotness, probe_wait = refine_hotness(hotness, vma_ends or {}, placement or {}, write_maps or {}, config, plan,
                                         now_s)
    cands = find_candidates(snapshot, hotness, history, config, now_s, plan, balance, vma_ends, placement)
    free = dict(free_bytes) if free_bytes is not None else {n.id: n.memory_free_bytes
                                                            for n in snapshot.topology.nodes}
    headroom = control_headroom(snapshot, history, config, plan, cands, free)
    ours, kernels, recheck = kernel_share(cands.promos, history, config, now_s, _kernel_promotes(knobs))
    want_headroom, want_exchange = demand(headroom)
    promote_budget, demote_budget = _split_budget(
        budget_bytes, config.promote_share, sum(c.est_bytes for c in ours),
        sum(max(want_headroom[n], want_exchange[n]) for n in headroom))
    demotions, more, spares = plan_demotions(snapshot.topology, config, plan, cands, headroom, want_headroom,
                                             want_exchange, free, demote_budget)
    recheck += more + ([probe_wait] if probe_wait is not None else [])
    promotions, waiting = plan_promotions(config, ours, headroom, free, promote_budget, _kernel_promotes(knobs))
    verdicts = _verdicts(snapshot, config, cands.verdicts, kernels, waiting, demotions + promotions)
    note = (f"fast {node_list(plan.fast_nodes)}, slow {node_list(plan.slow_nodes)} ({plan.source}); "
            + kernel_roles(knobs))
    # Demotions first: they make the room promotions land in.
    return TieringDecision(plan, tuple(demotions + promotions), verdicts, headroom, note, snapshot.processes,
                           cands.hot_bytes, cands.cold_bytes, min(recheck) if recheck else None,
                           frozenset((c.p.pid, c.p.start_ticks) for c in cands.promos), spares.actions,
                           spares.planned_bytes)


def refine_hotness(hotness: Mapping[int, Sequence[Region]], vma_ends: Mapping[int, Mapping[int, int]],
                   placement, write_maps: Mapping[int, WriteMap], config,
                   plan: TierPlan, now_s: float) -> tuple[dict[int, tuple[Region, ...]], float | None]:
    """Phase: hot regions split at VMA bounds, then wide ones cut to what a write probe saw written
    (refine.py; observe/inputs.py read the placement of the pieces with the same two calls). Returns
    the regions and the seconds until a region deferred for a probe can be probed (None: none)."""
    hot = split_hot_at_vmas(hotness, vma_ends, lambda r: is_hot(r, config))
    if not write_maps:
        return hot, None
    refined, _, wait = refine_by_probes(hot, placement, write_maps, lambda r: is_hot(r, config), plan.slow_nodes,
                                        lukewarm(config), now_s, config.hot_access_fraction)
    return refined, wait


def lukewarm(config) -> float:
    """The access level of a part a probe saw unwritten: above idle, below hot (neither moves)."""
    return config.hot_access_fraction / 2


@dataclass
class Candidates:
    """What the tracker's regions offer this pass: ranges to promote, ranges to demote."""

    verdicts: dict[int, Verdict] = field(default_factory=dict)  # processes tiering leaves alone, and why
    promos: list[_Candidate] = field(default_factory=list)
    colds: list[_Candidate] = field(default_factory=list)
    # Per fast node, the longest idle time of idle memory not yet old enough
    # to be exchanged: when it will be, a pass can make room.
    maturing_s: dict[int, float] = field(default_factory=dict)
    hot_bytes: dict[int, int] = field(default_factory=dict)
    cold_bytes: dict[int, int] = field(default_factory=dict)


def find_candidates(snapshot: HostSnapshot, hotness, history: TieringHistory, config, now_s: float,
                    plan: TierPlan, balance, vma_ends, placement) -> Candidates:
    """Phase: selection (rules 1-2), then each tracked process's hot and idle ranges."""
    out = Candidates(hot_bytes={n: 0 for n in snapshot.topology.memory_nodes},
                     cold_bytes={n: 0 for n in snapshot.topology.memory_nodes})
    for p in snapshot.processes:
        skip = selection.select(p, balance, snapshot.topology) if balance is not None else selection.owner_placed(p)
        if skip is not None:
            out.verdicts[p.pid] = Verdict(p.pid, p.comm, *skip)
            continue
        regions = hotness.get(p.pid)
        if regions is None:
            out.verdicts[p.pid] = Verdict(p.pid, p.comm, "not-tracked", "no hotness sample for it yet")
            continue
        h = history.processes.get((p.pid, p.start_ticks))
        if h and h.backoff_until_s > now_s:
            out.verdicts[p.pid] = Verdict(p.pid, p.comm, "pingpong-backoff",
                                          f"its ranges went back and forth {h.pingpongs} time(s); backing off "
                                          f"for {h.backoff_until_s - now_s:.0f} s")
            continue
        _process_candidates(out, p, regions, h, config, now_s, snapshot.topology, plan,
                            _VmaIndex(p, (vma_ends or {}).get(p.pid)), (placement or {}).get(p.pid, {}))
    return out


def _process_candidates(out: Candidates, p: ProcessView, regions, h, config, now_s: float, topo: Topology,
                        plan: TierPlan, index: "_VmaIndex", placed) -> None:
    """Rules 3-4 for one process: hot ranges with pages on the slow tier, idle ranges on a fast node."""
    fast, slow = set(plan.fast_nodes), set(plan.slow_nodes)
    home = _fast_home(p, topo, plan)
    idle_s = min(config.cold_age_s, config.exchange_age_s)
    for r in regions:
        by_node = placed.get((r.start, r.end))
        if by_node is None:
            by_node = index.bytes_by_node(r)
        if is_hot(r, config):
            _add(out.hot_bytes, by_node)
            on_slow = sum(b for n, b in by_node.items() if n in slow)
            if on_slow and home is not None:
                out.promos.append(_Candidate(p, r, index.overlapping(r), on_slow, home))
            continue
        if r.accesses_fraction != 0:
            continue
        if r.age_s >= config.cold_age_s:
            _add(out.cold_bytes, by_node)
        for n, b in by_node.items():
            if n not in fast or not b:
                continue
            if h and any(_overlaps(r.start, r.end, s, e) and now_s - t < config.promote_cooldown_s
                         for s, e, t in h.promoted):
                continue  # hysteresis: just promoted
            if r.age_s >= idle_s:
                out.colds.append(_Candidate(p, r, index.overlapping(r), b, n))
            else:
                out.maturing_s[n] = max(out.maturing_s.get(n, 0.0), r.age_s)


def _add(total: dict[int, int], by_node: Mapping[int, int]) -> None:
    for n, b in by_node.items():
        total[n] = total.get(n, 0) + b


def control_headroom(snapshot: HostSnapshot, history: TieringHistory, config, plan: TierPlan,
                     cands: Candidates, free: Mapping[int, int]) -> dict[int, NodeHeadroom]:
    """Phase: each fast node's floor, adaptive headroom and free target (the control law, `_adapt`).

    Hot memory waiting on the slow tier is counted whoever promotes it: with
    kernel promotion on, the room the daemon makes is the room the kernel's
    promotion lacks.
    """
    topo = snapshot.topology
    wmarks = node_watermarks(snapshot.zones)
    page = snapshot.page_size_bytes
    candidate_by_node = {n: 0 for n in plan.fast_nodes}
    for c in cands.promos:
        candidate_by_node[c.node] = candidate_by_node.get(c.node, 0) + c.est_bytes
    headroom: dict[int, NodeHeadroom] = {}
    for n in plan.fast_nodes:
        total = topo.node(n).memory_total_bytes
        lo = config.headroom_min.resolve_bytes(total)
        hi = max(lo, config.headroom_max.resolve_bytes(total))
        wm = wmarks.get(n)
        floor = floor_bytes(wm, page)
        room = free[n] - floor
        size, change = _adapt(history, config, n, total, lo, hi, room, wm)
        headroom[n] = NodeHeadroom(n, plan.demotion_targets[n], total, free[n], floor + size, floor, size,
                                   cands.hot_bytes.get(n, 0), cands.cold_bytes.get(n, 0),
                                   candidate_by_node.get(n, 0), candidate_by_node.get(n, 0) > max(0, room), change)
    return headroom


def demand(headroom: Mapping[int, NodeHeadroom]) -> tuple[dict[int, int], dict[int, int]]:
    """What each fast node wants demoted: the free target's shortfall and a margin (served by memory
    idle for cold_age_s, then exchange_age_s), and room for the hot memory waiting with the free target still met after it
    (memory idle exchange_age_s)."""
    # Once below its target, a node is refilled to a margin above it
    # (refine.refill_margin): demoting exactly the shortfall left it just
    # below the target at every pass, as other allocations on the node took
    # the last MiB before the next one (bench-tiering, issue 16).
    want_headroom = {n: hr.target_bytes + refill_margin(hr.headroom_bytes) - hr.free_bytes
                     if hr.free_bytes < hr.target_bytes else 0 for n, hr in headroom.items()}
    want_exchange = {n: max(0, hr.candidate_bytes + hr.target_bytes - hr.free_bytes) if hr.candidate_bytes else 0
                     for n, hr in headroom.items()}
    return want_headroom, want_exchange


def kernel_share(promos: list[_Candidate], history: TieringHistory, config, now_s: float,
                 kernel_promotes: bool) -> tuple[list[_Candidate], list[_Candidate], list[float]]:
    """Phase: which promotions are ours and which the kernel's, and when that changes.

    With kernel promotion on, the kernel's hint faults promote; what it
    leaves on the slow tier for kernel_grace_s is promoted here (its
    hot-page threshold strands part of a hot set under pressure: measured
    in docs/benchmarks.md).
    """
    if not kernel_promotes:
        return promos, [], []
    ours, kernels, recheck = [], [], []
    for c in promos:
        h = history.processes.get((c.p.pid, c.p.start_ticks))
        since = h.waiting_since_s if h else None
        waited = now_s - since if since is not None else 0.0
        if config.kernel_grace_s and waited >= config.kernel_grace_s:
            ours.append(c)
        else:
            kernels.append(c)
            if config.kernel_grace_s:
                recheck.append(config.kernel_grace_s - waited)
    return ours, kernels, recheck


@dataclass
class Spares:
    """Demotions beyond the plan (refine.top_up runs them when the planned ones move less than planned)."""

    actions: tuple[tuple[int, Action], ...] = ()  # (fast node, action), in rank order
    planned_bytes: dict[int, int] = field(default_factory=dict)  # fast node -> bytes the plan demotes


def plan_demotions(topo: Topology, config, plan: TierPlan, cands: Candidates, headroom: Mapping[int, NodeHeadroom],
                   want_headroom: Mapping[int, int], want_exchange: Mapping[int, int], free: dict[int, int],
                   budget: int) -> tuple[list[Action], list[float], Spares]:
    """Phase: demotions per fast node, colder class first, then by the bytes each frees on the node
    (refine.demotion_key); `free` is updated. The headroom is served by memory idle cold_age_s and,
    when that is not enough, by memory idle exchange_age_s: a filler that keeps allocating must not
    hold the node below its free target for cold_age_s (issue 16). Returns the actions, the waits
    after which idle memory will be old enough for an exchange, and the spares."""
    actions: list[Action] = []
    recheck: list[float] = []
    spares: list[tuple[int, Action]] = []
    planned: dict[int, int] = {}
    left = [budget]  # the demotion budget, across nodes
    slow_free = {n: free[n] for n in plan.slow_nodes}
    for n, hr in headroom.items():
        ranked = sorted((c for c in cands.colds if c.node == n),
                        key=lambda c: (demotion_key(c.est_bytes, c.region.age_s, config.cold_age_s,
                                                    config.exchange_age_s), c.p.pid, c.region.start))
        taken = _demote_node(topo, config, hr, ranked, want_headroom[n], want_exchange[n], left, slow_free,
                             actions, spares)
        free[n] += taken
        if taken:
            planned[n] = taken
        if max(want_exchange[n], want_headroom[n]) > taken and n in cands.maturing_s:
            recheck.append(config.exchange_age_s - cands.maturing_s[n])
    return actions, recheck, Spares(tuple(spares), planned)


def _demote_node(topo: Topology, config, hr: NodeHeadroom, ranked: list[_Candidate], want_headroom: int,
                 want_exchange: int, budget: list[int], slow_free: dict[int, int], actions: list[Action],
                 spares: list[tuple[int, Action]]) -> int:
    """One fast node's demotions in rank order; candidates beyond the need, up to as much again, are
    spares. Returns the bytes planned off the node."""
    n, dst = hr.node, hr.demotion_target
    taken = spare = 0
    for c in ranked:
        age = c.region.age_s
        by_headroom = want_headroom if age >= min(config.cold_age_s, config.exchange_age_s) else 0
        by_exchange = want_exchange if age >= config.exchange_age_s else 0
        want = max(by_headroom, by_exchange)
        if c.est_bytes <= 0 or dst not in c.p.status.mems_allowed:
            continue  # nothing of it on the node (demoting it frees nothing), or not allowed there
        if want - taken <= 0 or budget[0] <= 0:
            if want and spare < want:  # met on paper: the rest, up to as much again, are spares
                take = min(c.est_bytes, want - spare)
                spares.append((n, _range_action(c, dst, RULE_DEMOTE, take, _demote_reason(c, hr, dst, True))))
                spare += take
            continue
        take = min(c.est_bytes, want - taken, budget[0], max(0, slow_free.get(dst, 0) - _slow_reserve(topo, dst)))
        if take <= 0:
            continue
        actions.append(_range_action(c, dst, RULE_DEMOTE, take, _demote_reason(c, hr, dst, by_headroom - taken > 0)))
        taken += take
        budget[0] -= take
        slow_free[dst] = slow_free.get(dst, 0) - take
    return taken


def _demote_reason(c: _Candidate, hr: NodeHeadroom, dst: int, for_headroom: bool) -> str:
    n = hr.node
    waits = f"{mib(hr.candidate_bytes)} of hot memory waits on the slow tier for room on node {n}"
    why = (f"node {n} has {mib(hr.free_bytes)} free, below its free target of {mib(hr.target_bytes)}"
           + (f", and {waits}" if hr.candidate_bytes else "") if for_headroom else waits)
    return (f"{why}; {mib(c.est_bytes)} on node {n} in {mib(c.region.size_bytes)} at {c.region.start:#x}, "
            f"unused for {c.region.age_s:.0f} s, moves to node {dst}")


def plan_promotions(config, ours: list[_Candidate], headroom: Mapping[int, NodeHeadroom], free: dict[int, int],
                    budget: int, kernel_promotes: bool) -> tuple[list[Action], dict[int, Verdict]]:
    """Phase: promotions, hottest first, into the room above each node's floor. Returns the
    actions and, for processes whose hot memory must wait, why."""
    actions: list[Action] = []
    waiting: dict[int, Verdict] = {}
    for c in sorted(ours, key=lambda c: (-c.region.accesses_fraction, -c.est_bytes, c.p.pid, c.region.start)):
        hr = headroom[c.node]
        if c.node not in c.p.status.mems_allowed:
            waiting.setdefault(c.p.pid, Verdict(c.p.pid, c.p.comm, "home-not-allowed",
                                                f"node {c.node} is not in its Mems_allowed_list"))
            continue
        room = free[c.node] - hr.floor_bytes
        take = min(c.est_bytes, budget, max(0, room))
        if take <= 0:
            waiting.setdefault(c.p.pid, Verdict(
                c.p.pid, c.p.comm, "fast-tier-full" if room <= 0 else "budget",
                f"hot memory waits on the slow tier: node {c.node} has {mib(free[c.node])} free against a "
                f"floor of {mib(hr.floor_bytes)}" if room <= 0 else
                "hot memory waits on the slow tier: this pass's promotion budget is spent"))
            continue
        actions.append(_range_action(
            c, c.node, RULE_PROMOTE, take,
            f"{mib(c.region.size_bytes)} at {c.region.start:#x} accessed in {c.region.accesses_fraction:.0%} of "
            f"samples (hot from {config.hot_access_fraction:.0%}) has {mib(c.est_bytes)} on the slow tier; its "
            f"threads run on node {c.node}"
            + (f"; the kernel has left it there for {config.kernel_grace_s:g} s or more" if kernel_promotes
               else "")
            + (f"; {c.region.note}" if c.region.note else "")))
        budget -= take
        free[c.node] -= take
    return actions, waiting


def _verdicts(snapshot: HostSnapshot, config, verdicts: dict[int, Verdict], kernels: list[_Candidate],
              waiting: Mapping[int, Verdict], actions: list[Action]) -> dict[int, Verdict]:
    """Phase: one verdict per process, the actions planned for it named in it."""
    verdicts = dict(verdicts)
    for c in kernels:
        verdicts.setdefault(c.p.pid, Verdict(
            c.p.pid, c.p.comm, "kernel-promotes",
            "kernel.numa_balancing tiering mode is on: the kernel promotes hot pages; autonumad keeps the "
            "headroom" + (f" and promotes what the kernel leaves on the slow tier for {config.kernel_grace_s:g} s"
                          if config.kernel_grace_s else "")))
    for pid, v in waiting.items():
        verdicts.setdefault(pid, v)
    planned: dict[int, list[Action]] = {}
    for a in actions:
        planned.setdefault(a.pid, []).append(a)
    for pid, acts in planned.items():
        rules = sorted({a.rule for a in acts})
        verdicts[pid] = Verdict(pid, acts[0].comm, "+".join(rules),
                                "; ".join(a.reason for a in acts[:3])
                                + (f"; and {len(acts) - 3} more range(s)" if len(acts) > 3 else ""), tuple(acts))
    for p in snapshot.processes:
        verdicts.setdefault(p.pid, Verdict(p.pid, p.comm, "in-place",
                                           "no hot memory on the slow tier and no cold memory a fast node "
                                           "needs to shed"))
    return verdicts


def _kernel_promotes(knobs: Mapping[str, object]) -> bool:
    """kernel.numa_balancing has its tiering bit set: the kernel promotes on hint faults."""
    return bool(int(knobs.get("numa_balancing") or 0) & NUMA_BALANCING_MEMORY_TIERING)


def kernel_roles(knobs: Mapping[str, object]) -> str:
    """Who promotes and who demotes under the kernel settings in force (module docstring, coexistence)."""
    return (("the kernel promotes (numa_balancing tiering mode), autonumad demotes" if _kernel_promotes(knobs)
             else "autonumad promotes and demotes (kernel tiering mode off)")
            + ("; the kernel also demotes in reclaim (demotion_enabled)" if knobs.get("demotion_enabled") else ""))


def floor_bytes(wm, page_bytes: int) -> int:
    """A fast node's promotion floor: its zones' promo watermarks (high where the kernel has no promo)."""
    return (wm.promo_pages or wm.high_pages) * page_bytes if wm else 0


def _adapt(history: TieringHistory, config, node: int, total: int, lo: int, hi: int, above_floor: int, wm):
    """The headroom control law (module docstring): the new headroom and what changed it.

    `above_floor` is the node's free memory above its floor now.
    """
    base = min(hi, max(lo, config.headroom.resolve_bytes(total)))
    if not config.adaptive_headroom:
        return base, "fixed"
    prev = history.headroom_bytes.get(node, base)
    prev = min(hi, max(lo, prev))
    candidates = history.last_candidate_bytes.get(node, 0)
    promoted = history.last_promoted_bytes.get(node, 0)
    enomem = history.last_enomem_pages.get(node, 0)
    below_promo = wm is not None and wm.promo_pages is not None and wm.free_pages < wm.promo_pages
    blocked = []
    if enomem:
        blocked.append(f"{enomem} page(s) failed with ENOMEM")
    if candidates > promoted and history.last_room_short.get(node):
        blocked.append(f"{mib(candidates - promoted)} wanted promotion without room")
    if below_promo and candidates:
        blocked.append("free pages below the promo watermark")
    if blocked:
        grown = min(hi, max(int(prev * WIDEN_FACTOR), prev + max(0, candidates - promoted)))
        return grown, "widened: " + ", ".join(blocked)
    if candidates == 0 and above_floor >= prev:
        shrunk = max(lo, int(prev - (prev - lo) * NARROW_FRACTION))
        return shrunk, "narrowed: free memory unused by promotion" if shrunk < prev else "held"
    return prev, "held"


def _split_budget(budget: int, share: float, promote_need: int, demote_need: int) -> tuple[int, int]:
    """Each side's share of the pass's bytes; what one side does not need goes to the other."""
    p, d = int(budget * share), budget - int(budget * share)
    if promote_need < p:
        d += p - promote_need
        p = promote_need
    elif demote_need < d:
        p += d - demote_need
        d = demote_need
    return p, d


def _slow_reserve(topo: Topology, node: int) -> int:
    """Keep 1 % of a slow node free: demotion must not push it into reclaim itself."""
    return topo.node(node).memory_total_bytes // 100


def _fast_home(p: ProcessView, topo: Topology, plan: TierPlan) -> int | None:
    """The fast node running most of the process's threads (ties: the lower id)."""
    cpu_node = topo.cpu_to_node
    counts: dict[int, int] = {}
    for t in p.threads.values():
        n = cpu_node.get(t.processor)
        if n is not None and n in plan.fast_nodes:
            counts[n] = counts.get(n, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda n: (-counts[n], n))


class _VmaIndex:
    """A process's VMAs by start address, for estimating where a range's pages are.

    numa_maps gives a VMA's start and its pages per node but not its end:
    the end comes from /proc/<pid>/maps (`vma_ends`, read by the daemon for
    the tracked processes) or else is taken as the start plus the resident
    pages, capped at the next VMA's start. A VMA's pages are taken to be
    spread evenly over it. The estimate only sizes actions; the executor
    moves the exact range and counts what really moved.
    """

    def __init__(self, p: ProcessView, ends: Mapping[int, int] | None = None):
        self.vmas = [v for v in p.numa_maps.vmas if not v.huge]
        self.starts = [v.start for v in self.vmas]
        self.ends = []
        for i, v in enumerate(self.vmas):
            nxt = self.vmas[i + 1].start if i + 1 < len(self.vmas) else None
            end = (ends or {}).get(v.start)
            if end is None:
                end = v.start + max(1, v.total_pages) * v.page_size_bytes
                if nxt is not None:
                    end = min(end, nxt)
            self.ends.append(end)

    def _around(self, r: Region) -> Iterable[int]:
        i = max(0, bisect_right(self.starts, r.start) - 1)
        while i < len(self.vmas) and self.vmas[i].start < r.end:
            if self.ends[i] > r.start:
                yield i
            i += 1

    def overlapping(self, r: Region) -> list[Vma]:
        return [self.vmas[i] for i in self._around(r)]

    def bytes_by_node(self, r: Region) -> dict[int, int]:
        out: dict[int, int] = {}
        for i in self._around(r):
            v = self.vmas[i]
            span = self.ends[i] - v.start
            overlap = min(r.end, self.ends[i]) - max(r.start, v.start)
            if span <= 0 or overlap <= 0:
                continue
            for node, pages in v.pages_by_node:
                resident = pages * v.page_size_bytes
                out[node] = out.get(node, 0) + min(resident, resident * overlap // span)
        return out


def _range_action(c: _Candidate, target: int, rule: str, nbytes: int, reason: str) -> Action:
    """A migrate action over the region, clipped to each VMA it overlaps."""
    moves = []
    for v in c.vmas:
        start = max(c.region.start, v.start)
        moves.append(VmaMove(start, v.page_size_bytes, 0, end=c.region.end))
    return Action(MIGRATE, c.p.pid, c.p.start_ticks, c.p.comm, rule, reason, target_node=target,
                  vmas=tuple(moves), bytes=int(nbytes))
