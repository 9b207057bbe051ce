"""The balancing policy on small inline fake hosts: one rule per case."""

from __future__ import annotations

import pytest

from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host
from autonumad.plan.history import History, OwnedAffinity
from autonumad.plan.policy import decide
from autonumad.observe.snapshot import take_snapshot


def balance_config(**keys):
    """[balance] as the config compiles it (regular expressions compiled once, there), with
    min_cpu_fraction 0 unless given: these fake processes use no CPU between passes."""
    from autonumad.service.config import compile_config

    return compile_config({"balance": {"min_cpu_fraction": 0,
                                       **{k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()}}}).balance


GiB = 2**30
MiB = 2**20
P = 4096
N0 = (0, 1)
N1 = (2, 3)
BASE = 0x7F0000000000


def two_node(procs, numa_balancing="0", free=(6 * GiB, 6 * GiB), total=8 * GiB) -> HostSpec:
    knobs = dict(HostSpec(nodes=()).knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = numa_balancing
    return HostSpec(nodes=(NodeSpec(N0, total, free[0], (10, 21)), NodeSpec(N1, total, free[1], (21, 10))),
                    processes=tuple(procs), knobs=knobs)


def proc(pid=100, comm="app", cpus=None, run_cpu=0, pages=None, policy="default", threads=2, cgroup="/user.slice",
         mems=None, huge=False):
    pages = pages if pages is not None else {1: (256 * MiB) // P}
    return ProcessSpec(pid, comm, tuple(ThreadSpec(pid + i, run_cpu) for i in range(threads)),
                       vmas=(VmaSpec(BASE, pages, policy=policy,
                                     page_size_bytes=2 * MiB if huge else P, huge=huge),),
                       cpus_allowed=cpus, mems_allowed=mems, cgroup=cgroup)


def run(tmp_path, spec, cfg=balance_config(), history=None, now=1000.0):
    host = build_host(tmp_path, spec)
    snap = take_snapshot(host)
    h = history or History()
    h.observe(snap, now)
    return decide(snap, h, cfg, now), host, snap


CASES = [
    # (id, process, config, expected rule, expected action kinds)
    ("pinned-remote-memory-follows-task", proc(cpus=N0, run_cpu=0), balance_config(),
     "memory-follows-task", ["migrate"]),
    ("pinned-already-local", proc(cpus=N0, run_cpu=0, pages={0: 1000, 1: 50}), balance_config(),
     "already-local", []),
    ("unpinned-task-follows-memory", proc(run_cpu=2, pages={0: 60000, 1: 100}), balance_config(),
     "task-follows-memory", ["set_affinity"]),
    ("bind-policy-left-alone", proc(cpus=N0, policy="bind:1"), balance_config(),
     "explicit-memory-policy", []),
    ("interleave-left-alone", proc(run_cpu=2, pages={0: 500, 1: 500}, policy="interleave:0-1"),
     balance_config(), "explicit-memory-policy", []),
    ("excluded-comm", proc(comm="backup-agent", cpus=N0), balance_config(exclude_comm=("^backup",)),
     "excluded-comm", []),
    ("excluded-cgroup", proc(cpus=N0, cgroup="/system.slice/db.service"),
     balance_config(exclude_cgroup=("/system.slice/db.service",)), "excluded-cgroup", []),
    ("cgroup-prefix-is-path-aware", proc(cpus=N0, cgroup="/system.slice/dbx.service"),
     balance_config(exclude_cgroup=("/system.slice/db",)), "memory-follows-task", ["migrate"]),
    ("excluded-pid", proc(cpus=N0), balance_config(exclude_pids=(100,)), "excluded-pid", []),
    ("not-included", proc(cpus=N0), balance_config(include_comm=("^postgres$",)), "not-included", []),
    ("home-not-in-mems-allowed", proc(cpus=N0, mems=(1,)), balance_config(), "home-not-allowed", []),
    ("too-large-for-node", proc(cpus=N0, pages={1: (9 * GiB) // P}), balance_config(), "too-large", []),
    ("owner-pinned-across-nodes", proc(cpus=(1, 2), run_cpu=1), balance_config(), "pinned-by-owner", []),
    ("disabled", proc(cpus=N0), balance_config(enabled=False), "disabled", []),
]


@pytest.mark.parametrize("process,cfg,rule,kinds", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules(tmp_path, process, cfg, rule, kinds):
    decision, _, _ = run(tmp_path, two_node([process]), cfg)
    v = decision.verdicts[process.pid]
    assert v.rule == rule, v.reason
    assert [a.kind for a in decision.actions] == kinds
    assert v.reason  # every verdict explains itself


def test_migration_targets_home_and_counts_remote_pages(tmp_path):
    decision, _, _ = run(tmp_path, two_node([proc(cpus=N0, pages={0: 100, 1: 3000})]))
    (a,) = decision.actions
    assert a.target_node == 0
    assert a.bytes == 3000 * P
    assert [(v.start, v.pages) for v in a.vmas] == [(BASE, 3000)]
    assert "node 0" in a.reason


def test_task_follows_memory_sets_that_nodes_cpus_and_remembers_original(tmp_path):
    decision, _, _ = run(tmp_path, two_node([proc(run_cpu=2, pages={0: 60000, 1: 100})]))
    (a,) = decision.actions
    assert a.cpus == N0
    assert a.original_cpus == N0 + N1


def test_headroom_limits_the_move(tmp_path):
    # Node 0 has 1 GiB free; 5 % of 8 GiB (410 MiB) must stay free.
    spec = two_node([proc(cpus=N0, pages={1: (2 * GiB) // P})], free=(1 * GiB, 6 * GiB))
    decision, _, _ = run(tmp_path, spec)
    (a,) = decision.actions
    assert a.bytes == 1 * GiB - int(8 * GiB * 0.05)
    assert "headroom" in a.reason


def test_full_target_node_is_left(tmp_path):
    spec = two_node([proc(cpus=N0)], free=(100 * MiB, 6 * GiB))
    decision, _, _ = run(tmp_path, spec)
    assert decision.verdicts[100].rule == "target-full"
    assert decision.actions == ()


def test_huge_pages_are_not_moved(tmp_path):
    decision, _, _ = run(tmp_path, two_node([proc(cpus=N0, pages={1: 64}, huge=True)]))
    assert decision.verdicts[100].rule == "nothing-movable"


def test_cooldown_after_acting(tmp_path):
    h = History()
    decision, host, snap = run(tmp_path, two_node([proc(cpus=N0)]), history=h)
    key = (100, snap.process(100).start_ticks)
    h.record_migration(key, 1000.0, 0)
    later = decide(snap, h, balance_config(cooldown_s=30), 1010.0)
    assert later.verdicts[100].rule == "cooldown"
    much_later = decide(snap, h, balance_config(cooldown_s=30), 1031.0)
    assert much_later.verdicts[100].rule == "memory-follows-task"


def test_a_migration_cut_short_is_continued_next_pass_not_cooled_down(tmp_path):
    # bench-convergence, 512 MiB under load: the pass deadline cut the move at 38 % local and the
    # cool-down then held it for 30 s, so it never converged in 60 s.
    h = History()
    decision, host, snap = run(tmp_path, two_node([proc(cpus=N0)]), history=h)
    key = (100, snap.process(100).start_ticks)
    h.record_migration(key, 1000.0, 0, complete=False)
    later = decide(snap, h, balance_config(cooldown_s=30), 1010.0)
    assert later.verdicts[100].rule == "memory-follows-task"
    h.record_migration(key, 1011.0, 0, complete=True)
    assert decide(snap, h, balance_config(cooldown_s=30), 1020.0).verdicts[100].rule == "cooldown"


def test_a_migration_cut_short_is_finished_past_the_target_fraction(tmp_path):
    # 92 % local is above target_local_fraction (90 %), which is where a move starts; a move the last
    # pass cut short is finished, as an uncut one would have been (bench-convergence counts to 95 %).
    h = History()
    spec = two_node([proc(cpus=N0, pages={0: 9200, 1: 800})])
    decision, host, snap = run(tmp_path, spec, history=h)
    assert decision.verdicts[100].rule == "already-local"
    key = (100, snap.process(100).start_ticks)
    h.record_migration(key, 1000.0, 0, complete=False)
    later = decide(snap, h, balance_config(cooldown_s=30), 1010.0)
    assert later.verdicts[100].rule == "memory-follows-task"
    (a,) = later.verdicts[100].actions
    assert a.target_node == 0 and a.bytes == 800 * P
    # A cut move to another node is not this one.
    h.record_migration(key, 1011.0, 1, complete=False)
    assert decide(snap, h, balance_config(cooldown_s=0), 1020.0).verdicts[100].rule == "already-local"
    # A pass that does not take the move up again ends it.
    h.record_migration(key, 1021.0, 0, complete=False)
    h.end_continuations({key})
    assert h.get(key).continuing_to == 0
    h.end_continuations(set())
    assert h.get(key).continuing_to is None
    h.get(key).backoff_until_s = 0.0  # (the 0 -> 1 -> 0 of this test counted as a ping-pong)
    assert decide(snap, h, balance_config(cooldown_s=0), 1030.0).verdicts[100].rule == "already-local"


def test_pingpong_backs_off(tmp_path):
    h = History()
    _, _, snap = run(tmp_path, two_node([proc(cpus=N0)]), history=h)
    key = (100, snap.process(100).start_ticks)
    h.record_migration(key, 0.0, 0)
    h.record_migration(key, 100.0, 1)
    h.record_migration(key, 200.0, 0)  # back to node 0: ping-pong
    assert h.get(key).pingpongs == 1
    d = decide(snap, h, balance_config(cooldown_s=0), 210.0)
    assert d.verdicts[100].rule == "pingpong-backoff"


def test_confinement_by_observed_running_node(tmp_path):
    # Unpinned, memory spread evenly, threads always seen on node 1 over the
    # last passes: its home is node 1 by where it ran.
    spec = two_node([proc(run_cpu=2, pages={0: 3000, 1: 3000})])
    host = build_host(tmp_path, spec)
    h = History()
    for t in (0.0, 10.0, 20.0):
        snap = take_snapshot(host)
        h.observe(snap, t)
    d = decide(snap, h, balance_config(), 20.0)
    v = d.verdicts[100]
    assert v.rule == "memory-follows-task", v.reason
    assert "where its threads ran" in v.reason
    assert d.actions[0].target_node == 1


def test_kernel_balancing_on_defers_page_moves_until_kernel_stalls(tmp_path):
    spec = two_node([proc(cpus=N0)], numa_balancing="1")
    host = build_host(tmp_path, spec)
    h = History()
    rules = []
    for t in (0.0, 10.0, 20.0, 30.0):
        snap = take_snapshot(host)
        h.observe(snap, t)
        rules.append(decide(snap, h, balance_config(), t).verdicts[100].rule)
    # The kernel made no progress for three passes: the daemon steps in.
    assert rules[:2] == ["kernel-balancing", "kernel-balancing"]
    assert rules[-1] == "memory-follows-task"


def test_undo_affinity_when_memory_moved_elsewhere(tmp_path):
    # We pinned it to node 0 earlier; now its memory is all on node 1.
    spec = two_node([proc(cpus=N0, run_cpu=0, pages={1: 60000})])
    host = build_host(tmp_path, spec)
    snap = take_snapshot(host)
    h = History()
    h.observe(snap, 0.0)
    key = (100, snap.process(100).start_ticks)
    h.record_affinity(key, -100.0, OwnedAffinity(frozenset(N0), frozenset(N0 + N1), 0, "test"))
    d = decide(snap, h, balance_config(), 0.0)
    assert d.verdicts[100].rule == "undo-affinity"
    assert d.actions[0].kind == "restore_affinity"
    assert d.actions[0].cpus == N0 + N1


def test_single_node_host_does_nothing(tmp_path):
    spec = HostSpec(nodes=(NodeSpec((0, 1), 8 * GiB, 4 * GiB, (10,)),), processes=(proc(pages={0: 100}),))
    host = build_host(tmp_path, spec)
    snap = take_snapshot(host)
    d = decide(snap, History(), balance_config(), 0.0)
    assert d.actions == ()
    assert d.verdicts[100].rule == "single-node"


def test_actions_ordered_affinity_first_then_biggest_moves(tmp_path):
    procs = [proc(pid=100, cpus=N0, pages={1: 1000}), proc(pid=200, cpus=N0, pages={1: 5000}),
             proc(pid=300, run_cpu=2, pages={0: 60000})]
    decision, _, _ = run(tmp_path, two_node(procs))
    assert [(a.kind, a.pid) for a in decision.actions] == [("set_affinity", 300), ("migrate", 200), ("migrate", 100)]


def test_idle_unpinned_process_gets_no_task_move_but_a_pinned_one_still_gets_its_memory(tmp_path):
    h = History()
    _, _, snap = run(tmp_path, two_node([proc(pid=100, run_cpu=2, pages={0: 60000}),
                                         proc(pid=200, cpus=N0, pages={1: 3000})]), history=h)
    for pid in (100, 200):
        h.get((pid, snap.process(pid).start_ticks)).cpu_cores = 0.01
    d = decide(snap, h, balance_config(min_cpu_fraction=0.1), 1000.0)
    assert d.verdicts[100].rule == "idle"
    assert d.verdicts[200].rule == "memory-follows-task"
    h.get((100, snap.process(100).start_ticks)).cpu_cores = 0.5
    assert decide(snap, h, balance_config(min_cpu_fraction=0.1), 1000.0).verdicts[100].rule == \
        "task-follows-memory"


def test_owner_repin_ends_cooldown(tmp_path):
    # Acted on while pinned to node 1; its owner re-pins it to node 0 within the cool-down.
    spec = two_node([proc(cpus=N1, run_cpu=2, pages={0: 3000})])
    host = build_host(tmp_path, spec)
    h = History()
    snap = take_snapshot(host)
    h.observe(snap, 0.0)
    key = (100, snap.process(100).start_ticks)
    h.record_migration(key, 0.0, 1)
    assert decide(snap, h, balance_config(), 5.0).verdicts[100].rule == "cooldown"
    from autonumad.sim.fakehost import FakeHost

    for tid in host.tids(100):
        FakeHost.set_thread_affinity(host, tid, N0)
    snap2 = take_snapshot(host)
    h.observe(snap2, 6.0)
    v = decide(snap2, h, balance_config(), 6.0).verdicts[100]
    assert v.rule != "cooldown"


def test_shared_file_pages_are_not_moved(tmp_path):
    from autonumad.readers.numa_maps import parse_numa_maps
    from autonumad.plan.policy import VmaMoves

    nm = parse_numa_maps("7f0000000000 default file=/usr/lib/libc.so.6 mapped=100 mapmax=40 N1=100 kernelpagesize_kB=4\n"
                         "7f1000000000 default anon=50 dirty=50 N1=50 kernelpagesize_kB=4\n")
    assert [(m.start, m.pages) for m in VmaMoves(nm, 0)] == [(0x7f1000000000, 50)]


def test_a_busy_process_found_off_its_memory_after_being_measured_beside_it_gets_its_task_moved(tmp_path):
    """The arrangement of check 5b in tests/hardware/test_hw_systemd.py, on the rules alone.

    Seen on node 1 beside its memory for two passes (pinned there by its
    owner), then unpinned and running on node 0: not confined (its passes
    name both nodes), measured, busy, its memory on node 1. Task follows
    memory. (A process seen only on node 0 is confined there by observation
    and its memory moves instead: test_confinement_by_observed_running_node.)
    """
    def host(name: str, cpus, cpu: int, ticks: int):
        p = ProcessSpec(100, "app", (ThreadSpec(100, cpu, ticks),), vmas=(VmaSpec(BASE, {1: 64 * MiB // P}),),
                        cpus_allowed=cpus)
        return build_host(tmp_path / name, two_node([p]))

    cfg = balance_config(min_cpu_fraction=0.1)
    h = History()
    # A busy thread: 100 ticks a second (USER_HZ) between passes 1 s apart.
    passes = [("a", N1, 2, 1000), ("b", N1, 2, 1100), ("c", None, 0, 1200)]
    for t, (name, cpus, cpu, ticks) in enumerate(passes):
        snap = take_snapshot(host(name, cpus, cpu, ticks))
        h.observe(snap, float(t))
        d = decide(snap, h, cfg, float(t))
    v = d.verdicts[100]
    assert v.rule == "task-follows-memory", v.reason
    (a,) = d.actions
    assert a.kind == "set_affinity" and a.cpus == N1 and a.original_cpus == N0 + N1


def test_task_follows_memory_reason_when_threads_span_nodes(tmp_path):
    """Threads on nodes 0 and 1, memory on node 0: the threads move to node 0, and the reason names
    what that spares (the memory split towards node 1), not "copying 0 MiB" (the reason said that
    while the memory on node 0 counted as already where the process runs)."""
    spec = proc(run_cpu=0, pages={0: 60000, 1: 100})
    spec = ProcessSpec(spec.pid, spec.comm, (ThreadSpec(100, 0), ThreadSpec(101, 2)), vmas=spec.vmas,
                       cgroup=spec.cgroup)
    d, _, _ = run(tmp_path, two_node([spec]))
    v = d.verdicts[100]
    assert v.rule == "task-follows-memory", v
    assert "copying 0 MiB" not in v.reason and "node(s) 0,1" in v.reason, v.reason
    assert "instead of its memory being split towards its thread(s) on node(s) 1" in v.reason, v.reason
