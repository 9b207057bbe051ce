"""Metrics: what a pass on a fake host exports, checked sample by sample.

The daemon runs real passes on fake hosts (autonumad.sim.fakehost; the demo
host's processes each exercise one policy rule, see autonumad/demo.py),
and the samples are read back from the private registry with
get_sample_value. promtool (Debian's prometheus package) checks the
exposition text and the shipped alerting rules, including unit tests of the
alerts; those tests skip when promtool is absent, except under CI=true,
where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from autonumad import __version__
from autonumad.service.config import Config
from autonumad.service.daemon import Daemon, PassReport
from autonumad.sim.demo import GiB, demo_config, demo_spec
from autonumad.errors import AutonumadError, HostError
from autonumad.act.executor import Outcome
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host
from autonumad.service.metrics import (PREFIX, DaemonMetrics, decision_label, memory_weighted_local_fraction, numa_counters,
                               start_metrics)
from autonumad.model import Action
from autonumad.act.sysctl import Drift

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "config/prometheus/autonumad-rules.yml"
DASHBOARD = REPO / "config/grafana/autonumad-dashboard.json"
PAGE = 4096


def _tool(name: str) -> str:
    """Path of a Prometheus tool; skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} not found and CI=true: install Debian's prometheus package")
        pytest.skip(f"{name} not found (apt-get install prometheus); CI=true makes this a failure")
    return path


def _value(metrics: DaemonMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _daemon(tmp_path: Path, spec: HostSpec | None = None, *, top_processes: int = 0, dry_run: bool | None = None,
            textfile: str | None = None) -> tuple[Daemon, DaemonMetrics]:
    host = build_host(tmp_path / "host", spec or demo_spec())
    metrics = DaemonMetrics(top_processes=top_processes, textfile=textfile)
    config = demo_config(tmp_path / "run", 5.0)
    return Daemon(host, config, manage_knobs=False, dry_run=dry_run, metrics=metrics), metrics


@pytest.fixture(scope="module")
def demo_pass(tmp_path_factory) -> tuple[DaemonMetrics, PassReport]:
    """One pass of the daemon on the demo host, with the top-3 gauge on."""
    daemon, metrics = _daemon(tmp_path_factory.mktemp("demo"), top_processes=3)
    return metrics, daemon.run_pass()


# -- before the first pass ---------------------------------------------------------------


def test_before_first_pass_only_the_loop_metrics_exist():
    m = DaemonMetrics()
    assert _value(m, "autonumad_passes_total") == 0
    assert _value(m, "autonumad_build_info", version=__version__) == 1
    assert _value(m, "autonumad_config_last_reload_successful") == 1
    # Label values known up front exist at 0, so increase() sees the first event.
    assert _value(m, "autonumad_config_reloads_total", outcome="failure") == 0
    assert _value(m, "autonumad_processes_skipped_total", reason="denied", file="numa_maps") == 0
    assert _value(m, "autonumad_kernel_knob_drift_total", knob="numa_balancing") == 0
    # Host metrics come from a pass report: none yet.
    assert _value(m, "autonumad_node_cpus", node="0") is None
    assert _value(m, "autonumad_processes_scanned") is None


# -- per-node metrics ----------------------------------------------------------------------

_SPEC_NODES = demo_spec().nodes


@pytest.mark.parametrize("name,node,expected", [
    ("autonumad_node_memory_total_bytes", "0", 32 * GiB),
    ("autonumad_node_memory_total_bytes", "2", 64 * GiB),
    ("autonumad_node_memory_free_bytes", "1", 22 * GiB),
    ("autonumad_node_memory_used_bytes", "1", 10 * GiB),
    ("autonumad_node_memory_used_bytes", "2", 4 * GiB),
    ("autonumad_node_cpus", "0", 8),
    ("autonumad_node_cpus", "2", 0),
    ("autonumad_node_tier_rank", "1", 0),
    ("autonumad_node_tier_rank", "2", 1),
], ids=lambda v: str(v))
def test_node_gauges(demo_pass, name, node, expected):
    metrics, _ = demo_pass
    assert _value(metrics, name, node=node) == expected


@pytest.mark.parametrize("node,tier", [("0", "4"), ("1", "4"), ("2", "22")], ids=["dram0", "dram1", "cxl"])
def test_node_tier_info_names_the_kernel_tier(demo_pass, node, tier):
    metrics, _ = demo_pass
    assert _value(metrics, "autonumad_node_tier_info", node=node, tier=tier, source="memory_tiering") == 1


def test_tier_info_uses_the_fallback_without_kernel_tiers(tmp_path):
    spec = replace(demo_spec(), tiers=None)
    daemon, metrics = _daemon(tmp_path, spec)
    daemon.run_pass()
    # CPU-less node 2 is guessed slower: synthetic tier 1, rank 1.
    assert _value(metrics, "autonumad_node_tier_info", node="2", tier="1", source="fallback-cpuless") == 1
    assert _value(metrics, "autonumad_node_tier_rank", node="2") == 1


def _two_node_host(**spec_kw) -> HostSpec:
    nodes = (NodeSpec((0, 1), 4 * GiB, 3 * GiB, (10, 21)), NodeSpec((2, 3), 4 * GiB, 2 * GiB, (21, 10)))
    return HostSpec(nodes=nodes, **spec_kw)


def test_node_kernel_counters_keep_only_the_numa_families(tmp_path):
    """nodeN/numastat whole; nodeN/vmstat and /proc/vmstat filtered to numa_/pgpromote_/pgdemote_/pgmigrate_."""
    spec = _two_node_host(vmstat={"numa_hint_faults": 77, "numa_pages_migrated": 5})
    daemon, metrics = _daemon(tmp_path, spec)
    node1 = daemon.host.path("/sys/devices/system/node/node1")
    (node1 / "vmstat").write_text("nr_free_pages 524288\nnuma_hit 1000\npgpromote_success 12\n"
                                  "pgdemote_kswapd 34\npgdemote_someday 5\nworkingset_refault_anon 9\n")
    (node1 / "numastat").write_text("numa_hit 1000\nnuma_miss 3\nlocal_node 990\nother_node 10\n")
    daemon.run_pass()
    counters = {"pgpromote_success": 12, "pgdemote_kswapd": 34, "numa_hit": 1000,
                "pgdemote_someday": 5}  # a counter a future kernel adds to a kept family
    for name, value in counters.items():
        assert _value(metrics, "autonumad_node_vmstat_total", node="1", counter=name) == value, name
    for name in ("nr_free_pages", "workingset_refault_anon"):
        assert _value(metrics, "autonumad_node_vmstat_total", node="1", counter=name) is None, name
    assert _value(metrics, "autonumad_node_numastat_total", node="1", counter="other_node") == 10
    assert _value(metrics, "autonumad_node_numastat_total", node="1", counter="numa_miss") == 3
    assert _value(metrics, "autonumad_vmstat_total", counter="numa_hint_faults") == 77
    assert _value(metrics, "autonumad_vmstat_total", counter="numa_pages_migrated") == 5
    assert _value(metrics, "autonumad_vmstat_total", counter="nr_free_pages") is None


@pytest.mark.parametrize("counters,kept", [
    ({}, {}),
    ({"nr_free_pages": 1, "numa_hit": 2}, {"numa_hit": 2}),
    ({"pgpromote_candidate": 3, "pgdemote_direct": 4, "pgmigrate_fail": 5, "pgfault": 6},
     {"pgpromote_candidate": 3, "pgdemote_direct": 4, "pgmigrate_fail": 5}),
    ({"numa": 1, "pgpromote": 2}, {}),  # the family prefix includes its underscore
], ids=["empty", "numa-only", "tiering-families", "bare-prefix"])
def test_numa_counters_filter(counters, kept):
    assert numa_counters(counters) == kept


# -- kernel knobs ----------------------------------------------------------------------


@pytest.mark.parametrize("knob,expected", [
    ("numa_balancing", 0),  # the demo host's recommended set-up
    ("numa_balancing_promote_rate_limit_MBps", 65536),
    ("demotion_enabled", 0),  # "false" in sysfs, exported as 0
    ("watermark_scale_factor", 10),
    ("hot_threshold_ms", None),  # absent on this host: no sample, not a made-up 0
], ids=lambda v: str(v))
def test_kernel_knob_values(demo_pass, knob, expected):
    metrics, _ = demo_pass
    assert _value(metrics, "autonumad_kernel_knob", knob=knob) == expected


def test_knob_drift_is_counted_per_knob(demo_pass):
    _, report = demo_pass
    metrics = DaemonMetrics(process_metrics=False)
    drifted = replace(report, drifts=[Drift("numa_balancing", "/proc/sys/kernel/numa_balancing", 0, 1)])
    metrics.observe_pass(drifted)
    metrics.observe_pass(drifted)
    assert _value(metrics, "autonumad_kernel_knob_drift_total", knob="numa_balancing") == 2
    assert _value(metrics, "autonumad_kernel_knob_drift_total", knob="zone_reclaim_mode") == 0


def test_drift_found_by_the_daemon_is_counted(tmp_path):
    """A knob changed behind the daemon's back between passes shows up in the counter."""
    from autonumad.act.sysctl import KnobManager

    daemon, metrics = _daemon(tmp_path)
    daemon.config = replace(daemon.config, kernel=replace(daemon.config.kernel, numa_balancing=0))
    daemon.knobs = KnobManager(daemon.host, tmp_path / "run")
    daemon.run_pass()
    assert _value(metrics, "autonumad_kernel_knob_drift_total", knob="numa_balancing") == 0
    daemon.host.path("/proc/sys/kernel/numa_balancing").write_text("1\n")  # tuned turns it back on
    daemon.run_pass()
    assert _value(metrics, "autonumad_kernel_knob_drift_total", knob="numa_balancing") == 1
    assert _value(metrics, "autonumad_kernel_knob", knob="numa_balancing") == 1


# -- the daemon's work -----------------------------------------------------------------


@pytest.mark.parametrize("action,rule", [
    ("migrate", "memory-follows-task"),  # postgres: pinned to node 0, most memory on node 1
    ("set_affinity", "task-follows-memory"),  # java: heap on node 0, threads on node 1
    ("none", "already-local"),  # redis-server
    ("none", "explicit-memory-policy"),  # mysqld: interleaved by its owner
    ("none", "excluded-comm"),  # backup-agent: the demo config excludes ^backup
    ("none", "too-large"),  # spark-executor: larger than any socket
], ids=lambda v: str(v))
def test_decisions_by_action_and_rule(demo_pass, action, rule):
    metrics, _ = demo_pass
    assert _value(metrics, "autonumad_decisions_total", action=action, rule=rule) == 1


@pytest.mark.parametrize("kinds,label", [
    ((), "none"),
    (("migrate",), "migrate"),
    (("set_affinity", "migrate"), "set_affinity+migrate"),  # task-and-memory
], ids=["left-alone", "one-action", "task-and-memory"])
def test_decision_action_label(kinds, label):
    assert decision_label(Action(k, 1, 1, "c", "r", "why") for k in kinds) == label


def test_one_decision_per_detailed_process(demo_pass):
    metrics, report = demo_pass
    fams = {f.name: f for f in metrics.registry.collect()}
    total = sum(s.value for s in fams["autonumad_decisions"].samples if s.name.endswith("_total"))
    assert total == len(report.snapshot.processes) == 6


def test_work_counters_after_one_demo_pass(demo_pass):
    metrics, report = demo_pass
    postgres_remote_pages = 2 * GiB // PAGE  # its buffer pool's part on node 1
    assert _value(metrics, "autonumad_passes_total") == 1
    assert _value(metrics, "autonumad_migrated_pages_total", from_node="1", to_node="0") == postgres_remote_pages
    assert _value(metrics, "autonumad_migrated_bytes_total", from_node="1", to_node="0") == 2 * GiB
    assert _value(metrics, "autonumad_actions_total", action="migrate", status="done") == 1
    assert _value(metrics, "autonumad_actions_total", action="set_affinity", status="done") == 1
    assert _value(metrics, "autonumad_task_moves_total") == 1
    assert _value(metrics, "autonumad_threads_moved_total") == 6  # java's six threads
    assert _value(metrics, "autonumad_pass_duration_seconds_count") == 1
    assert _value(metrics, "autonumad_pass_duration_seconds_sum") == pytest.approx(report.duration_s)
    assert _value(metrics, "autonumad_last_pass_timestamp_seconds") > 0


def test_process_gauges(demo_pass):
    metrics, _ = demo_pass
    spec = demo_spec()
    assert _value(metrics, "autonumad_processes_scanned") == len(spec.processes)
    # The six named workloads are above the demo's 64 MiB min_rss; the workers are not.
    assert _value(metrics, "autonumad_processes_detailed") == 6
    # Minus mysqld (its owner's interleave policy) and backup-agent (excluded).
    assert _value(metrics, "autonumad_processes_managed") == 4


def test_dry_run_decides_but_moves_nothing(tmp_path):
    daemon, metrics = _daemon(tmp_path, dry_run=True)
    daemon.run_pass()
    assert _value(metrics, "autonumad_decisions_total", action="migrate", rule="memory-follows-task") == 1
    assert _value(metrics, "autonumad_actions_total", action="migrate", status="dry-run") == 1
    assert _value(metrics, "autonumad_migrated_pages_total", from_node="1", to_node="0") is None
    assert _value(metrics, "autonumad_task_moves_total") == 0


def test_cooldown_on_the_second_pass(tmp_path):
    daemon, metrics = _daemon(tmp_path)
    daemon.run_pass()
    daemon.run_pass()
    assert _value(metrics, "autonumad_passes_total") == 2
    # postgres and java were acted on in pass 1; pass 2 leaves them alone.
    assert _value(metrics, "autonumad_decisions_total", action="none", rule="cooldown") == 2
    assert _value(metrics, "autonumad_actions_total", action="migrate", status="done") == 1


def _action(kind: str, target: int | None = 0) -> Action:
    return Action(kind, 4242, 1, "synthetic", "memory-follows-task" if kind == "migrate" else "task-follows-memory",
                  "test", target_node=target)


@pytest.mark.parametrize("outcome,expected", [
    (Outcome(_action("migrate", 2), "done", moved_pages=300, moved_bytes=300 * PAGE, moved_from={0: 100, 1: 200}),
     {("autonumad_migrated_pages_total", (("from_node", "0"), ("to_node", "2"))): 100,
      ("autonumad_migrated_pages_total", (("from_node", "1"), ("to_node", "2"))): 200,
      ("autonumad_migrated_bytes_total", (("from_node", "1"), ("to_node", "2"))): 200 * PAGE}),
    (Outcome(_action("migrate", 0), "partial", moved_pages=10, moved_bytes=10 * PAGE, moved_from={1: 4}),
     {("autonumad_migrated_pages_total", (("from_node", "1"), ("to_node", "0"))): 4,
      ("autonumad_migrated_pages_total", (("from_node", "unknown"), ("to_node", "0"))): 6,
      ("autonumad_actions_total", (("action", "migrate"), ("status", "partial"))): 1}),
    (Outcome(_action("migrate", 0), "failed", failures={"ENOMEM": 512, "EBUSY": 3}),
     {("autonumad_migration_failures_total", (("errno", "ENOMEM"),)): 512,
      ("autonumad_migration_failures_total", (("errno", "EBUSY"),)): 3,
      ("autonumad_actions_total", (("action", "migrate"), ("status", "failed"))): 1}),
    (Outcome(_action("set_affinity"), "done", threads_set=5),
     {("autonumad_task_moves_total", ()): 1, ("autonumad_threads_moved_total", ()): 5}),
    (Outcome(_action("restore_affinity"), "done", threads_set=2),
     {("autonumad_task_moves_total", ()): 1, ("autonumad_threads_moved_total", ()): 2}),
    (Outcome(_action("set_affinity"), "gone", threads_set=0),
     {("autonumad_task_moves_total", ()): 0,
      ("autonumad_actions_total", (("action", "set_affinity"), ("status", "gone"))): 1}),
], ids=["two-sources", "unattributed-rest", "errno-failures", "affinity", "restore", "affinity-gone"])
def test_outcomes_are_counted(demo_pass, outcome, expected):
    _, report = demo_pass
    metrics = DaemonMetrics(process_metrics=False)
    metrics.observe_pass(replace(report, outcomes=[outcome]))
    for (name, labels), value in expected.items():
        assert _value(metrics, name, **dict(labels)) == value, (name, labels)


_moved_from = st.dictionaries(st.integers(0, 7), st.integers(0, 2**30), max_size=8)
_failures = st.dictionaries(st.sampled_from(["ENOMEM", "EBUSY", "EACCES", "EFAULT", "EIO"]),
                            st.integers(0, 2**20), max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_moved_from, st.integers(0, 4096), _failures, st.integers(0, 7)), max_size=6))
def test_migration_totals_add_up(demo_pass, moves):
    """Whatever the outcomes, the labelled counters sum to the pages and bytes moved and failed."""
    _, report = demo_pass
    outcomes = [Outcome(_action("migrate", target), "done", moved_pages=sum(mf.values()) + rest,
                        moved_bytes=(sum(mf.values()) + rest) * PAGE, moved_from=mf, failures=fails)
                for mf, rest, fails, target in moves]
    metrics = DaemonMetrics(process_metrics=False)
    metrics.observe_pass(replace(report, outcomes=outcomes))
    fams = {f.name: f for f in metrics.registry.collect()}

    def total(family: str) -> float:
        return sum(s.value for s in fams[family].samples if s.name.endswith("_total"))

    assert total("autonumad_migrated_pages") == sum(o.moved_pages for o in outcomes)
    assert total("autonumad_migrated_bytes") == sum(o.moved_bytes for o in outcomes)
    assert total("autonumad_migration_failures") == sum(sum(o.failures.values()) for o in outcomes)


def test_skipped_processes_by_reason(tmp_path):
    daemon, metrics = _daemon(tmp_path)
    daemon.host.path("/proc/1001/numa_maps").write_text("this is not numa_maps\n")
    daemon.run_pass()
    assert _value(metrics, "autonumad_processes_skipped_total", reason="malformed", file="numa_maps") == 1
    assert _value(metrics, "autonumad_processes_skipped_total", reason="malformed", file="cgroup") == 0
    assert _value(metrics, "autonumad_processes_skipped_total", reason="denied", file="numa_maps") == 0


def test_failed_snapshot_counts_a_pass_error(tmp_path):
    daemon, metrics = _daemon(tmp_path)
    daemon.host.path("/sys/devices/system/node/online").unlink()
    with pytest.raises(HostError):
        daemon.run_pass()
    assert _value(metrics, "autonumad_pass_errors_total", stage="snapshot") == 1
    assert _value(metrics, "autonumad_passes_total") == 0


# -- local fraction and the top-K gauge --------------------------------------------------


def _locality_spec(*processes: ProcessSpec) -> HostSpec:
    return _two_node_host(processes=processes)


def _proc(pid: int, cpu: int, pages_by_node: dict[int, int]) -> ProcessSpec:
    return ProcessSpec(pid, f"p{pid}", (ThreadSpec(pid, cpu),), vmas=(VmaSpec(0x7f0000000000, pages_by_node),))


@pytest.mark.parametrize("processes,expected", [
    ((_proc(100, 0, {0: 300, 1: 100}), _proc(200, 2, {1: 600})), 0.9),  # (300 + 600) / 1000
    ((_proc(100, 0, {1: 1000}),), 0.0),  # all remote
    ((_proc(100, 2, {1: 64}), _proc(200, 0, {0: 64})), 1.0),
    ((), None),  # nothing measured: no sample rather than a flattering 1
], ids=["weighted", "all-remote", "all-local", "no-processes"])
def test_local_fraction_is_memory_weighted(tmp_path, processes, expected):
    daemon, metrics = _daemon(tmp_path, _locality_spec(*processes))
    daemon.config = replace(daemon.config, balance=replace(daemon.config.balance, min_rss_bytes=0))
    report = daemon.run_pass()
    assert memory_weighted_local_fraction(report.snapshot.processes) == expected
    got = _value(metrics, "autonumad_local_fraction")
    assert got == (pytest.approx(expected) if expected is not None else None)


# Remote memory in the demo's first pass (threads' nodes vs pages' nodes, demo.py):
# spark-executor's threads all last ran on node 0, so its 10 GiB on node 1 and
# 14 GiB on the CXL node are remote; java runs on node 1 with a 3 GiB heap on
# node 0; postgres runs on node 0 with 2 GiB on node 1; mysqld 1 GiB.
@pytest.mark.parametrize("k,expected", [
    (0, {}),
    (1, {("6001", "spark-executor"): 24 * GiB}),
    (3, {("6001", "spark-executor"): 24 * GiB, ("2001", "java"): 3 * GiB, ("1001", "postgres"): 2 * GiB}),
], ids=["off", "top-1", "top-3"])
def test_top_processes_gauge_is_opt_in_and_bounded(tmp_path, k, expected):
    daemon, metrics = _daemon(tmp_path, top_processes=k)
    daemon.run_pass()
    samples = [s for f in metrics.registry.collect() if f.name == "autonumad_process_remote_bytes"
               for s in f.samples]
    assert {(s.labels["pid"], s.labels["comm"]): s.value for s in samples} == expected
    for pid, comm in expected:
        assert 0 <= _value(metrics, "autonumad_process_local_fraction", pid=pid, comm=comm) < 1
    if k == 0:
        assert not any(f.name.startswith("autonumad_process_") for f in metrics.registry.collect())


# -- config reloads ----------------------------------------------------------------------


@pytest.mark.parametrize("outcomes,successes,failures,last_ok", [
    ([True], 1, 0, 1),
    ([False], 0, 1, 0),
    ([False, True], 1, 1, 1),
    ([True, False, False], 1, 2, 0),
], ids=["ok", "rejected", "rejected-then-ok", "ok-then-rejected-twice"])
def test_config_reload_counters(outcomes, successes, failures, last_ok):
    t = [1000.0]
    metrics = DaemonMetrics(process_metrics=False, clock=lambda: t[0])
    for ok in outcomes:
        t[0] += 10
        metrics.config_reload(ok)
    assert _value(metrics, "autonumad_config_reloads_total", outcome="success") == successes
    assert _value(metrics, "autonumad_config_reloads_total", outcome="failure") == failures
    assert _value(metrics, "autonumad_config_last_reload_successful") == last_ok
    last_success = max((1000.0 + 10 * (i + 1) for i, ok in enumerate(outcomes) if ok), default=1000.0)
    assert _value(metrics, "autonumad_config_last_reload_success_timestamp_seconds") == last_success


def test_daemon_reload_with_a_bad_file_is_counted(tmp_path):
    daemon, metrics = _daemon(tmp_path)
    path = tmp_path / "autonumad.toml"
    path.write_text("[daemon]\ninterval_s = 2.0\n")
    path.chmod(0o644)
    daemon.config_path = str(path)
    assert daemon.reload() is True
    path.write_text("[daemon]\ninterval_s = \"soon\"\n")
    assert daemon.reload() is False
    assert _value(metrics, "autonumad_config_reloads_total", outcome="success") == 1
    assert _value(metrics, "autonumad_config_reloads_total", outcome="failure") == 1
    assert _value(metrics, "autonumad_config_last_reload_successful") == 0


# -- textfile ----------------------------------------------------------------------------


def test_textfile_is_written_each_pass_with_only_our_families(tmp_path):
    textfile = tmp_path / "textfile" / "autonumad.prom"
    textfile.parent.mkdir()
    daemon, _ = _daemon(tmp_path, textfile=str(textfile))
    daemon.run_pass()
    daemon.run_pass()
    names = {f.name for f in text_string_to_metric_families(textfile.read_text())}
    assert "autonumad_passes" in names and "autonumad_node_memory_total_bytes" in names
    assert all(n.startswith(PREFIX) for n in names), sorted(n for n in names if not n.startswith(PREFIX))
    assert "autonumad_passes_total 2.0" in textfile.read_text()
    # Written through a temp file and a rename: nothing else is left in the directory.
    assert [p.name for p in textfile.parent.iterdir()] == ["autonumad.prom"]


def test_textfile_failure_does_not_fail_the_pass(tmp_path, caplog):
    daemon, metrics = _daemon(tmp_path, textfile=str(tmp_path / "missing-dir" / "autonumad.prom"))
    daemon.run_pass()
    assert _value(metrics, "autonumad_passes_total") == 1
    assert "metrics textfile" in caplog.text and "not written" in caplog.text


# -- start_metrics and the HTTP endpoint -----------------------------------------------------


def _free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config(listen: str, textfile: str = "", top_processes: int = 0) -> Config:
    c = Config()
    return replace(c, metrics=replace(c.metrics, listen=listen, textfile=textfile, top_processes=top_processes))


def test_no_endpoint_and_no_textfile_means_no_metrics():
    assert start_metrics(_config(""), None) is None


def test_textfile_only_serves_nothing(tmp_path):
    metrics = start_metrics(_config("", textfile=str(tmp_path / "a.prom")), None)
    assert metrics is not None and metrics.address is None and metrics.textfile == str(tmp_path / "a.prom")


@pytest.mark.parametrize("family,host,url_host", [
    (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
    (socket.AF_INET6, "::1", "[::1]"),
], ids=["ipv4-loopback", "ipv6-loopback"])
def test_endpoint_binds_exactly_the_configured_address(family, host, url_host):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        port = _free_port(family, host)
    except OSError as e:
        pytest.skip(f"cannot bind {host}: {e}")
    metrics = start_metrics(_config(f"{url_host}:{port}", top_processes=5), None)
    try:
        assert metrics.address == (host, port)
        assert metrics.server.socket.getsockname()[0] == host  # not 0.0.0.0 / ::
        with urllib.request.urlopen(f"http://{url_host}:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert f'autonumad_build_info{{version="{__version__}"}} 1.0' in body
        assert "process_start_time_seconds" in body  # the daemon's own process metrics
        assert metrics.collector.top_processes == 5
    finally:
        metrics.close()


def test_endpoint_port_in_use_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AutonumadError, match=rf"metrics endpoint 127.0.0.1:{port}: cannot listen"):
            start_metrics(_config(f"127.0.0.1:{port}"), None)


# -- exposition hygiene ------------------------------------------------------------------------

# Every label autonumad_ families may carry; pid/comm only on the opt-in
# per-process families.
_LABELS = {"node", "tier", "source", "counter", "knob", "action", "rule", "status", "from_node", "to_node",
           "errno", "reason", "file", "stage", "outcome", "version", "le"}
_PER_PROCESS = {"autonumad_process_remote_bytes", "autonumad_process_local_fraction"}


def _rich_metrics(report: PassReport) -> DaemonMetrics:
    """Metrics after a pass that touched every family (failures, drift, top-K included)."""
    metrics = DaemonMetrics(top_processes=3)
    outcomes = [*report.outcomes,
                Outcome(_action("migrate", 0), "partial", moved_pages=3, moved_bytes=3 * PAGE, moved_from={1: 3},
                        failures={"EBUSY": 2})]
    metrics.observe_pass(replace(report, outcomes=outcomes,
                                 drifts=[Drift("numa_balancing", "/proc/sys/kernel/numa_balancing", 0, 1)]))
    metrics.config_reload(False)
    metrics.pass_error("snapshot")
    return metrics


def _sample_names(metrics: DaemonMetrics) -> set[str]:
    """Every sample name the registry can expose, also for families without samples yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
    names = set()
    for f in metrics.registry.collect():
        names.update(f.name + s for s in suffixes.get(f.type, ("",)))
        names.update(s.name for s in f.samples)
    return names


def test_names_units_and_labels_follow_the_conventions(demo_pass):
    _, report = demo_pass
    families = [f for f in _rich_metrics(report).registry.collect() if f.name.startswith(PREFIX)]
    assert len(families) > 30
    for f in families:
        assert f.documentation, f.name
        labels = {k for s in f.samples for k in s.labels}
        allowed = _LABELS | ({"pid", "comm"} if f.name in _PER_PROCESS else set())
        assert labels <= allowed, (f.name, labels - allowed)
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
        if f.type == "gauge":
            assert not f.name.endswith("_total"), f.name
        assert not re.search(r"_(percent|kb|mb|kib|mib|ms|milliseconds)\b", f.name), f.name
    for name in _PER_PROCESS:
        f = next(f for f in families if f.name == name)
        assert "As of the daemon's last pass" in f.documentation and len(f.samples) <= 3


def test_scrape_time_help_says_as_of_last_pass(demo_pass):
    metrics, _ = demo_pass
    snapshot_families = list(metrics.collector.collect())
    assert len(snapshot_families) >= 15
    for f in snapshot_families:
        assert "As of the daemon's last pass" in f.documentation, f.name


def test_promtool_check_metrics_is_clean(demo_pass):
    promtool = _tool("promtool")
    _, report = demo_pass
    text = _rich_metrics(report).exposition()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_promtool_check_metrics_on_a_live_scrape(tmp_path):
    """What the HTTP endpoint serves after a real pass, as Prometheus would fetch it."""
    promtool = _tool("promtool")
    port = _free_port()
    metrics = start_metrics(_config(f"127.0.0.1:{port}", top_processes=3), None)
    try:
        host = build_host(tmp_path / "host", demo_spec())
        Daemon(host, demo_config(tmp_path / "run", 5.0), manage_knobs=False, metrics=metrics).run_pass()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read()
    finally:
        metrics.close()
    assert b"autonumad_node_memory_total_bytes" in text and b"autonumad_passes_total 1.0" in text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_real_host_exports_every_online_node(tmp_path):
    """This machine's own /sys: one set of node series per online node, and its NUMA counters."""
    from autonumad.plan.history import History
    from autonumad.cli import open_host
    from autonumad.plan.policy import decide
    from autonumad.service.config import BalanceConfig
    from autonumad.readers.lists import parse_list
    from autonumad.observe.snapshot import ScanLimits, take_snapshot

    if not Path("/sys/devices/system/node/online").exists():
        pytest.skip("this kernel has no NUMA sysfs (CONFIG_NUMA=n)")
    host = open_host(None)
    # Just this test process: a snapshot, never a daemon acting on the machine.
    snap = take_snapshot(host, ScanLimits(only_pids=frozenset({os.getpid()}), skip_self=False))
    history = History()
    history.observe(snap, 0.0)
    report = PassReport(1, 0.0, 0.01, snap, decide(snap, history, BalanceConfig(min_cpu_fraction=0), 0.0), [], [])
    metrics = DaemonMetrics()
    metrics.observe_pass(report)
    online = parse_list(Path("/sys/devices/system/node/online").read_text())
    for node in map(str, online):
        assert _value(metrics, "autonumad_node_memory_total_bytes", node=node) > 0
        assert _value(metrics, "autonumad_node_cpus", node=node) is not None
        vmstat = Path(f"/sys/devices/system/node/node{node}/vmstat")
        if vmstat.exists():
            for name in numa_counters(dict(line.split() for line in vmstat.read_text().splitlines() if line)):
                assert _value(metrics, "autonumad_node_vmstat_total", node=node, counter=name) is not None, name
    assert _value(metrics, "autonumad_kernel_knob", knob="numa_balancing") in (0, 1, 2, 3, None)
    assert 0 <= _value(metrics, "autonumad_local_fraction") <= 1
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=metrics.exposition(), capture_output=True)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()


# -- alerting rules and dashboard ----------------------------------------------------------


def _referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bautonumad_[a-z0-9_]+", text))


def test_rules_and_dashboard_reference_only_existing_metrics(demo_pass):
    _, report = demo_pass
    known = _sample_names(_rich_metrics(report))
    for path in (RULES, DASHBOARD):
        used = _referenced_metrics(path.read_text())
        assert used, path
        assert used <= known, (path.name, sorted(used - known))


def test_promtool_check_rules():
    promtool = _tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", r.stdout)
    assert int(re.search(r"SUCCESS: (\d+) rules found", r.stdout).group(1)) >= 10


def _without_annotations(rules_text: str) -> str:
    """The rules with their annotations blocks dropped (promtool unit tests compare them verbatim)."""
    out, skip_deeper_than = [], None
    for line in rules_text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


_I = 'job="autonumad", instance="host:10117"'
# promtool unit tests: (name, input series, eval time, alert, expected extra labels or [] for "does not fire").
_ALERT_CASES = [
    ("stalled-fires", [(f"autonumad_passes_total{{{_I}}}", "5+0x30"), (f"up{{{_I}}}", "1x30")],
     "15m", "AutonumadPassesStalled", [{"severity": "critical"}]),
    ("stalled-quiet-while-passing", [(f"autonumad_passes_total{{{_I}}}", "0+6x30"), (f"up{{{_I}}}", "1x30")],
     "15m", "AutonumadPassesStalled", []),
    ("down", [(f"up{{{_I}}}", "0x10")], "6m", "AutonumadDown", [{"severity": "critical"}]),
    ("local-low", [(f"autonumad_local_fraction{{{_I}}}", "0.5x40")], "35m", "AutonumadLocalFractionLow",
     [{"severity": "warning"}]),
    ("local-ok", [(f"autonumad_local_fraction{{{_I}}}", "0.95x40")], "35m", "AutonumadLocalFractionLow", []),
    ("reload-failed", [(f"autonumad_config_last_reload_successful{{{_I}}}", "1 0x5")], "3m",
     "AutonumadConfigReloadFailed", [{"severity": "warning"}]),
    ("numa-balancing-back-on",
     [(f'autonumad_kernel_knob_drift_total{{{_I}, knob="numa_balancing"}}', "0 0 0 1 2 3 4 5"),
      (f'autonumad_kernel_knob{{{_I}, knob="numa_balancing"}}', "0 0 0 1 1 1 1 1")],
     "6m", "AutonumadKernelNumaBalancingReenabled", [{"severity": "warning", "knob": "numa_balancing"}]),
    ("numa-balancing-enforced-back-off",
     [(f'autonumad_kernel_knob_drift_total{{{_I}, knob="numa_balancing"}}', "0 0 0 1 1 1 1 1"),
      (f'autonumad_kernel_knob{{{_I}, knob="numa_balancing"}}', "0 0 0 0 0 0 0 0")],
     "6m", "AutonumadKernelNumaBalancingReenabled", []),
    ("failures-high",
     [(f'autonumad_migration_failures_total{{{_I}, errno="ENOMEM"}}', "0+100x40"),
      (f'autonumad_migrated_pages_total{{{_I}, from_node="1", to_node="0"}}', "0+100x40")],
     "35m", "AutonumadMigrationFailuresHigh", [{"severity": "warning"}]),
    ("failures-rare",
     [(f'autonumad_migration_failures_total{{{_I}, errno="ENOMEM"}}', "0+1x40"),
      (f'autonumad_migrated_pages_total{{{_I}, from_node="1", to_node="0"}}', "0+1000x40")],
     "35m", "AutonumadMigrationFailuresHigh", []),
    ("pass-errors", [(f'autonumad_pass_errors_total{{{_I}, stage="snapshot"}}', "0 0 0 1 1 1")], "4m",
     "AutonumadPassErrors", [{"severity": "warning", "stage": "snapshot"}]),
    ("no-pass-errors", [(f'autonumad_pass_errors_total{{{_I}, stage="snapshot"}}', "0x10")], "8m",
     "AutonumadPassErrors", []),
    ("pass-slow",
     [(f'autonumad_pass_duration_seconds_bucket{{{_I}, le="5.0"}}', "0+0x40"),
      (f'autonumad_pass_duration_seconds_bucket{{{_I}, le="10.0"}}', "0+6x40"),
      (f'autonumad_pass_duration_seconds_bucket{{{_I}, le="+Inf"}}', "0+6x40")],
     "35m", "AutonumadPassSlow", [{"severity": "warning"}]),
    ("tiering-blocked",
     [(f'autonumad_tiering_hot_waiting_bytes{{{_I}, node="0"}}', "67108864x30"),
      (f'autonumad_tiering_headroom_free_bytes{{{_I}, node="0"}}', "40000000x30"),
      (f'autonumad_tiering_promotion_floor_bytes{{{_I}, node="0"}}', "50000000x30")],
     "20m", "AutonumadTieringPromotionBlocked", [{"severity": "warning", "node": "0"}]),
    ("tiering-waiting-with-room",  # room above the floor: it is being promoted, not blocked
     [(f'autonumad_tiering_hot_waiting_bytes{{{_I}, node="0"}}', "67108864x30"),
      (f'autonumad_tiering_headroom_free_bytes{{{_I}, node="0"}}', "90000000x30"),
      (f'autonumad_tiering_promotion_floor_bytes{{{_I}, node="0"}}', "50000000x30")],
     "20m", "AutonumadTieringPromotionBlocked", []),
]


@pytest.mark.parametrize("series,eval_time,alert,expected", [c[1:] for c in _ALERT_CASES],
                         ids=[c[0] for c in _ALERT_CASES])
def test_alert_rules_fire_when_they_should(tmp_path, series, eval_time, alert, expected):
    promtool = _tool("promtool")
    rules = tmp_path / "rules.yml"
    rules.write_text(_without_annotations(RULES.read_text()))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', _I))
    exp = [{"exp_labels": {**labels, "alertname": alert, **e}} for e in expected]
    for e in exp:
        e["exp_labels"].pop("alertname")
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m",
                       "input_series": [{"series": s, "values": v} for s, v in series],
                       "alert_rule_test": [{"eval_time": eval_time, "alertname": alert, "exp_alerts": exp}]}]}
    # JSON is YAML: promtool reads it as is.
    (tmp_path / "test.yml").write_text(json.dumps(test, indent=1))
    r = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_annotations_are_only_what_the_unit_tests_drop():
    stripped = _without_annotations(RULES.read_text())
    assert "annotations" not in stripped and "summary" not in stripped
    assert stripped.count("- alert:") == RULES.read_text().count("- alert:")


def test_dashboard_is_a_grafana_dashboard():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["uid"] and isinstance(doc["schemaVersion"], int)
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "job", "instance"]
    panels = doc["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for p in graphs:
        assert p["type"] in ("timeseries", "stat", "table"), p["title"]
        assert p["title"] and p["description"], p["id"]
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert _referenced_metrics(t["expr"]), (p["title"], t["expr"])
            # Every query is scoped to the selected job and instances.
            assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
