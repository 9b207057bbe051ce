"""The snapshot's cheap first stage (statm) and the numa_maps cache carried
between passes: the snapshot must be the same with or without them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from autonumad.service.config import Config
from autonumad.service.daemon import Daemon
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host
from autonumad.model import VmaMove
from autonumad.readers.numa_maps import parse_numa_maps
from autonumad.observe.snapshot import ScanLimits, SnapshotCache, take_snapshot

GiB = 2**30
MiB = 2**20
BASE = 0x7F0000000000
BIG = 64 * MiB // 4096  # pages: above the 32 MiB threshold used below
LIMITS = ScanLimits(min_rss_bytes=32 * MiB)


def proc(pid: int, pages: int, vmas: int = 4, start_ticks: int = 100, **kw) -> ProcessSpec:
    per = pages // vmas
    return ProcessSpec(pid, f"p{pid}", (ThreadSpec(pid, 0, 10),),
                       vmas=tuple(VmaSpec(BASE + i * 2**30, {0: per // 3, 1: per - per // 3}) for i in range(vmas)),
                       **kw)


def host_of(root: Path, *procs: ProcessSpec):
    nodes = (NodeSpec((0, 1), 8 * GiB, 6 * GiB, (10, 21)), NodeSpec((2, 3), 8 * GiB, 6 * GiB, (21, 10)))
    # Kernel NUMA balancing off, so the policy plans page moves at once.
    knobs = {**HostSpec(nodes=()).knobs, "/proc/sys/kernel/numa_balancing": "0"}
    return build_host(root, HostSpec(nodes=nodes, processes=procs, knobs=knobs))


def set_start_ticks(host, pid: int, ticks: int) -> None:
    """Rewrite the leader's starttime (stat field 22): the pid now names another process."""
    p = host.path(f"/proc/{pid}/task/{pid}/stat")
    head, _, tail = p.read_text().rpartition(")")
    fields = tail.split()
    fields[22 - 3] = str(ticks)
    p.write_text(f"{head}) {' '.join(fields)}\n")


def edit_line(host, pid: int, index: int, old: str, new: str) -> None:
    p = host.path(f"/proc/{pid}/numa_maps")
    lines = p.read_text().split("\n")
    assert old in lines[index]
    lines[index] = lines[index].replace(old, new)
    p.write_text("\n".join(lines))


def views(snap):
    return {p.pid: (p.numa_maps, dict(p.pages_by_node), p.policy, p.start_ticks) for p in snap.processes}


# --------------------------------------------------------------------------
# The numa_maps cache

def test_cache_reuses_unchanged_and_reparses_changed(tmp_path):
    host = host_of(tmp_path, proc(10, BIG), proc(20, BIG), proc(30, BIG))
    cache = SnapshotCache()
    first = take_snapshot(host, LIMITS, cache=cache)
    assert (cache.new, cache.unchanged, cache.changed, len(cache)) == (3, 0, 0, 3)

    second = take_snapshot(host, LIMITS, cache=cache)
    assert (cache.new, cache.unchanged, cache.changed) == (0, 3, 0)
    assert all(a.numa_maps is b.numa_maps for a, b in zip(first.processes, second.processes))

    edit_line(host, 20, 1, "N0=", "N0=1")  # one VMA of one process gained pages on node 0
    third = take_snapshot(host, LIMITS, cache=cache)
    assert (cache.new, cache.unchanged, cache.changed) == (0, 2, 1)
    assert views(third) == views(take_snapshot(host, LIMITS))  # the same as read afresh
    assert third.process(20).pages_by_node != second.process(20).pages_by_node


def test_cache_forgets_processes_not_read_this_pass(tmp_path):
    host = host_of(tmp_path, proc(10, BIG), proc(20, BIG))
    cache = SnapshotCache()
    take_snapshot(host, LIMITS, cache=cache)
    assert len(cache) == 2 and cache.text_bytes() == sum(
        len(host.read_text(f"/proc/{pid}/numa_maps")) for pid in (10, 20))
    # pid 20 exits: its entry goes with the next snapshot.
    shutil.rmtree(host.path("/proc/20"))
    take_snapshot(host, LIMITS, cache=cache)
    assert len(cache) == 1 and cache.unchanged == 1


def test_recycled_pid_is_parsed_afresh(tmp_path):
    host = host_of(tmp_path, proc(10, BIG))
    cache = SnapshotCache()
    take_snapshot(host, LIMITS, cache=cache)
    set_start_ticks(host, 10, 999)
    snap = take_snapshot(host, LIMITS, cache=cache)
    assert (cache.new, cache.unchanged) == (1, 0) and snap.process(10).start_ticks == 999


def test_malformed_numa_maps_is_skipped_and_not_cached(tmp_path):
    host = host_of(tmp_path, proc(10, BIG), proc(20, BIG))
    cache = SnapshotCache()
    take_snapshot(host, LIMITS, cache=cache)
    edit_line(host, 20, 2, "N1=", "N1=x")
    snap = take_snapshot(host, LIMITS, cache=cache)
    assert [s.kind for s in snap.skipped] == ["malformed"] and "/proc/20/numa_maps" in snap.skipped[0].message
    assert "line 3" in snap.skipped[0].message
    assert [p.pid for p in snap.processes] == [10] and len(cache) == 1


def test_snapshot_without_cache_parses_every_time(tmp_path):
    host = host_of(tmp_path, proc(10, BIG))
    a, b = take_snapshot(host, LIMITS), take_snapshot(host, LIMITS)
    assert a.process(10).numa_maps == b.process(10).numa_maps
    assert a.process(10).numa_maps is not b.process(10).numa_maps


# --------------------------------------------------------------------------
# The cheap first stage: statm before status

def test_small_processes_stop_at_statm(tmp_path):
    host = host_of(tmp_path, proc(10, BIG), proc(20, 100), proc(30, 0, vmas=1, kernel_thread=True))
    # Were status read for the small process or the kernel thread, these
    # would be skipped as malformed: statm alone must rule them out.
    for pid in (20, 30):
        host.path(f"/proc/{pid}/status").write_text("not a status file\n")
    snap = take_snapshot(host, LIMITS)
    assert [p.pid for p in snap.processes] == [10]
    assert snap.skipped == () and snap.scanned == 3


def test_tree_without_statm_falls_back_to_status(tmp_path):
    # Trees captured before statm was read have none: status decides.
    host = host_of(tmp_path, proc(10, BIG), proc(20, 100))
    for pid in (10, 20):
        host.path(f"/proc/{pid}/statm").unlink()
    snap = take_snapshot(host, LIMITS)
    assert [p.pid for p in snap.processes] == [10] and snap.skipped == ()


def test_statm_and_status_disagreeing_status_wins(tmp_path):
    # statm says large (the process grew, then shrank before status was
    # read): the detailed read still applies the threshold to status.
    host = host_of(tmp_path, proc(10, 100))
    host.path("/proc/10/statm").write_text(f"99999 {BIG} 0 1 0 {BIG} 0\n")
    assert take_snapshot(host, LIMITS).processes == ()


@pytest.mark.parametrize("limits", [ScanLimits(min_rss_bytes=0),
                                    ScanLimits(min_rss_bytes=32 * MiB, only_pids=frozenset({20}))],
                         ids=["no-threshold", "only-pids"])
def test_statm_not_read_when_it_cannot_rule_out(tmp_path, limits):
    host = host_of(tmp_path, proc(20, 100))
    host.path("/proc/20/statm").write_text("garbage\n")
    assert [p.pid for p in take_snapshot(host, limits).processes] == [20]


# --------------------------------------------------------------------------
# The daemon: one report kept, its cache used, the same decisions

def daemon_on(tmp_path: Path, host) -> Daemon:
    c = Config()
    c = replace(c, daemon=replace(c.daemon, runtime_dir=str(tmp_path / "run")),
                balance=replace(c.balance, min_rss_bytes=32 * MiB, min_cpu_fraction=0.0))
    return Daemon(host, c, dry_run=True, manage_knobs=False)


def test_daemon_keeps_the_last_report_and_reuses_parses(tmp_path):
    host = host_of(tmp_path / "host", proc(10, BIG, cpus_allowed=(0, 1)), proc(20, BIG, cpus_allowed=(2, 3)))
    d = daemon_on(tmp_path, host)
    first = d.run_pass()
    second = d.run_pass()
    assert d.snapshot_cache.unchanged == 2
    plan = [(a.pid, a.kind, a.target_node, a.bytes, a.reason, tuple(a.vmas)) for a in first.decision.actions]
    assert [p[:3] for p in plan] == [(10, "migrate", 0), (20, "migrate", 1)]
    assert plan == [(a.pid, a.kind, a.target_node, a.bytes, a.reason, tuple(a.vmas))
                    for a in second.decision.actions]


def test_planned_moves_list_every_off_node_vma(tmp_path):
    host = host_of(tmp_path / "host", proc(10, BIG, cpus_allowed=(0, 1)))
    (a,) = [a for a in daemon_on(tmp_path, host).run_pass().decision.actions if a.kind == "migrate"]
    nm = parse_numa_maps(host.read_text("/proc/10/numa_maps"))
    expected = [VmaMove(v.start, v.page_size_bytes, sum(c for n, c in v.pages_by_node if n != 0)) for v in nm.vmas]
    assert a.target_node == 0 and list(a.vmas) == expected
    assert a.bytes == sum(m.pages * m.page_size_bytes for m in expected)
