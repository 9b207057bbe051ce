"""The planner's own phases (plan/planner.py): the slow-tier rule, the budget, and tiering planning on
the free memory balancing's moves leave. Balancing's and tiering's phases are tested in test_policy.py
and test_tiering.py."""

from __future__ import annotations

from autonumad.model import Region
from autonumad.observe.inputs import PassInputs
from autonumad.observe.snapshot import take_snapshot
from autonumad.plan.history import History
from autonumad.plan.planner import RULE_LEFT_TO_TIERING, free_after, pass_budget_bytes, plan, rate_bytes
from autonumad.plan.tiering import RULE_PROMOTE
from autonumad.service.config import compile_config
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

GiB, MiB, P = 2**30, 2**20, 4096
HOT = 0x7F0000000000
COLD = 0x7F1000000000


def tiered_host(tmp_path, procs, free=(GiB // 2, GiB // 2, GiB)):
    knobs = dict(HostSpec(nodes=()).knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = "0"
    spec = HostSpec(nodes=(NodeSpec((0,), GiB, free[0], (10, 20, 28)), NodeSpec((1,), GiB, free[1], (20, 10, 17)),
                           NodeSpec((), GiB, free[2], (28, 17, 10))),
                    processes=tuple(procs), knobs=knobs, tiers={4: (0, 1), 360: (2,)})
    return build_host(tmp_path, spec)


def pinned(pid, cpu, pages):
    """A process pinned to `cpu`'s node, so balancing's memory-follows-task applies to it."""
    return ProcessSpec(pid, "app", (ThreadSpec(pid, cpu),), cpus_allowed=(cpu,),
                       vmas=(VmaSpec(HOT, {n: b // P for n, b in pages[0].items()}),
                             VmaSpec(COLD, {n: b // P for n, b in pages[1].items()})))


def config(**balance):
    return compile_config({"balance": {"min_cpu_fraction": 0, **balance}})


def inputs(snap, observable=(), hot=None, window_s=1.0):
    return PassInputs(snap, 1000.0, window_s, hotness=hot or {}, tier_observable=frozenset(observable))


def history(snap):
    h = History()
    h.observe(snap, 1000.0)
    return h


def test_slow_tier_memory_is_left_to_tiering_only_where_tiering_can_see(tmp_path):
    # pid 100 pinned to node 0 with its memory on the slow node 2: balancing alone would move it all up.
    snap = take_snapshot(tiered_host(tmp_path, [pinned(100, 0, ({2: 64 * MiB}, {2: 192 * MiB}))]))
    seen = plan(inputs(snap, observable={100}), history(snap), config())
    assert seen.verdict(100).rule == RULE_LEFT_TO_TIERING and "slow tier" in seen.verdict(100).reason
    assert not [a for a in seen.actions if a.kind == "migrate" and a.pid == 100]
    unseen = plan(inputs(snap), history(snap), config())
    assert unseen.verdict(100).rule == "memory-follows-task"


def test_budget_is_the_pass_budget_and_tiering_plans_in_what_balancing_leaves(tmp_path):
    # pid 200 pinned to node 0 with 96 MiB on fast node 1 (balancing moves it); pid 100 has a hot
    # 64 MiB range on the slow node (tiering promotes it).
    host = tiered_host(tmp_path, [pinned(100, 0, ({2: 64 * MiB}, {0: 4 * MiB})),
                                  pinned(200, 0, ({1: 96 * MiB}, {0: 4 * MiB}))])
    snap = take_snapshot(host)
    hot = {100: (Region(HOT, HOT + 64 * MiB, 1.0, 2.0),)}
    cfg = config(pass_budget_mib=128)
    p = plan(inputs(snap, observable={100, 200}, hot=hot), history(snap), cfg)
    assert p.budget_bytes == pass_budget_bytes(cfg) == 128 * MiB
    balancing = sum(a.bytes for a in p.balancing.actions if a.kind == "migrate")
    promoted = sum(a.bytes for a in p.tiering.actions if a.rule == RULE_PROMOTE)
    assert balancing == 96 * MiB and promoted == 128 * MiB - 96 * MiB
    # ... and within the mover's rate for the pass's window.
    slow = plan(inputs(snap, observable={100, 200}, hot=hot, window_s=0.25), history(snap), cfg)
    assert rate_bytes(cfg, 0.25) == 64 * MiB and not slow.tiering.actions


def test_tiering_plans_on_the_free_memory_balancings_moves_leave(tmp_path):
    host = tiered_host(tmp_path, [pinned(200, 0, ({1: 96 * MiB}, {0: 4 * MiB}))])
    snap = take_snapshot(host)
    p = plan(inputs(snap, observable={200}), history(snap), config())
    free = free_after(inputs(snap), p.balancing)
    assert free[0] == GiB // 2 - 96 * MiB and free[1] == GiB // 2 + 96 * MiB
    assert p.tiering.headroom[0].free_bytes == free[0]
