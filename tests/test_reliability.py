"""Issue 10 on fake hosts: no silent failure, no action on the wrong process, state per host, bad input.

Each test here reproduces a defect found on `main` and fails without its fix
(the defect is named in the test's docstring). What needs the real kernel
(pidfds, pid reuse, a host without cgroups) is in tests/hardware/.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from autonumad.cli import main
from autonumad.service.config import Config
from autonumad.service.daemon import Daemon
from autonumad.service.metrics import DaemonMetrics
from autonumad.sim.demo import build_demo_host, demo_config, demo_spec

REPO = Path(__file__).resolve().parents[1]
DEMO_PIDS = (1001, 2001, 3001, 4001, 5001, 6001)


def config(tmp_path: Path) -> Config:
    return demo_config(tmp_path / "run", 0.5)


def _all_pids(host):
    return [int(p.name) for p in host.path("/proc").iterdir() if p.name.isdigit()]


# -- silent failure ---------------------------------------------------------------------


def test_empty_cgroup_files_do_not_hide_processes(tmp_path):
    """main: an empty /proc/<pid>/cgroup (no hierarchy mounted) skipped every process as malformed."""
    host = build_demo_host(tmp_path / "host")
    for pid in _all_pids(host):
        host.path(f"/proc/{pid}/cgroup").write_text("")
    report = Daemon(host, config(tmp_path), manage_knobs=False).run_pass()
    assert report.snapshot.skipped == ()
    assert report.snapshot.process(1001).cgroup == "/"
    done = {(o.action.pid, o.action.kind) for o in report.outcomes if o.status == "done"}
    assert (1001, "migrate") in done and (2001, "set_affinity") in done


def test_malformed_cgroup_file_does_not_hide_a_process(tmp_path):
    """An optional attribute that cannot be parsed never hides a process from balancing."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/1001/cgroup").write_text("garbage without colons\n")
    report = Daemon(host, config(tmp_path), manage_knobs=False).run_pass()
    assert report.snapshot.skipped == ()
    assert report.snapshot.process(1001).cgroup == "(unknown)"
    assert any(o.action.pid == 1001 and o.status == "done" for o in report.outcomes)


def test_a_pass_that_skips_everything_warns_once_and_says_why(tmp_path, caplog):
    """main: every process skipped (numa_maps unreadable) was logged at most per process, nothing else."""
    host = build_demo_host(tmp_path / "host")
    for pid in _all_pids(host):
        p = host.path(f"/proc/{pid}/numa_maps")
        if p.exists() and p.read_text():
            p.write_text("not numa_maps at all\n")
    metrics = DaemonMetrics(process_metrics=False)
    d = Daemon(host, config(tmp_path), manage_knobs=False, metrics=metrics)
    with caplog.at_level(logging.INFO, logger="autonumad"):
        d.run_pass()
        d.run_pass()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "processes balanced" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("0 of ") and "malformed numa_maps" in warnings[0]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["skipped"]["all_skipped_reason"] == "malformed numa_maps"
    n = state["skipped"]["candidates"]
    assert n >= len(DEMO_PIDS)
    assert metrics.registry.get_sample_value("autonumad_processes_skipped_total",
                                             {"reason": "malformed", "file": "numa_maps"}) == 2 * n


def test_status_shows_the_all_skipped_reason(tmp_path, capsys, caplog):
    host = build_demo_host(tmp_path / "host")
    for pid in _all_pids(host):
        p = host.path(f"/proc/{pid}/numa_maps")
        if p.exists() and p.read_text():
            p.write_text("not numa_maps at all\n")
    with caplog.at_level(logging.WARNING, logger="autonumad"):
        assert main(["status", "--root", str(host.root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["skipped"]["all_skipped_reason"] == "malformed numa_maps"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "processes balanced" in lines[0]


# -- process identity -------------------------------------------------------------------


def _set_start_ticks(host, pid: int, ticks: int) -> None:
    """Make `pid` look like a new process (its pid reused): stat field 22 of the leader and its threads."""
    from autonumad.sim.fakehost import _join_stat, _split_stat

    paths = [host.path(f"/proc/{pid}/stat")] + sorted(host.path(f"/proc/{pid}/task").glob("*/stat"))
    for p in paths:
        f = _split_stat(p.read_text())
        f[21] = str(ticks)
        p.write_text(_join_stat(f))


def test_no_action_on_a_pid_reused_between_snapshot_and_action(tmp_path):
    """main: actions went by bare pid; a process that took over the pid got the moves and the pins."""
    from autonumad.act.executor import Executor, TokenBucket
    from autonumad.plan.history import History
    from autonumad.plan.policy import BalancePolicyConfig, decide
    from autonumad.observe.snapshot import ScanLimits, take_snapshot

    host = build_demo_host(tmp_path / "host")
    c = config(tmp_path)
    snap = take_snapshot(host, ScanLimits(min_rss_bytes=c.balance.min_rss_bytes))
    history = History()
    history.observe(snap, 0.0)
    decision = decide(snap, history, BalancePolicyConfig.from_config(c.balance), 0.0)
    pids = {a.pid for a in decision.actions}
    assert {1001, 2001} <= pids
    for pid in pids:
        _set_start_ticks(host, pid, 4242)  # every acted-on pid now belongs to another process
    before = {pid: (host.path(f"/proc/{pid}/numa_maps").read_text(), host.path(f"/proc/{pid}/status").read_text())
              for pid in pids}
    outcomes = Executor(host, TokenBucket(2**40)).run(decision.actions, deadline_s=float("inf"))
    assert {o.status for o in outcomes} == {"gone"}
    assert all("pid reused" in o.detail for o in outcomes), [o.detail for o in outcomes]
    after = {pid: (host.path(f"/proc/{pid}/numa_maps").read_text(), host.path(f"/proc/{pid}/status").read_text())
             for pid in pids}
    assert after == before


def test_affinity_restore_at_stop_skips_a_reused_pid(tmp_path):
    """main: a pid reused by a process pinned elsewhere got its affinity reset to the old owner's at stop."""
    host = build_demo_host(tmp_path / "host")
    d = Daemon(host, config(tmp_path), manage_knobs=False)
    report = d.run_pass()
    assert any(o.action.pid == 2001 and o.action.kind == "set_affinity" and o.status == "done"
               for o in report.outcomes)
    _set_start_ticks(host, 2001, 4242)
    for tid in host.tids(2001):
        host.set_thread_affinity(tid, {30, 31})  # the new owner's own pin
    assert d.restore_owned_affinities() == 0
    assert {host.thread_affinity(t) for t in host.tids(2001)} == {frozenset({30, 31})}
