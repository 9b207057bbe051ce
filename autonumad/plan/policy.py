"""The balancing policy: a pure function from a snapshot to actions with reasons.

    decide(snapshot, history, config, now_s) -> Decision

Nothing here touches the host; the executor applies what this returns and
`autonumad explain` prints the same verdicts. The rules, in the order they
are checked for each process:

1. *Selection.* Excluded pids, commands (`exclude_comm` regular
   expressions, or not matching a non-empty `include_comm`) and cgroups
   (`exclude_cgroup` path prefixes, which also cover systemd units and
   containers) are left alone. Small processes never reach the policy
   (`min_rss_bytes` is applied while reading, before numa_maps).
2. *Explicit placement is the owner's decision.* Any VMA with a
   non-default memory policy (bind, interleave, weighted interleave,
   preferred; set by numactl, mbind(2) or set_mempolicy(2)) means the
   process is left exactly as it is: no page moves, no task moves.
   An affinity narrowed by someone else (not by us) forbids task moves but
   not page moves *to* the pinned node, which is what the owner's pin asks
   for: memory follows task.
3. *Stability.* A process acted on within `cooldown_s`, or backing off
   after its pages went back and forth (ping-pong, see history.py), waits;
   unless its owner re-pinned it since (its CPU affinity changed, and not
   by us): that is a new placement, acted on at once.
4. *Home node.* A process is *confined* to a node when its allowed CPUs all
   belong to that node (by its owner's affinity or ours), or when all its
   threads ran on that one node in each of the last passes.
   - Confined: *memory follows task*. If less than `target_local_fraction`
     of its pages are on the home node, the rest moves there, provided the
     home node is in its Mems_allowed_list and keeps
     `node_headroom_fraction` of its memory free after the move.
   - Not confined: a process that used less than `min_cpu_fraction` of a
     CPU since the last pass is idle and left alone (a task move costs a
     cache warm-up it would not win back). The others are placed together,
     after every other process of the pass, by placement.py: a CPU
     capacity ledger (each process's measured per-thread demand booked
     where it runs; a task move must fit the target node's CPUs beside
     the load that cannot leave it, and every move books from the same
     ledger) and an assignment of these
     processes to nodes (or to where they run now) that leaves the fewest
     bytes remote, then moves the FEWEST BYTES, then the fewest tasks:
     moving a task costs a cache warm-up, moving memory costs copying
     every byte (move_pages runs at roughly 0.1-1 GiB/s). A process seen
     for the first time is measured before it is moved. If its node holds
     at least `target_local_fraction` of its pages, *task follows memory*:
     all its threads get that node's CPUs. Otherwise the task goes there
     and the remainder of its memory follows. A process whose busy threads
     fit on no node stays where the scheduler spread them.
5. *Enough is enough.* At `target_local_fraction` local (numad's 90 % in
   spirit) nothing is done, except that a move the last pass cut short is
   finished; a process larger than any node's usable memory is left spread.
6. *Coexistence with the kernel.* With kernel.numa_balancing NORMAL (bit 1)
   on, the kernel migrates pages by hint faults itself. The daemon then
   still places tasks (the kernel moves tasks only slowly and only when the
   group's faults say so), but migrates pages only for processes the
   kernel has left misplaced for `KERNEL_GRACE_PASSES` passes without any
   improvement, so the two never move the same pages.
7. *Undo.* An affinity we set whose reason is gone (its memory is no longer
   concentrated on that node) is restored to what it was before us; one
   that someone else changed after us is theirs now and forgotten.

Actions are ordered by benefit (remote bytes, largest first) so a budget-
limited executor spends its budget where it matters most.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from autonumad.model import (MIGRATE, RESTORE_AFFINITY, SET_AFFINITY, Action, Decision, Verdict, VmaMove, mib,
                             node_list)
from autonumad.plan import placement, selection
from autonumad.plan.history import History, OwnedAffinity, ProcessHistory
from autonumad.readers.numa_maps import NumaMaps, unmovable_vma
from autonumad.readers.proc_stat import cpu_busy_fraction
from autonumad.observe.snapshot import HostSnapshot, ProcessView

# Passes a misplaced process must show no locality gain before the daemon
# migrates pages while the kernel's own NUMA balancing is on.
KERNEL_GRACE_PASSES = 3
NUMA_BALANCING_NORMAL = 1
# Verdicts that leave a process alone for a reason that lasts as long as its
# placement, its affinity and the config do: the daemon tells the snapshot
# cache these processes are settled (SnapshotCache.settle), and their
# numa_maps is then re-read only when a cheap signal changes or the refresh
# bound passes. Rules that wait on time or on something numa_maps does not
# show (cool-down, ping-pong back-off, measuring, idle, the kernel's grace
# passes, a full target node) are not here: those processes are read every
# pass, so a decision that ends the wait never acts on reused data.
SETTLED_RULES = frozenset({
    "already-local", "single-node", "disabled", "pinned-by-owner", "explicit-memory-policy",
    "excluded-pid", "excluded-comm", "excluded-cgroup", "not-included",
})


class VmaMoves(Sequence[VmaMove]):
    """The VMAs a migrate action moves: every non-hugetlbfs VMA with pages off
    `target_node`, in address order, read from the snapshot's numa_maps when
    iterated.

    A large process has thousands of VMAs; building a VmaMove for each one
    in every pass would cost more than the rest of the decision, and only
    the executor, when it really moves pages, walks them.
    """

    __slots__ = ("numa_maps", "target_node")

    def __init__(self, numa_maps: NumaMaps, target_node: int):
        self.numa_maps = numa_maps
        self.target_node = target_node

    def __iter__(self) -> Iterator[VmaMove]:
        target = self.target_node
        for v in self.numa_maps.vmas:
            if unmovable_vma(v.huge, v.is_file, v.mapmax):
                continue
            off = sum(c for n, c in v.pages_by_node if n != target)
            if off:
                yield VmaMove(v.start, v.page_size_bytes, off)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, index):
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"VmaMoves({tuple(self)!r})"


@dataclass
class _Ctx:
    snap: HostSnapshot
    history: History
    cfg: object  # config.BalanceConfig
    now_s: float
    all_cpus: frozenset[int]
    node_cpus: Mapping[int, frozenset[int]]
    idle_cpus_by_node: dict[int, float]
    free_bytes: dict[int, int]  # updated as this pass plans moves
    kernel_balancing: bool
    page_bytes: int
    ledger: placement.CpuLedger | None = None
    pending: list[ProcessView] | None = None  # unconfined processes placed together (placement.py)


def decide(snapshot: HostSnapshot, history: History, cfg, now_s: float, prev_cpu_times=None) -> Decision:
    """The balancing phase: a verdict for every process, actions for the misplaced ones.

    `cfg` is the config's BalanceConfig; `prev_cpu_times` the last pass's
    /proc/stat, for the CPU headroom of each node.
    """
    topo = snapshot.topology
    cpu_nodes = [n for n in topo.nodes if n.cpus]
    busy = cpu_busy_fraction(prev_cpu_times, snapshot.cpu_times) if prev_cpu_times else {}
    nb = snapshot.knobs.as_json().get("numa_balancing") or 0
    ctx = _Ctx(
        snap=snapshot, history=history, cfg=cfg, now_s=now_s,
        all_cpus=frozenset(c for n in topo.nodes for c in n.cpus),
        node_cpus={n.id: frozenset(n.cpus) for n in topo.nodes},
        idle_cpus_by_node={n.id: sum(1.0 - busy.get(c, 0.0) for c in n.cpus) for n in cpu_nodes},
        free_bytes={n.id: n.memory_free_bytes for n in topo.nodes},
        kernel_balancing=bool(int(nb) & NUMA_BALANCING_NORMAL),
        page_bytes=snapshot.page_size_bytes,
    )
    if not cfg.enabled:
        return _all(snapshot, "disabled", "balancing is disabled in the config")
    if len(cpu_nodes) < 2 and len(topo.nodes) < 2:
        return _all(snapshot, "single-node", "the host has a single NUMA node")
    ctx.ledger = _build_ledger(ctx)
    ctx.pending = []
    verdicts: dict[int, Verdict] = {}
    # Biggest misplaced processes first, so they get the budget and the headroom.
    for p in sorted(snapshot.processes, key=lambda p: (-_remote_pages(p), p.pid)):
        v = decide_process(ctx, p)
        if v is not None:  # None: unconfined, placed with the others below
            verdicts[p.pid] = v
    verdicts.update(_place_pending(ctx))
    actions = [a for v in verdicts.values() for a in v.actions]
    # Affinity first (cheap, and memory moves after it land where tasks run),
    # then migrations by size.
    actions.sort(key=lambda a: (a.kind == MIGRATE, -a.bytes))
    return Decision(tuple(actions), verdicts, ctx.ledger)


def _build_ledger(ctx: _Ctx) -> placement.CpuLedger:
    """The pass's CPU ledger: every scanned process's measured demand booked where its threads run,
    and the background that persisted over the last passes (History.unexplained)."""
    cpu_to_node = ctx.snap.topology.cpu_to_node
    demands = {}
    # The clock for a first-sight thread's lifetime use: a CPU's tick total in /proc/stat.
    uptime_ticks = max((t.total_ticks for t in ctx.snap.cpu_times.values()), default=0) or None
    for p in ctx.snap.processes:
        h = ctx.history.get((p.pid, p.start_ticks))
        tc = h.thread_cores if h is not None else None
        confined_to = _node_of_cpus(ctx, p.status.cpus_allowed)
        demands[p.pid] = placement.process_demand(p.threads, tc, cpu_to_node, uptime_ticks, confined_to)
    return placement.CpuLedger.build(ctx.node_cpus, demands, tuple(ctx.history.unexplained))


def _place_pending(ctx: _Ctx) -> dict[int, Verdict]:
    """Rule 4's unconfined processes, placed together on the pass's CPU ledger (placement.py)."""
    usable = {n.id: n.memory_total_bytes * (1 - ctx.cfg.node_headroom_fraction)
              for n in ctx.snap.topology.nodes if n.cpus}
    cands = []
    for p in ctx.pending:
        total = p.total_pages * ctx.page_bytes
        nodes = tuple(n for n in usable if n in p.status.mems_allowed and usable[n] >= total)
        cands.append(placement.Candidate(p.pid, {n: c * ctx.page_bytes for n, c in p.pages_by_node.items()},
                                         nodes, memory_follows=ctx.cfg.page_moves))
    choices = placement.assign(ctx.ledger, cands)
    return {p.pid: _placed(ctx, p, choices[p.pid]) for p in ctx.pending}


def _all(snapshot: HostSnapshot, rule: str, reason: str) -> Decision:
    return Decision((), {p.pid: Verdict(p.pid, p.comm, rule, reason) for p in snapshot.processes})


def _remote_pages(p: ProcessView) -> int:
    return p.total_pages - sum(p.pages_by_node.get(n, 0) for n in p.running_nodes)


def _node_of_cpus(ctx: _Ctx, cpus: Sequence[int]) -> int | None:
    """The node whose CPUs contain all of `cpus`, if there is exactly one."""
    s = set(cpus)
    for node, ncpus in ctx.node_cpus.items():
        if s and s <= ncpus:
            return node
    return None


def _verdict(p: ProcessView, rule: str, reason: str, *actions: Action) -> Verdict:
    return Verdict(p.pid, p.comm, rule, reason, tuple(actions))


def decide_process(ctx: _Ctx, p: ProcessView) -> Verdict | None:
    """One process, rules 1-7 in order (module docstring); None for an unconfined process, which
    `_place_pending` places with the others on the pass's CPU ledger."""
    h = ctx.history.get((p.pid, p.start_ticks))
    skip = selection.excluded(p, ctx.cfg, ctx.snap.topology) or selection.no_memory(p)
    if skip:
        return _verdict(p, *skip)
    # 7. an affinity of ours that someone changed since is theirs now (the
    # daemon forgets it on record)
    owned = h.owned_affinity if h else None
    if owned and frozenset(p.status.cpus_allowed) != owned.cpus:
        owned = None
    skip = selection.owner_placed(p)
    if skip:
        return _verdict(p, *skip)
    crammed = _undo_crammed(ctx, p, owned)
    if crammed is not None:
        return crammed
    skip = _stability(ctx, p, h)
    if skip:
        return _verdict(p, *skip)
    home, how = _home(ctx, p, h, owned)
    if owned and home == owned.node:
        undo = _undo_affinity(ctx, p, home, owned)
        if undo is not None:
            return undo
    if home is not None:
        lf = p.local_fraction((home,))
        # The target is where a move starts, not where one stops: a move to `home` that the last
        # pass cut short goes on to the end, as an uncut one would have (else a cut at 91 % local
        # would leave a tenth of the memory remote for good).
        if lf >= ctx.cfg.target_local_fraction and not _continuing(p, h, home):
            return _verdict(p, "already-local", f"{lf:.0%} of its memory is on node {home}, its home by {how} "
                            f"(target {ctx.cfg.target_local_fraction:.0%})")
        return _memory_follows_task(ctx, p, home, how, h)
    return _unconfined(ctx, p, h, selection.pinned_by_owner(p, ctx.all_cpus, owned.cpus if owned else None))


def _undo_crammed(ctx: _Ctx, p: ProcessView, owned: OwnedAffinity | None) -> Verdict | None:
    """Rule 7, placement.py rule 5: undo an affinity of ours on a node booked beyond its CPUs."""
    if not owned or ctx.ledger is None or not ctx.ledger.crammed(owned.node):
        return None
    d = ctx.ledger.demands.get(p.pid)
    if d is None or d.cores_by_node.get(owned.node, 0.0) < 1.0:
        return None
    reason = (f"node {owned.node}, where autonumad placed it, has more load confined to it than CPUs "
              f"({ctx.ledger.describe()}); restoring its affinity")
    return _verdict(p, "undo-crammed", reason,
                    Action(RESTORE_AFFINITY, p.pid, p.start_ticks, p.comm, "undo-crammed", reason,
                           target_node=None, cpus=tuple(sorted(owned.original))))


def _continuing(p: ProcessView, h: ProcessHistory | None, node: int) -> bool:
    """The last pass cut short a move of this process's memory to `node`, and some is still elsewhere."""
    return h is not None and h.continuing_to == node and p.numa_maps.movable_bytes_off_node(node) > 0


def _stability(ctx: _Ctx, p: ProcessView, h: ProcessHistory | None) -> tuple[str, str] | None:
    """Rule 3: ping-pong back-off and cool-down, unless its owner re-pinned it since."""
    if h and h.backoff_until_s > ctx.now_s:
        return "pingpong-backoff", (f"pages moved back and forth {h.pingpongs} time(s); "
                                    f"backing off for {h.backoff_until_s - ctx.now_s:.0f} s")
    repinned = h is not None and h.acted_cpus is not None and tuple(p.status.cpus_allowed) != h.acted_cpus
    # The last action restored an affinity (nothing of ours in place): placed again at once.
    undone = h is not None and h.acted_cpus is None and h.owned_affinity is None
    # A migration the pass's budget or deadline cut short is continued, not cooled down: the
    # executor said "continues next pass" (ping-pong back-off above still applies).
    continuing = h is not None and h.continuing_to is not None
    if h and h.last_action_s is not None and ctx.now_s - h.last_action_s < ctx.cfg.cooldown_s and not repinned \
            and not undone and not continuing:
        return "cooldown", (f"acted on {ctx.now_s - h.last_action_s:.0f} s ago "
                            f"(balance.cooldown_s = {ctx.cfg.cooldown_s:g})")
    return None


def _home(ctx: _Ctx, p: ProcessView, h: ProcessHistory | None, owned: OwnedAffinity | None
          ) -> tuple[int | None, str]:
    """Rule 4: the node it is confined to, and by what; (None, "") when it is not confined."""
    if frozenset(p.status.cpus_allowed) != ctx.all_cpus:
        home = _node_of_cpus(ctx, p.status.cpus_allowed)
        if home is not None:
            return home, "its CPU affinity (set by autonumad)" if owned else "its CPU affinity"
    if h and len(h.running_nodes) >= 2 and len(p.running_nodes) == 1 and all(
            len(r) == 1 and r == p.running_nodes for r in h.running_nodes):
        return p.running_nodes[0], f"where its threads ran over the last {len(h.running_nodes)} passes"
    return None, ""


def _undo_affinity(ctx: _Ctx, p: ProcessView, home: int, owned: OwnedAffinity) -> Verdict | None:
    """Rule 7: restore an affinity of ours once its memory is concentrated elsewhere."""
    lf_home = p.local_fraction((home,))
    best = max(p.pages_by_node, key=lambda n: p.pages_by_node[n])
    if lf_home < 0.5 and best != home and p.pages_by_node[best] / p.total_pages >= ctx.cfg.target_local_fraction:
        return _verdict(p, "undo-affinity", f"memory moved to node {best}; restoring the affinity autonumad set",
                        Action(RESTORE_AFFINITY, p.pid, p.start_ticks, p.comm, "undo-affinity",
                               f"its memory is now on node {best}, not node {home} where autonumad placed it",
                               target_node=None, cpus=tuple(sorted(owned.original))))
    return None


def _unconfined(ctx: _Ctx, p: ProcessView, h: ProcessHistory | None, pinned_by_owner: bool) -> Verdict | None:
    """Rule 4, not confined: idle, owner-pinned or too large is left alone; the rest waits for
    `_place_pending`, which places all of them together on the pass's CPU ledger (None)."""
    cfg = ctx.cfg
    # The choice may move the task, which costs a cache warm-up that an idle
    # process would not win back.
    if h is not None and h.cpu_cores is not None and h.cpu_cores < cfg.min_cpu_fraction:
        return _verdict(p, "idle", f"used {h.cpu_cores:.2f} CPU since the last pass, below "
                        f"balance.min_cpu_fraction ({cfg.min_cpu_fraction:g}): not worth a task move")
    if pinned_by_owner:
        return _verdict(p, "pinned-by-owner", "its CPU affinity spans several nodes and was set by its owner: "
                        "no task move; memory is left where it is")
    total_bytes = p.total_pages * ctx.page_bytes
    usable = {n.id: n.memory_total_bytes * (1 - cfg.node_headroom_fraction)
              for n in ctx.snap.topology.nodes if n.cpus}
    if usable and total_bytes > max(usable.values()):
        return _verdict(p, "too-large", f"{mib(total_bytes)} is more than any node's usable memory "
                        f"({mib(int(max(usable.values())))}): left spread")
    if not cfg.task_moves:
        if len(p.running_nodes) == 1:
            lf = p.local_fraction()
            if lf >= cfg.target_local_fraction:
                return _verdict(p, "already-local", f"{lf:.0%} of its memory is on node {p.running_nodes[0]}, "
                                f"where its threads run")
            return _memory_follows_task(ctx, p, p.running_nodes[0], "where its threads run (task moves off)", h)
        return _verdict(p, "task-moves-disabled", "balance.task_moves is off and its threads span nodes")
    ctx.pending.append(p)
    return None


def _placed(ctx: _Ctx, p: ProcessView, choice: placement.Choice) -> Verdict:
    """The verdict for an unconfined process, given where the assignment put it."""
    cfg = ctx.cfg
    if choice.node is placement.STAY:
        lf = p.local_fraction()
        if len(p.running_nodes) == 1 and lf >= cfg.target_local_fraction:
            return _verdict(p, "already-local", f"{lf:.0%} of its memory is on node {p.running_nodes[0]}, "
                            f"where its threads run")
        demand = ctx.ledger.demands.get(p.pid)
        if demand is not None and not demand.measured:
            return _verdict(p, "measuring", choice.reason)
        if not any(ctx.ledger.fits(p.pid, n) for n in ctx.ledger.capacity_cores):
            return _verdict(p, "spread-by-capacity", choice.reason)
        return _verdict(p, "stays", choice.reason)
    node = choice.node
    lf = p.local_fraction((node,))
    if p.running_nodes == (node,) and lf >= cfg.target_local_fraction:
        return _verdict(p, "already-local", f"{lf:.0%} of its memory is on node {node}, where its threads run")
    set_aff = _set_affinity(ctx, p, node, lf, choice.bytes_to_move, p.total_pages * ctx.page_bytes, choice.reason)
    if lf >= cfg.target_local_fraction:
        return _verdict(p, "task-follows-memory", set_aff.reason, set_aff)
    mig = _memory_follows_task(ctx, p, node, "the node chosen for it this pass", ctx.history.get(
        (p.pid, p.start_ticks)))
    return _verdict(p, "task-and-memory", set_aff.reason, set_aff, *mig.actions)


def _set_affinity(ctx: _Ctx, p: ProcessView, node: int, lf: float, to_move: int, total_bytes: int,
                  placement_reason: str) -> Action:
    """Task follows memory: all its threads get `node`'s CPUs."""
    page = ctx.page_bytes
    if lf >= ctx.cfg.target_local_fraction:
        on_node = p.pages_by_node.get(node, 0) * page
        elsewhere = tuple(n for n in p.running_nodes if n != node)
        if node in p.running_nodes:
            # Some threads already run on `node`: the alternative is not one copy "to where it runs"
            # but the memory those threads use pulled apart towards the other nodes' threads.
            instead = (f"instead of its memory being split towards its thread(s) on "
                       f"node(s) {node_list(elsewhere)}")
        else:
            running = sum(p.pages_by_node.get(n, 0) for n in p.running_nodes) * page
            instead = f"instead of copying {mib(total_bytes - running)} of memory to where it runs"
        reason = (f"{lf:.0%} of its memory ({mib(on_node)}) is on node {node} "
                  f"while it runs on node(s) {node_list(p.running_nodes)}; node {node} has CPU headroom, so its "
                  f"{len(p.threads)} thread(s) move there {instead}")
    else:
        reason = (f"node {node} needs the fewest bytes moved ({mib(to_move)}) among nodes with CPU headroom; "
                  f"its {len(p.threads)} thread(s) move there and the rest of its memory follows"
                  f"; {placement_reason}")
    return Action(SET_AFFINITY, p.pid, p.start_ticks, p.comm, "task-follows-memory", reason, target_node=node,
                  cpus=tuple(sorted(ctx.node_cpus[node])),
                  original_cpus=tuple(sorted(p.status.cpus_allowed)))


def _memory_follows_task(ctx: _Ctx, p: ProcessView, home: int, how: str, h) -> Verdict:
    cfg = ctx.cfg
    lf = p.local_fraction((home,))
    verdict = partial(_verdict, p)
    if not cfg.page_moves:
        return verdict("page-moves-disabled", f"{lf:.0%} local on node {home}, but balance.page_moves is off")
    if home not in p.status.mems_allowed:
        return verdict("home-not-allowed", f"node {home} is not in its Mems_allowed_list "
                       f"({node_list(p.status.mems_allowed)}): its cpuset forbids the move")
    node = ctx.snap.topology.node(home)
    usable = node.memory_total_bytes * (1 - cfg.node_headroom_fraction)
    total_bytes = p.total_pages * ctx.page_bytes
    if total_bytes > usable:
        return verdict("too-large", f"{mib(total_bytes)} does not fit on node {home} "
                       f"({mib(int(usable))} usable): left spread")
    if ctx.kernel_balancing and h is not None:
        fr = list(h.local_fractions)
        if len(fr) < KERNEL_GRACE_PASSES or fr[-1] > fr[0] + 0.01:
            return verdict("kernel-balancing", f"kernel.numa_balancing is on and still improving it "
                           f"({lf:.0%} local on node {home}); autonumad migrates only what the kernel "
                           f"leaves misplaced for {KERNEL_GRACE_PASSES} passes")
    # hugetlbfs pages move only with their pool's consent; left alone (VmaMoves).
    to_move = p.numa_maps.movable_bytes_off_node(home)
    if not to_move:
        return verdict("nothing-movable", f"its remote pages on node(s) other than {home} are huge pages")
    headroom = int(node.memory_total_bytes * cfg.node_headroom_fraction)
    room = ctx.free_bytes[home] - headroom
    if room <= 0:
        return verdict("target-full", f"node {home} has {mib(ctx.free_bytes[home])} free, below its "
                       f"headroom of {mib(headroom)}")
    ctx.free_bytes[home] -= min(room, to_move)
    reason = (f"{lf:.0%} of its memory is on node {home}, its home by {how}; moving "
              f"{mib(min(room, to_move))} there (target {cfg.target_local_fraction:.0%})")
    if room < to_move:
        reason += f", limited by node {home}'s headroom"
    return verdict("memory-follows-task", reason,
                   Action(MIGRATE, p.pid, p.start_ticks, p.comm, "memory-follows-task", reason,
                          target_node=home, vmas=VmaMoves(p.numa_maps, home), bytes=min(room, to_move)))


def owned_from_action(a: Action) -> OwnedAffinity:
    return OwnedAffinity(cpus=frozenset(a.cpus), original=frozenset(a.original_cpus),
                         node=a.target_node if a.target_node is not None else -1, reason=a.reason)
