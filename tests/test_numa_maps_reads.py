"""numa_maps is read only when cheap signals say a process's placement may
have changed (observe/snapshot.py SnapshotCache.reusable; issue 14, the
intrusion part): each read walks the process's page tables under its
mmap_lock. Reads are counted through the Host, so a read that should have
been skipped, or a skip that should have been a read, fails here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autonumad.service.config import Config
from autonumad.service.daemon import Daemon
from autonumad.sim.fakehost import (STAT_PROCESSOR, FakeHost, HostSpec, NodeSpec, ProcessSpec, ThreadSpec,
                                    VmaSpec, _join_stat, _set_status_field, _split_stat, build_host)
from autonumad.observe.snapshot import RESIDENT_CHANGE_FRACTION, ScanLimits, SnapshotCache, take_snapshot

GiB = 2**30
MiB = 2**20
BASE = 0x7F0000000000
PAGES = 256 * MiB // 4096
REFRESH_S = 60.0
LIMITS = ScanLimits(min_rss_bytes=32 * MiB, numa_maps_refresh_s=REFRESH_S)


class CountingHost(FakeHost):
    """A FakeHost that counts numa_maps reads per pid."""

    def __init__(self, root):
        super().__init__(root)
        self.numa_maps_reads: dict[int, int] = {}

    def read_proc_text(self, pid: int, name: str) -> str:
        if name == "numa_maps":
            self.numa_maps_reads[pid] = self.numa_maps_reads.get(pid, 0) + 1
        return super().read_proc_text(pid, name)


def local(pid: int, node: int = 0, cpus=(0, 1)) -> ProcessSpec:
    """A process whose threads run on `node` with every page there: settled."""
    return ProcessSpec(pid, f"p{pid}", (ThreadSpec(pid, cpus[0], 10),), cpus_allowed=cpus,
                       vmas=(VmaSpec(BASE, {node: PAGES}),))


def misplaced(pid: int) -> ProcessSpec:
    return ProcessSpec(pid, f"p{pid}", (ThreadSpec(pid, 0, 10),), cpus_allowed=(0, 1),
                       vmas=(VmaSpec(BASE, {1: PAGES}),))


def counting_host(root: Path, *procs: ProcessSpec) -> CountingHost:
    nodes = (NodeSpec((0, 1), 8 * GiB, 6 * GiB, (10, 21)), NodeSpec((2, 3), 8 * GiB, 6 * GiB, (21, 10)))
    knobs = {**HostSpec(nodes=()).knobs, "/proc/sys/kernel/numa_balancing": "0"}
    build_host(root, HostSpec(nodes=nodes, processes=procs, knobs=knobs))
    return CountingHost(root)


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def snap(host, cache, clock, limits=LIMITS):
    before = dict(host.numa_maps_reads)
    s = take_snapshot(host, limits, clock=clock, cache=cache)
    return s, {pid: n - before.get(pid, 0) for pid, n in host.numa_maps_reads.items() if n != before.get(pid, 0)}


def settled_cache(host, clock):
    """A cache after one read of every candidate, all of them settled."""
    cache = SnapshotCache()
    first, reads = snap(host, cache, clock)
    assert reads == {p.pid: 1 for p in first.processes}
    cache.settle((p.pid, p.start_ticks) for p in first.processes)
    return cache, first


# --------------------------------------------------------------------------
# The cache, pass by pass

def test_settled_process_is_not_read_again(tmp_path):
    host, clock = counting_host(tmp_path, local(10), local(20, 1, (2, 3))), Clock()
    cache, first = settled_cache(host, clock)
    for _ in range(5):
        clock.now_s += 10
        s, reads = snap(host, cache, clock)
        assert reads == {} and cache.reused == 2
    # The reused view is the one read, and says how old it is.
    assert s.process(10).numa_maps is first.process(10).numa_maps
    assert s.process(10).pages_by_node == first.process(10).pages_by_node
    assert s.process(10).numa_maps_age_s == pytest.approx(50.0)
    assert first.process(10).numa_maps_age_s == 0.0


def test_unsettled_process_is_read_every_pass(tmp_path):
    host, clock = counting_host(tmp_path, local(10), local(20, 1, (2, 3))), Clock()
    cache = SnapshotCache()
    snap(host, cache, clock)
    cache.settle({(10, 100)})  # only pid 10's verdict was a settled one
    _, reads = snap(host, cache, clock)
    assert reads == {20: 1}


def set_rss(host, pid: int, kib: int) -> None:
    _set_status_field(host.path(f"/proc/{pid}/status"), "VmRSS", f"{kib} kB")


def set_processor(host, pid: int, cpu: int) -> None:
    p = host.path(f"/proc/{pid}/task/{pid}/stat")
    f = _split_stat(p.read_text())
    f[STAT_PROCESSOR] = str(cpu)
    p.write_text(_join_stat(f))


def add_vmstat(host, name: str, delta: int) -> None:
    p = host.path("/proc/vmstat")
    lines = [ln for ln in p.read_text().splitlines() if ln]
    counts = dict(ln.split() for ln in lines)
    counts[name] = str(int(counts.get(name, 0)) + delta)
    p.write_text("".join(f"{k} {v}\n" for k, v in counts.items()))


RSS_KIB = PAGES * 4
CHANGES = {
    "resident size grew": lambda h: set_rss(h, 10, int(RSS_KIB * (1 + 2 * RESIDENT_CHANGE_FRACTION))),
    "resident size shrank": lambda h: set_rss(h, 10, int(RSS_KIB * (1 - 2 * RESIDENT_CHANGE_FRACTION))),
    "thread ran on another node": lambda h: set_processor(h, 10, 2),
    "allowed CPUs": lambda h: _set_status_field(h.path("/proc/10/status"), "Cpus_allowed_list", "0"),
    "allowed memory nodes": lambda h: _set_status_field(h.path("/proc/10/status"), "Mems_allowed_list", "0"),
    "kernel NUMA balancing migrated": lambda h: add_vmstat(h, "numa_pages_migrated", 1),
    "reclaim demoted": lambda h: add_vmstat(h, "pgdemote_kswapd", 1),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_a_change_in_each_cheap_signal_forces_a_read(tmp_path, change):
    host, clock = counting_host(tmp_path, local(10)), Clock()
    cache, _ = settled_cache(host, clock)
    CHANGES[change](host)
    _, reads = snap(host, cache, clock)
    assert reads == {10: 1}
    # The fresh read is not settled until a verdict says so again.
    _, reads = snap(host, cache, clock)
    assert reads == {10: 1}


def test_resident_drift_is_measured_from_the_last_read(tmp_path):
    # Small steps, each below the threshold, add up to a read.
    host, clock = counting_host(tmp_path, local(10)), Clock()
    cache, _ = settled_cache(host, clock)
    step_kib = int(RSS_KIB * RESIDENT_CHANGE_FRACTION * 0.6)
    set_rss(host, 10, RSS_KIB + step_kib)
    assert snap(host, cache, clock)[1] == {}
    set_rss(host, 10, RSS_KIB + 2 * step_kib)
    assert snap(host, cache, clock)[1] == {10: 1}


def test_the_refresh_bound_forces_a_read(tmp_path):
    host, clock = counting_host(tmp_path, local(10)), Clock()
    cache, _ = settled_cache(host, clock)
    clock.now_s += REFRESH_S - 1
    assert snap(host, cache, clock)[1] == {}
    clock.now_s += 1
    assert snap(host, cache, clock)[1] == {10: 1}


def test_refresh_zero_reads_every_pass(tmp_path):
    host, clock = counting_host(tmp_path, local(10)), Clock()
    cache, _ = settled_cache(host, clock)
    assert snap(host, cache, clock, replace(LIMITS, numa_maps_refresh_s=0))[1] == {10: 1}


def test_invalidate_forces_a_read(tmp_path):
    host, clock = counting_host(tmp_path, local(10), local(20, 1, (2, 3))), Clock()
    cache, _ = settled_cache(host, clock)
    cache.invalidate((10, 100))
    assert snap(host, cache, clock)[1] == {10: 1}


def test_recycled_pid_is_read(tmp_path):
    host, clock = counting_host(tmp_path, local(10)), Clock()
    cache, _ = settled_cache(host, clock)
    p = host.path("/proc/10/task/10/stat")
    f = _split_stat(p.read_text())
    f[21] = "999"  # starttime: the pid names another process now
    p.write_text(_join_stat(f))
    s, reads = snap(host, cache, clock)
    assert reads == {10: 1} and s.process(10).start_ticks == 999


# --------------------------------------------------------------------------
# The daemon: verdicts settle, actions invalidate

def daemon_on(tmp_path: Path, host, dry_run: bool = False) -> Daemon:
    c = Config()
    c = replace(c, daemon=replace(c.daemon, runtime_dir=str(tmp_path / "run")),
                balance=replace(c.balance, min_rss_bytes=32 * MiB, min_cpu_fraction=0.0, cooldown_s=0.0))
    return Daemon(host, c, dry_run=dry_run, manage_knobs=False)


def test_daemon_reads_a_settled_process_once(tmp_path):
    host = counting_host(tmp_path / "host", local(10), local(20, 1, (2, 3)))
    d = daemon_on(tmp_path, host)
    for _ in range(4):
        report = d.run_pass()
    assert {v.rule for v in report.decision.verdicts.values()} == {"already-local"}
    assert host.numa_maps_reads == {10: 1, 20: 1}
    assert d.snapshot_cache.reused == 2
    assert all(p.numa_maps_age_s > 0 for p in report.snapshot.processes)


def test_metrics_count_reused_reads(tmp_path):
    from autonumad.service.metrics import DaemonMetrics

    host = counting_host(tmp_path / "host", local(10), misplaced(30))
    d = daemon_on(tmp_path, host, dry_run=True)
    d.metrics = DaemonMetrics()

    def value(name):
        return d.metrics.registry.get_sample_value(name)

    d.run_pass()
    assert (value("autonumad_numa_maps_reused"), value("autonumad_numa_maps_oldest_age_seconds")) == (0, 0)
    d.run_pass()
    assert value("autonumad_numa_maps_reused") == 1  # pid 10 settled; pid 30 has an action
    assert value("autonumad_numa_maps_oldest_age_seconds") > 0
    assert value("autonumad_processes_detailed") == 2


def test_daemon_action_forces_a_read_next_pass(tmp_path):
    # pid 30's memory is all on node 1 while it may run only on node 0: the
    # daemon moves it, and the move (which changes numa_maps, not the
    # resident size or any other cheap signal) must be read back next pass.
    host = counting_host(tmp_path / "host", local(10), misplaced(30))
    d = daemon_on(tmp_path, host)
    first = d.run_pass()
    assert [(a.pid, a.kind) for a in first.decision.actions] == [(30, "migrate")]
    assert [o.status for o in first.outcomes] == ["done"]
    assert host.numa_maps_reads == {10: 1, 30: 1}
    second = d.run_pass()
    assert host.numa_maps_reads == {10: 1, 30: 2}
    assert second.snapshot.process(30).pages_by_node == {0: PAGES}
    assert second.decision.verdicts[30].rule == "already-local"
    d.run_pass()  # now settled too
    assert host.numa_maps_reads == {10: 1, 30: 2}


def test_daemon_rereads_a_process_with_an_outcome_whatever_its_status(tmp_path):
    # A dry run moves nothing, yet the process has an outcome and a
    # non-settled verdict: it is read every pass.
    host = counting_host(tmp_path / "host", misplaced(30))
    d = daemon_on(tmp_path, host, dry_run=True)
    for _ in range(3):
        d.run_pass()
    assert host.numa_maps_reads == {30: 3}


def test_an_outcome_unsettles_even_a_settled_verdict(tmp_path):
    host = counting_host(tmp_path / "host", local(10))
    d = daemon_on(tmp_path, host)
    report = d.run_pass()
    from autonumad.model import Action, Outcome
    action = Action("migrate", 10, 100, "p10", "demote-cold", "a tiering move", target_node=0)
    d.snapshot_cache.settle({(10, 100)})
    d._settle(report.snapshot, report.decision, [Outcome(action, "partial", "")])
    d.run_pass()
    assert host.numa_maps_reads == {10: 2}


def test_daemon_with_refresh_zero_reads_every_pass(tmp_path):
    host = counting_host(tmp_path / "host", local(10))
    d = daemon_on(tmp_path, host)
    d.config = replace(d.config, balance=replace(d.config.balance, numa_maps_refresh_s=0.0))
    for _ in range(3):
        d.run_pass()
    assert host.numa_maps_reads == {10: 3}


def test_an_action_is_never_planned_from_a_reused_read(tmp_path):
    # pid 30 is misplaced but excluded: a settled verdict, so its read is
    # reused. A reload lifts the exclusion: the decision to move it must
    # wait for a fresh read (one pass), then act on it.
    host = counting_host(tmp_path / "host", misplaced(30))
    d = daemon_on(tmp_path, host)
    d.config = replace(d.config, balance=replace(d.config.balance, exclude_pids=(30,)))
    assert d.run_pass().decision.verdicts[30].rule == "excluded-pid"
    assert d.run_pass().decision.verdicts[30].rule == "excluded-pid"
    assert host.numa_maps_reads == {30: 1}
    d.config = replace(d.config, balance=replace(d.config.balance, exclude_pids=()))
    waiting = d.run_pass()
    v = waiting.decision.verdicts[30]
    assert (v.rule, v.actions, waiting.outcomes) == ("re-reading", (), [])
    assert "s old" in v.reason and host.numa_maps_reads == {30: 1}
    acting = d.run_pass()
    assert host.numa_maps_reads == {30: 2}
    assert [(o.action.kind, o.status) for o in acting.outcomes] == [("migrate", "done")]
