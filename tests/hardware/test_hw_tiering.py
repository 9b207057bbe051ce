"""Tiering on the real kernel (tiered guest: nodes 0,1 fast with a CPU each, node 2 CPU-less and slower).

The daemon's pass (observe.inputs.read_pass_inputs with the DAMON tracker,
plan.planner.plan, the executor's move_pages) runs pass after pass on
LinuxHost, limited to the workloads' processes, with kernel NUMA balancing off so that only it moves pages.
Workloads are tests/hardware/tier_workload.py: one process with a hot and
a cold mapping. Checked from numa_maps, per mapping:

- promotion moves the hot mapping to the node its task runs on and leaves
  the cold one on the slow node, with DAMON and with the soft-dirty
  fallback tracker;
- with node 0 nearly full of another process's cold memory, demotion frees
  the headroom target on node 0 and holds it, moving that cold memory (not
  the other process's hot memory) to node 2;
- a hot and a cold mapping the kernel merged into one VMA: the hot one is
  promoted, the cold one is not (issue 16; counted with the move_pages(2)
  query, since numa_maps has one line for both).

Run with -s to see each pass's numbers.
"""

from __future__ import annotations

import threading
import time

import pytest

from autonumad.service.config import compile_config
from autonumad.observe.damon import damon_available, read_slots
from autonumad.act.executor import Executor, TokenBucket
from autonumad.host import LinuxHost
from autonumad.observe.inputs import HotnessSource, read_pass_inputs
from autonumad.observe.snapshot import ScanLimits, take_snapshot
from autonumad.plan.history import History
from autonumad.plan.planner import plan
from autonumad.plan.tiering import RULE_DEMOTE, RULE_PROMOTE
from hardware.tier_workload import TierWorkload
from hardware.workload import numa_balancing

pytestmark = [pytest.mark.hardware, pytest.mark.topology("tiered")]

MIB = 1 << 20
RATE_MIB_S = 256


@pytest.fixture
def host():
    h = LinuxHost()
    if not damon_available(h):
        pytest.skip("this kernel has no DAMON sysfs")
    with numa_balancing(0):
        yield h
    assert read_slots(h) == (), "the tiering step left a kdamond behind"


@pytest.fixture
def workloads(spawn):
    return lambda *args: spawn(TierWorkload, *args)


def _run(host, tmp_path, tiering: dict, until, timeout_s: float, pids):
    """Passes every second until `until(decision)` holds or the time is up; returns the last decision."""
    cfg = compile_config({"daemon": {"runtime_dir": str(tmp_path / "run")}, "balance": {"enabled": False},
                          "tiering": tiering})
    hotness = HotnessSource(host)
    history = History()
    ex = Executor(host, TokenBucket(RATE_MIB_S * MIB), threading.Event())
    t0 = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            inputs = read_pass_inputs(host, cfg, hotness, None, now, 1.0, ScanLimits(only_pids=frozenset(pids)))
            history.observe(inputs.snapshot, now)
            p = plan(inputs, history, cfg)
            history.tiering.record_decision(p.tiering, now)
            outcomes = ex.run(p.actions, time.monotonic() + 0.8, p.budget_bytes, then=p.top_up)
            done = time.monotonic()
            moved: dict = {}
            for o in outcomes:
                history.tiering.record_outcome(o, done, cfg.tiering.promote_cooldown_s)
                k = (o.action.rule, o.action.pid)
                moved[k] = moved.get(k, 0) + o.moved_bytes // MIB
            d = p.tiering
            hr = d.headroom.get(0)
            print(f"{now - t0:5.1f} s tracker {hotness.tracker_name} (cost {hotness.tracker_cost_s:.2f} s): moved MiB "
                  f"{moved}; node 0 free {hr.free_bytes // MIB} MiB, target {hr.target_bytes // MIB} MiB ({hr.change})")
            if until(d) or now - t0 > timeout_s:
                return d, history.tiering
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    finally:
        hotness.close()


@pytest.mark.parametrize("tracker", ["damon", "softdirty"])
def test_promotion_moves_the_hot_mapping_and_leaves_the_cold_one(host, tmp_path, workloads, tracker):
    # softdirty: the fallback for kernels without DAMON, on the same kernel.
    w = workloads("--hot-mib", "64", "--cold-mib", "192", "--node", "2", "--cpunode", "0",
                  *(["--flush-tlb-ms", "0"] if tracker == "softdirty" else []))
    hot_pages, cold_pages = 64 * MIB // 4096, 192 * MIB // 4096
    assert w.nodes(w.hot).get(2, 0) == hot_pages and w.nodes(w.cold).get(2, 0) == cold_pages

    def hot_on_fast(_d) -> bool:
        return w.nodes(w.hot).get(0, 0) >= 0.99 * hot_pages

    _, tiering = _run(host, tmp_path, {"tracker": tracker}, hot_on_fast, 90, [w.pid])
    assert tiering.moved_bytes.get((RULE_PROMOTE, 2, 0), 0) >= 0.99 * 64 * MIB
    hot, cold = w.nodes(w.hot), w.nodes(w.cold)
    print(f"hot mapping pages by node {hot}; cold mapping {cold}")
    assert hot.get(0, 0) >= 0.99 * hot_pages
    assert cold.get(0, 0) + cold.get(1, 0) < 0.05 * cold_pages


def test_demotion_frees_and_holds_the_headroom(host, tmp_path, workloads):
    free0 = take_snapshot(host, ScanLimits(only_pids=frozenset())).topology.node(0).memory_free_bytes
    headroom = 96 * MIB
    # Fill node 0 to 32 MiB free with another process's cold memory (a small hot part stays in use).
    filler_mib = max(64, (free0 - 32 * MIB) // MIB - 8)
    f = workloads("--hot-mib", "8", "--cold-mib", str(filler_mib), "--node", "0", "--cpunode", "0")
    cold_pages = filler_mib * MIB // 4096
    start_free = take_snapshot(host, ScanLimits(only_pids=frozenset())).topology.node(0).memory_free_bytes
    print(f"node 0 free {free0 // MIB} MiB before, {start_free // MIB} MiB with the filler")
    assert start_free < headroom

    held = []

    def headroom_held(d) -> bool:
        hr = d.headroom[0]
        held.append(hr.free_bytes >= 0.9 * headroom)
        return len(held) >= 3 and all(held[-3:])

    tiering = {"headroom": "96MiB", "adaptive_headroom": False, "cold_age_s": 5}
    d, tiering = _run(host, tmp_path, tiering, headroom_held, 120, [f.pid])
    assert all(held[-3:]), "node 0's free memory did not reach and stay at the headroom target"
    assert tiering.moved_bytes.get((RULE_DEMOTE, 0, 2), 0) >= (headroom - start_free) * 0.9
    # Nothing went down and came back up (that would be a ping-pong) ...
    assert tiering.pingpongs_total == 0
    # ... and what was promoted, if anything, is small: with node 0 this full, the
    # filler's own later allocations (its interpreter's heap) can land on the slow
    # node, and they are hot, so promoting them once demotion made room is right
    # (seen once in CI: 2 MiB promoted right after the headroom was reached). Its
    # mappings themselves must stay put, checked below.
    promoted = sum(v for k, v in tiering.moved_bytes.items() if k[0] == RULE_PROMOTE)
    assert promoted <= 8 * MIB, f"{promoted / MIB:.1f} MiB promoted while only demoting for headroom"
    hot, cold = f.nodes(f.hot), f.nodes(f.cold)
    print(f"filler hot mapping by node {hot}; cold mapping {cold}")
    assert hot.get(2, 0) == 0, "hot memory was demoted"
    assert cold.get(2, 0) >= (headroom - start_free) // 4096 * 0.9
    assert cold.get(2, 0) < cold_pages  # demotion stopped at the target, not at everything cold


def test_adjacent_hot_and_cold_mappings_merged_into_one_vma_only_the_hot_one_is_promoted(host, tmp_path, workloads):
    # Issue 16: a hot and a cold mapping the kernel merged into one VMA (same flags, adjacent), so
    # neither numa_maps nor VMA bounds tell them apart, and DAMON's regions near the seam hold both.
    from autonumad.readers.proc_maps import read_maps

    w = workloads("--hot-mib", "64", "--cold-mib", "192", "--node", "2", "--cpunode", "0", "--merged")
    vmas = [m for m in read_maps(host, w.pid) if m.start <= w.hot[0] < m.end]
    assert vmas and vmas[0].end >= w.cold[1], "the kernel did not merge the two mappings into one VMA"
    hot_pages, cold_pages = 64 * MIB // 4096, 192 * MIB // 4096
    assert w.range_nodes(w.hot).get(2, 0) == hot_pages and w.range_nodes(w.cold).get(2, 0) == cold_pages
    reached = []
    reasons = []

    def hot_on_fast_for_a_while(d) -> bool:
        reasons.extend(a.reason for a in d.actions if a.rule == RULE_PROMOTE)
        if not reached and w.range_nodes(w.hot).get(0, 0) >= 0.99 * hot_pages:
            reached.append(time.monotonic())
        # Passes go on for 20 s after: DAMON's regions keep moving at the seam.
        return bool(reached) and time.monotonic() - reached[0] >= 20

    _run(host, tmp_path, {}, hot_on_fast_for_a_while, 150, [w.pid])
    hot, cold = w.range_nodes(w.hot), w.range_nodes(w.cold)
    print(f"hot mapping pages by node {hot}; cold mapping {cold}")
    for r in reasons:
        print("promote-hot:", r)
    assert hot.get(0, 0) >= 0.99 * hot_pages, "the hot mapping was not promoted"
    assert cold.get(0, 0) + cold.get(1, 0) < 0.05 * cold_pages, "the cold mapping next to it was promoted"
