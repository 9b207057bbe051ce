"""The executor and the fake host's actuators: actions change the tree consistently."""

from __future__ import annotations

import threading

import pytest

from autonumad.act.executor import Executor, TokenBucket, resume_order
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host
from autonumad.plan.history import History
from autonumad.model import Action, VmaMove
from autonumad.plan.policy import decide
from autonumad.readers.nodes import read_topology
from autonumad.readers.numa_maps import read_numa_maps
from autonumad.readers.proc_status import read_status
from autonumad.readers.task_stat import read_thread_stats
from autonumad.observe.snapshot import take_snapshot
from test_policy import balance_config  # one definition, in test_policy.py


GiB = 2**30
MiB = 2**20
P = 4096
BASE = 0x7F0000000000


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


def host_with(tmp_path, pages, cpus=(0, 1), free0=6 * GiB, threads=3):
    knobs = dict(HostSpec(nodes=()).knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = "0"  # the daemon alone balances
    spec = HostSpec(knobs=knobs, nodes=(NodeSpec((0, 1), 8 * GiB, free0, (10, 21)), NodeSpec((2, 3), 8 * GiB, 6 * GiB, (21, 10))),
                    processes=(ProcessSpec(100, "app", tuple(ThreadSpec(100 + i, 2) for i in range(threads)),
                                           vmas=(VmaSpec(BASE, pages),), cpus_allowed=cpus),))
    return build_host(tmp_path, spec)


def migrate_action(n_pages, target=0):
    return Action("migrate", 100, 100, "app", "memory-follows-task", "test", target_node=target,
                  vmas=(VmaMove(BASE, P, n_pages),), bytes=n_pages * P)


def test_migration_rewrites_numa_maps_and_node_free_memory(tmp_path):
    host = host_with(tmp_path, {1: 10000})
    before = read_topology(host)
    ex = Executor(host, TokenBucket(1e12))
    (o,) = ex.run([migrate_action(10000)], deadline_s=1e9)
    assert o.status == "done", o.detail
    assert o.moved_pages == 10000 and o.moved_from == {1: 10000}
    assert read_numa_maps(host, 100).pages_by_node() == {0: 10000}
    after = read_topology(host)
    assert after.node(0).memory_free_bytes == before.node(0).memory_free_bytes - 10000 * P
    assert after.node(1).memory_free_bytes == before.node(1).memory_free_bytes + 10000 * P


def test_full_target_node_fails_with_enomem_per_page(tmp_path):
    host = host_with(tmp_path, {1: 10000}, free0=4000 * P)
    (o,) = Executor(host, TokenBucket(1e12)).run([migrate_action(10000)], deadline_s=1e9)
    assert o.moved_pages == 4000
    # As with move_pages(2), ENOMEM is counted per page for the batch that hit
    # it, and the rest of the range is not attempted.
    assert set(o.failures) == {"ENOMEM"} and 0 < o.failures["ENOMEM"] <= 6000
    assert read_numa_maps(host, 100).pages_by_node() == {0: 4000, 1: 6000}


def test_rate_limit_stops_at_deadline_and_continues_next_pass(tmp_path):
    host = host_with(tmp_path, {1: 65536})  # 256 MiB
    clock = FakeClock()
    bucket = TokenBucket(64 * MiB, clock=clock)  # 64 MiB/s, one second of burst
    ex = Executor(host, bucket, clock=clock, wait=lambda s: clock.advance(s) or False)
    (o,) = ex.run([migrate_action(65536)], deadline_s=0.5)
    assert o.status == "partial"
    # The one-second burst plus what refilled in the half second before the deadline.
    assert 64 * MiB <= o.moved_bytes <= 96 * MiB
    moved = o.moved_bytes
    clock.advance(10.0)
    (o2,) = ex.run([migrate_action(65536 - o.moved_pages)], deadline_s=clock() + 0.5)
    assert o.moved_bytes + o2.moved_bytes <= moved + 96 * MiB
    assert o2.moved_bytes >= 64 * MiB


def test_resume_order_starts_at_the_stop_point_and_ends_with_what_came_before():
    r = [(0, 100, 4), (200, 300, 4), (400, 500, 4)]
    assert resume_order(r, None) == r
    assert resume_order(r, 240) == [(240, 300, 4), (400, 500, 4), (0, 100, 4), (200, 240, 4)]
    assert resume_order(r, 200) == [(200, 300, 4), (400, 500, 4), (0, 100, 4)]
    assert resume_order(r, 150) == [(200, 300, 4), (400, 500, 4), (0, 100, 4)]
    assert resume_order(r, 900) == r


class RecordingMover:
    """Wraps a fake host: each move_pages call's start address, and one fake second per call."""

    def __init__(self, host, clock):
        self.host, self.clock, self.starts = host, clock, []

    def __getattr__(self, name):
        return getattr(self.host, name)

    def move_pages(self, pid, start, *args, **kw):
        self.starts.append(start)
        self.clock.advance(1.0)
        return self.host.move_pages(pid, start, *args, **kw)


def test_a_cut_move_resumes_where_it_stopped_and_only_for_the_same_process_and_node(tmp_path):
    clock = FakeClock()
    host = RecordingMover(host_with(tmp_path, {1: 65536}), clock)  # 256 MiB, 16 MiB a call
    ex = Executor(host, TokenBucket(1e12, clock=clock), clock=clock)
    (o,) = ex.run([migrate_action(65536)], deadline_s=2.5)  # three calls
    assert o.status == "partial" and o.cut == "deadline" and o.moved_bytes == 48 * MiB
    assert host.starts == [BASE, BASE + 16 * MiB, BASE + 32 * MiB]
    host.starts.clear()
    (o,) = ex.run([migrate_action(65536 - 3 * 4096)], deadline_s=clock() + 0.5)
    assert host.starts == [BASE + 48 * MiB]
    # A move to another node starts from the beginning, and a run without the process forgets the point.
    host.starts.clear()
    ex.run([migrate_action(100, target=1)], deadline_s=clock() + 0.5)
    assert host.starts == [BASE]
    ex.run([], deadline_s=clock() + 0.5)
    host.starts.clear()
    ex.run([migrate_action(100)], deadline_s=clock() + 0.5)
    assert host.starts == [BASE]


def test_a_resumed_move_examines_what_came_before_its_stop_point_last(tmp_path):
    clock = FakeClock()
    host = RecordingMover(host_with(tmp_path, {1: 8192}), clock)  # 32 MiB
    ex = Executor(host, TokenBucket(1e12, clock=clock), clock=clock)
    (o,) = ex.run([migrate_action(8192)], deadline_s=0.5)
    assert o.cut == "deadline" and o.moved_bytes == 16 * MiB
    host.starts.clear()
    (o,) = ex.run([migrate_action(8192)], deadline_s=clock() + 10)
    assert o.status == "done" and o.moved_bytes == 16 * MiB
    assert host.starts[0] == BASE + 16 * MiB and host.starts[-1] == BASE  # wrapped round to the start
    assert read_numa_maps(host.host, 100).pages_by_node() == {0: 8192}


def test_stop_event_ends_the_move_between_batches(tmp_path):
    host = host_with(tmp_path, {1: 65536})
    stop = threading.Event()
    stop.set()
    (o,) = Executor(host, TokenBucket(1e12), stop).run([migrate_action(65536)], deadline_s=1e9)
    assert o.status == "skipped"
    assert read_numa_maps(host, 100).pages_by_node() == {1: 65536}


def test_then_runs_the_actions_it_names_after_the_plan_in_the_same_budget(tmp_path):
    # The daemon passes Plan.top_up: spare demotions named from the outcomes, run in the same pass.
    host = host_with(tmp_path, {1: 10000})
    seen = []

    def then(outcomes):
        seen.append([o.moved_pages for o in outcomes])
        return [migrate_action(10000 - outcomes[0].moved_pages)]

    outcomes = Executor(host, TokenBucket(1e12)).run([migrate_action(4000)], 1e9, 6000 * P, then=then)
    assert seen == [[4000]]
    assert [o.moved_pages for o in outcomes] == [4000, 2000]  # the rest of the budget, not a new one
    assert outcomes[1].status == "partial"
    # Dry run: nothing moved, nothing to make good.
    (o,) = Executor(host, TokenBucket(1e12), dry_run=True).run([migrate_action(10)], 1e9, then=then)
    assert o.status == "dry-run" and len(seen) == 1


def test_dry_run_changes_nothing(tmp_path):
    host = host_with(tmp_path, {1: 1000})
    (o,) = Executor(host, TokenBucket(1e12), dry_run=True).run([migrate_action(1000)], deadline_s=1e9)
    assert o.status == "dry-run"
    assert read_numa_maps(host, 100).pages_by_node() == {1: 1000}


def test_vanished_process_is_an_outcome_not_an_error(tmp_path):
    host = host_with(tmp_path, {1: 1000})
    import shutil

    shutil.rmtree(host.path("/proc/100"))
    outcomes = Executor(host, TokenBucket(1e12)).run(
        [migrate_action(1000), Action("set_affinity", 100, 100, "app", "task-follows-memory", "t", 0, cpus=(0, 1))],
        deadline_s=1e9)
    assert [o.status for o in outcomes] == ["gone", "gone"]


def test_affinity_reaches_every_thread_and_moves_them(tmp_path):
    host = host_with(tmp_path, {0: 1000}, cpus=(0, 1, 2, 3), threads=4)
    a = Action("set_affinity", 100, 100, "app", "task-follows-memory", "t", 0, cpus=(0, 1))
    (o,) = Executor(host, TokenBucket(1e12)).run([a], deadline_s=1e9)
    assert o.status == "done" and o.threads_set == 4
    for tid in host.tids(100):
        assert host.thread_affinity(tid) == frozenset({0, 1})
    assert {t.processor for t in read_thread_stats(host, 100).values()} <= {0, 1}
    assert read_status(host, 100).cpus_allowed == (0, 1)


@pytest.mark.parametrize("pages,expected_local", [({1: 30000}, 1.0), ({0: 100, 1: 30000}, 1.0)],
                         ids=["all-remote", "mostly-remote"])
def test_policy_and_executor_converge_on_a_fake_host(tmp_path, pages, expected_local):
    host = host_with(tmp_path, pages)
    ex = Executor(host, TokenBucket(1e12))
    h = History()
    for t in (0.0, 100.0):
        snap = take_snapshot(host)
        h.observe(snap, t)
        ex.run(decide(snap, h, balance_config(), t).actions, deadline_s=1e9)
    snap = take_snapshot(host)
    assert snap.process(100).local_fraction((0,)) == expected_local
