"""The CPU capacity ledger and the process-to-node assignment (placement.py),
alone and through the policy, on synthetic two-node hosts with two CPUs per
node: the autonuma-benchmark shapes (numa01: two processes competing for the
node holding both memories; numa02: more busy threads than a node has CPUs;
numa02_SMT: threads that fit)."""

from __future__ import annotations

import random

import pytest

from autonumad.observe.snapshot import take_snapshot
from autonumad.plan import placement
from autonumad.plan.history import History
from autonumad.plan.placement import Candidate, CpuLedger, Demand, assign, process_demand
from autonumad.plan.policy import decide
from autonumad.service.config import compile_config
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

MiB = 2**20
GiB = 2**30
P = 4096
BASE = 0x7F0000000000
UPTIME_TICKS = 100000  # the fake /proc/stat's per-CPU tick total
BUSY = 99000  # utime of a thread busy since it started (fake starttime 100 ticks)


def host2x2(procs, cpus_per_node=2) -> HostSpec:
    knobs = dict(HostSpec(nodes=()).knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = "0"
    n0 = tuple(range(cpus_per_node))
    n1 = tuple(range(cpus_per_node, 2 * cpus_per_node))
    return HostSpec(nodes=(NodeSpec(n0, 8 * GiB, 6 * GiB, (10, 21)), NodeSpec(n1, 8 * GiB, 6 * GiB, (21, 10))),
                    processes=tuple(procs), knobs=knobs)


def proc(pid, run_cpus, pages, busy=True, cpus=None):
    return ProcessSpec(pid, f"wl{pid}",
                       tuple(ThreadSpec(pid + i, c, utime_ticks=BUSY if busy else 0) for i, c in enumerate(run_cpus)),
                       vmas=(VmaSpec(BASE, pages),), cpus_allowed=cpus)


def balance(**keys):
    """[balance] as the config compiles it; min_cpu_fraction 0: the fake processes' CPU use is set per test."""
    return compile_config({"balance": {"min_cpu_fraction": 0, **keys}}).balance


def run(tmp_path, spec, cfg=None):
    cfg = cfg if cfg is not None else balance()
    host = build_host(tmp_path, spec)
    snap = take_snapshot(host)
    h = History()
    h.observe(snap, 1000.0)
    return decide(snap, h, cfg, 1000.0), snap


def busy_threads_per_node_after(decision, snap, cpus_per_node=2) -> dict[int, int]:
    """Busy threads on each node once the decision's affinities are applied
    (a thread not re-pinned stays on the node it last ran on)."""
    pinned = {a.pid: a.target_node for a in decision.actions if a.kind == "set_affinity"}
    out = {0: 0, 1: 0}
    for p in snap.processes:
        for t in p.threads.values():
            node = pinned.get(p.pid, t.processor // cpus_per_node)
            out[node] += 1
    return out


SIXTY_FOUR = (64 * MiB) // P


def test_numa01_two_processes_split_across_nodes_and_one_memory_follows(tmp_path):
    # Both memories on node 0, each process's two busy threads spread over both nodes.
    d, snap = run(tmp_path, host2x2([proc(100, (0, 2), {0: SIXTY_FOUR}), proc(200, (1, 3), {0: SIXTY_FOUR})]))
    aff = {a.pid: a.target_node for a in d.actions if a.kind == "set_affinity"}
    assert sorted(aff.values()) == [0, 1], [v.reason for v in d.verdicts.values()]
    moved = [a for a in d.actions if a.kind == "migrate"]
    assert len(moved) == 1 and moved[0].target_node == 1 and aff[moved[0].pid] == 1
    assert moved[0].bytes == 64 * MiB
    assert max(busy_threads_per_node_after(d, snap).values()) <= 2  # nobody crammed
    assert d.ledger.booked_cores == {0: 2.0, 1: 2.0}
    assert len(d.ledger.log) == 2


def test_numa02_more_busy_threads_than_a_node_has_cpus_stay_spread(tmp_path):
    d, snap = run(tmp_path, host2x2([proc(100, (0, 1, 2, 3), {0: SIXTY_FOUR})]))
    v = d.verdicts[100]
    assert v.rule == "spread-by-capacity", v.reason
    assert d.actions == ()
    assert "4 busy thread(s) need 4.0 CPU" in v.reason


def test_numa02_smt_threads_that_fit_go_to_their_memory(tmp_path):
    d, snap = run(tmp_path, host2x2([proc(100, (1, 2), {0: SIXTY_FOUR})]))
    assert [(a.kind, a.target_node) for a in d.actions] == [("set_affinity", 0)]
    assert d.verdicts[100].rule == "task-follows-memory"


def test_a_node_taken_by_a_pinned_busy_process_is_not_offered(tmp_path):
    # Node 1's CPUs are held by an owner-pinned busy process: no numa01
    # process may go there. One takes node 0 (with its memory, which is
    # there); the other has room on neither node and stays spread. Nothing
    # is confined beyond a node's CPUs.
    procs = [proc(100, (0, 2), {0: SIXTY_FOUR}), proc(200, (1, 3), {0: SIXTY_FOUR}),
             proc(300, (2, 3), {1: SIXTY_FOUR}, cpus=(2, 3))]
    d, snap = run(tmp_path, host2x2(procs))
    assert [(a.kind, a.target_node) for a in d.actions] == [("set_affinity", 0)], \
        [v.reason for v in d.verdicts.values()]
    (gone,) = {a.pid for a in d.actions}
    (left,) = {100, 200} - {gone}
    assert d.verdicts[left].rule == "spread-by-capacity", d.verdicts[left].reason
    assert d.ledger.confined_cores == {0: 2.0, 1: 2.0}
    assert "no node has that free" in d.verdicts[left].reason


def test_idle_threads_do_not_book_cpu_and_fit_anywhere(tmp_path):
    d, _ = run(tmp_path, host2x2([proc(100, (0, 1, 2, 3), {1: SIXTY_FOUR}, busy=False)]))
    assert [(a.kind, a.target_node) for a in d.actions] == [("set_affinity", 1)]


def test_first_sight_uses_lifetime_use_and_a_young_thread_counts_busy():
    cpu_to_node = {0: 0, 1: 0, 2: 1, 3: 1}

    class T:
        def __init__(self, cpu, ticks, start):
            self.processor, self.state, self.utime_ticks, self.stime_ticks, self.starttime_ticks = \
                cpu, "S", ticks, 0, start

    d = process_demand({1: T(0, 10, 0), 2: T(2, 900, 0)}, None, cpu_to_node, uptime_ticks=1000)
    assert d.measured and d.cores_by_node == {0: 0.01, 1: 1.0} and d.busy_threads == 1
    young = process_demand({1: T(0, 0, 950)}, None, cpu_to_node, uptime_ticks=1000)
    assert young.cores_by_node == {0: 1.0}
    assert not young.measured  # a process younger than SETTLED_TICKS waits a pass
    assert not process_demand({1: T(0, 10, 0), 2: T(0, 0, 0)}, {1: 0.9}, cpu_to_node, 1000).measured  # new thread
    unknown = process_demand({1: T(0, 0, 0)}, None, cpu_to_node)
    assert not unknown.measured and unknown.cores_by_node == {0: 1.0}
    # between passes: the measured use wins over the lifetime figure
    assert process_demand({1: T(0, 999, 0)}, {1: 0.1}, cpu_to_node, 1000).cores_by_node == {0: 0.1}


def test_an_unmeasured_process_stays():
    led = CpuLedger.build({0: (0, 1), 1: (2, 3)}, {1: Demand({1: 1.0}, measured=False)})
    (c,) = assign(led, [Candidate(1, {0: 64 * MiB}, (0, 1))]).values()
    assert c.node is placement.STAY and "measured over a pass" in c.reason


def test_background_counts_whole_cpus_only_when_mostly_busy_and_persistent():
    nodes = {0: (0, 1), 1: (2, 3)}
    # node 0: 1.96 busy, 1.0 explained by scanned processes: 0.96 left;
    # node 1: 0.9 (the daemon's own pass under TCG, say)
    one = placement.unexplained_cores(nodes, {0: 0.98, 1: 0.98, 2: 0.9, 3: 0.0}, {0: 1.0})
    assert one == pytest.approx({0: 0.96, 1: 0.9})
    assert CpuLedger.build(nodes, {}, [one]).background_cores == {0: 1.0, 1: 0.0}
    # Only what persisted counts: one quiet pass among the last three clears it.
    quiet = placement.unexplained_cores(nodes, {0: 0.5, 1: 0.5}, {0: 1.0})
    assert CpuLedger.build(nodes, {}, [one, quiet, one]).background_cores == {0: 0.0, 1: 0.0}
    assert CpuLedger.build(nodes, {}, [one, one, one]).background_cores == {0: 1.0, 1: 0.0}


def test_a_thread_that_hopped_nodes_is_not_background():
    # A busy thread ran on node 1 most of the interval but last on node 0:
    # its use is charged to node 0, node 1's busy time is unexplained there,
    # but the host as a whole explains all of it.
    nodes = {0: (0, 1), 1: (2, 3)}
    un = placement.unexplained_cores(nodes, {0: 1.0, 2: 1.0}, {0: 2.0})
    assert un == {0: 0.0, 1: 0.0}
    # A real unexplained CPU beside it still shows, up to the host's total.
    un = placement.unexplained_cores(nodes, {0: 1.0, 2: 1.0, 3: 1.0}, {0: 2.0})
    assert un == {0: 0.0, 1: 1.0}


def _random_case(rng, n_procs):
    cap = {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
    demands, cands = {}, []
    for pid in range(1, n_procs + 1):
        threads = rng.randint(1, 5)
        by_node: dict[int, float] = {}
        for _ in range(threads):
            n = rng.randint(0, 1)
            by_node[n] = by_node.get(n, 0.0) + rng.choice((0.2, 1.0))
        demands[pid] = Demand(by_node, True)
        cands.append(Candidate(pid, {0: rng.randint(0, 9) * MiB, 1: rng.randint(0, 9) * MiB}, (0, 1)))
    for pid in range(n_procs + 1, n_procs + 1 + rng.randint(0, 2)):  # pinned by their owners: not candidates
        n = rng.randint(0, 1)
        demands[pid] = Demand({n: float(rng.randint(1, 3))}, True, confined_to=n)
    return cap, demands, cands


def _least_cramming(cap, confined, movable):
    """Busy threads beyond CPUs once the scheduler has put every movable one on any free CPU."""
    over = sum(max(0.0, confined[n] - len(c)) for n, c in cap.items())
    room = sum(max(0.0, len(c) - confined[n]) for n, c in cap.items())
    return over + max(0.0, movable - room)


@pytest.mark.parametrize("n_procs", [2, 5, 12])  # 12: beyond the exact search, greedy
def test_no_move_ever_confines_a_node_beyond_its_capacity_or_adds_cramming(n_procs):
    rng = random.Random(n_procs)
    for _ in range(60):
        cap, demands, cands = _random_case(rng, n_procs)
        led = CpuLedger.build(cap, demands)
        before = _least_cramming(cap, led.confined_cores,
                                 sum(d.total_cores for d in demands.values() if d.confined_to is None))
        choices = assign(led, cands)
        confined, movable = {0: 0.0, 1: 0.0}, 0.0
        for pid, d in demands.items():
            ch = choices.get(pid)
            if d.confined_to is not None:
                confined[d.confined_to] += d.total_cores
            elif ch.node is placement.STAY:
                movable += d.total_cores
            else:
                confined[ch.node] += d.total_cores
        targets = {ch.node for ch in choices.values() if ch.node is not placement.STAY}
        for n in targets:
            assert confined[n] <= len(cap[n]) + placement.FIT_SLACK_CORES, (demands, choices)
        after = _least_cramming(cap, confined, movable)
        assert after <= before + placement.FIT_SLACK_CORES * len(targets) + 1e-9, (demands, choices)
        assert confined == pytest.approx(led.confined_cores)


def test_exact_search_finds_the_exchange_that_greedy_cannot():
    # numa01 with uneven memory, each process with one busy thread per node.
    # Greedy (largest first, each taking its best option that fits) sends
    # the big one to node 0 (55 MiB to copy there) and the small one to
    # node 1 (10 MiB): 65 MiB. The exact search finds the cheaper exchange:
    # the big one to node 1, the small one to node 0 where its memory is
    # (60 MiB moved).
    cap = {0: (0, 1), 1: (2, 3)}
    demands = {1: Demand({0: 1.0, 1: 1.0}, True), 2: Demand({0: 1.0, 1: 1.0}, True)}
    cands = [Candidate(1, {0: 60 * MiB, 1: 55 * MiB}, (0, 1)), Candidate(2, {0: 10 * MiB}, (0, 1))]
    greedy = placement._greedy(CpuLedger.build(cap, demands), cands, [[None, 0, 1], [None, 0, 1]])
    assert greedy == [0, 1]
    choices = assign(CpuLedger.build(cap, demands), cands)
    assert (choices[1].node, choices[2].node) == (1, 0)
    assert choices[1].bytes_to_move + choices[2].bytes_to_move == 60 * MiB


def test_explain_shows_the_ledger_with_the_other_process_booked(tmp_path, capsys):
    import json

    from autonumad.cli import main

    spec = host2x2([proc(100, (0, 2), {0: SIXTY_FOUR}), proc(200, (1, 3), {0: SIXTY_FOUR})])
    build_host(tmp_path / "root", spec)
    assert main(["explain", "200", "--root", str(tmp_path / "root"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ledger = doc["cpu_ledger"]
    assert set(ledger["demands"]) == {"100", "200"}  # the other process is booked too
    assert {n: v["booked_cores"] for n, v in ledger["nodes"].items()} == {"0": 2.0, "1": 2.0}
    assert len(ledger["bookings"]) == 2 and doc["actions"][0]["kind"] == "set_affinity"
    assert main(["explain", "200", "--root", str(tmp_path / "root")]) == 0
    text = capsys.readouterr().out
    assert "cpu ledger: node 0: 2.0 of 2 CPUs booked" in text and "booked this pass: pid" in text


def test_our_affinity_on_an_overbooked_node_is_undone_even_in_cooldown(tmp_path):
    # autonumad pinned it to node 0 while it had one thread; it then started
    # three more, which inherited the pin: four busy threads on two CPUs.
    from autonumad.plan.history import OwnedAffinity

    spec = host2x2([proc(100, (0, 1, 0, 1), {0: SIXTY_FOUR}, cpus=(0, 1))])
    host = build_host(tmp_path, spec)
    snap = take_snapshot(host)
    h = History()
    key = (100, snap.process(100).start_ticks)
    h.record_affinity(key, 990.0, OwnedAffinity(frozenset({0, 1}), frozenset({0, 1, 2, 3}), 0, "placed"))
    h.observe(snap, 1000.0)
    d = decide(snap, h, balance(cooldown_s=30.0), 1000.0)
    v = d.verdicts[100]
    assert v.rule == "undo-crammed", v.reason
    assert [(a.kind, a.cpus) for a in d.actions] == [("restore_affinity", (0, 1, 2, 3))]
    # once restored, it is placed again at once: no cool-down after an undo
    h.record_affinity(key, 1000.0, None)
    h.get(key).cpus_allowed = (0, 1, 2, 3)
    host.set_thread_affinity(100, (0, 1, 2, 3))
    snap2 = take_snapshot(host)
    h.observe(snap2, 1002.0)
    assert decide(snap2, h, balance(cooldown_s=30.0), 1002.0).verdicts[100].rule != "cooldown"
