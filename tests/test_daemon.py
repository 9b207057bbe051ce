"""The daemon loop on fake hosts: passes, dry run, stop, reload, kernel knobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path


from autonumad.service.config import Config, load_config
from autonumad.service.daemon import Daemon
from autonumad.sim.demo import build_demo_host, demo_config
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host
from autonumad.readers.knobs import read_knobs
from autonumad.readers.numa_maps import read_numa_maps

GiB = 2**30
REPO = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, **balance) -> Config:
    # 5 s: the fake host rewrites files per 16 MiB batch, ~1 s of wall time for the
    # demo's 2 GiB on a loaded machine, and the pass deadline (80 % of the interval)
    # is checked per batch.
    c = demo_config(tmp_path / "run", 5.0)
    return replace(c, balance=replace(c.balance, **balance)) if balance else c


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_pass_on_the_demo_host_acts_with_reasons(tmp_path):
    host = build_demo_host(tmp_path / "host")
    d = Daemon(host, config(tmp_path), manage_knobs=False)
    report = d.run_pass()
    kinds = {(o.action.pid, o.action.kind, o.status) for o in report.outcomes}
    assert (1001, "migrate", "done") in kinds  # postgres: memory follows its pinned task
    assert (2001, "set_affinity", "done") in kinds  # java: task follows memory
    assert report.decision.verdicts[4001].rule == "explicit-memory-policy"
    assert report.decision.verdicts[5001].rule == "excluded-comm"
    assert report.decision.verdicts[6001].rule == "too-large"
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["passes"] == 1 and state["last_pass"]["actions"]


def test_dry_run_changes_nothing_and_decides_the_same(tmp_path, caplog):
    real_host = build_demo_host(tmp_path / "a")
    dry_host = build_demo_host(tmp_path / "b")
    before = tree_digest(dry_host.root)
    dry = Daemon(dry_host, config(tmp_path), dry_run=True, manage_knobs=False).run_pass()
    assert tree_digest(dry_host.root) == before
    assert all(o.status == "dry-run" for o in dry.outcomes)
    real = Daemon(real_host, config(tmp_path), manage_knobs=False).run_pass()
    assert [(a.pid, a.kind, a.reason) for a in dry.decision.actions] == \
           [(a.pid, a.kind, a.reason) for a in real.decision.actions]
    assert tree_digest(real_host.root) != tree_digest(dry_host.root)


def test_demo_converges(tmp_path):
    host = build_demo_host(tmp_path / "host")
    c = config(tmp_path, cooldown_s=0.0)
    d = Daemon(host, c, manage_knobs=False)
    for _ in range(4):
        report = d.run_pass()
    for pid in (1001, 2001, 3001):
        p = report.snapshot.process(pid)
        assert p.local_fraction() >= 0.9, (pid, p.pages_by_node, p.running_nodes)
    # The ones the rules leave alone are exactly as they were.
    assert read_numa_maps(host, 4001).pages_by_node() == {0: 262144, 1: 262144}
    assert read_numa_maps(host, 5001).pages_by_node() == {0: 131072}


def test_stop_within_a_second(tmp_path):
    host = build_demo_host(tmp_path / "host")
    c = replace(config(tmp_path), daemon=replace(config(tmp_path).daemon, interval_s=60.0))
    d = Daemon(host, c, manage_knobs=False)
    t = threading.Thread(target=d.run)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    d.request_stop()
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 1.0


def knob_host(tmp_path: Path, numa_balancing: str = "1"):
    knobs = dict(HostSpec(nodes=()).knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = numa_balancing
    spec = HostSpec(nodes=(NodeSpec((0,), 4 * GiB, 2 * GiB, (10, 21)), NodeSpec((1,), 4 * GiB, 2 * GiB, (21, 10))),
                    processes=(ProcessSpec(100, "app", (ThreadSpec(100, 0),), vmas=(VmaSpec(0x1000, {0: 10}),)),),
                    knobs=knobs)
    return build_host(tmp_path / "host", spec)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def test_kernel_knobs_applied_while_running_and_restored_at_exit(tmp_path):
    host = knob_host(tmp_path)
    cfg_path = write_config(tmp_path / "a.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\ninterval_s = 0.5\n'
                                                 '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    d = Daemon(host, load_config(cfg_path), config_path=str(cfg_path))
    t = threading.Thread(target=d.run)
    t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and read_knobs(host)["numa_balancing"].value != 0:
        time.sleep(0.05)
    assert read_knobs(host)["numa_balancing"].value == 0
    assert (tmp_path / "run" / "saved-knobs.json").exists()
    d.request_stop()
    t.join(5)
    assert read_knobs(host)["numa_balancing"].value == 1
    assert not (tmp_path / "run" / "saved-knobs.json").exists()


def test_crash_leaves_saved_knobs_that_the_next_start_restores(tmp_path):
    host = knob_host(tmp_path)
    cfg_path = write_config(tmp_path / "a.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\n'
                                                 '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    crashed = Daemon(host, load_config(cfg_path))
    from autonumad.act.sysctl import KnobManager

    crashed.knobs = KnobManager(host, tmp_path / "run")
    crashed._apply_knobs()  # then "SIGKILL": no shutdown
    assert read_knobs(host)["numa_balancing"].value == 0
    # The next start with a config that keeps the knob finds the saved originals.
    keep = write_config(tmp_path / "b.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\n[metrics]\nlisten = ""\n')
    Daemon(host, load_config(keep)).run(once=True)
    assert read_knobs(host)["numa_balancing"].value == 1


def test_reload_with_invalid_file_keeps_running_config(tmp_path, caplog):
    host = knob_host(tmp_path)
    cfg_path = write_config(tmp_path / "a.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\n'
                                                 '[balance]\ntarget_local_fraction = 0.8\n[metrics]\nlisten = ""\n')
    d = Daemon(host, load_config(cfg_path), config_path=str(cfg_path), manage_knobs=False)
    write_config(cfg_path, "[balance]\ntarget_local_fraction = 7\nbogus = 1\n")
    assert d.reload() is False
    assert d.config.balance.target_local_fraction == 0.8
    assert d.last_reload["ok"] is False and "target_local_fraction" in d.last_reload["error"]
    write_config(cfg_path, f'[daemon]\nruntime_dir = "{tmp_path}/run"\n[balance]\ntarget_local_fraction = 0.95\n'
                           '[metrics]\nlisten = ""\n')
    assert d.reload() is True
    assert d.config.balance.target_local_fraction == 0.95


def test_single_node_host_says_so_once_and_does_nothing(tmp_path, caplog):
    spec = HostSpec(nodes=(NodeSpec((0, 1), 8 * GiB, 4 * GiB, (10,)),),
                    processes=(ProcessSpec(100, "app", (ThreadSpec(100, 0),), vmas=(VmaSpec(0x1000, {0: 30000}),)),))
    host = build_host(tmp_path / "host", spec)
    d = Daemon(host, config(tmp_path), manage_knobs=False)
    with caplog.at_level("INFO", logger="autonumad"):
        for _ in range(3):
            report = d.run_pass()
    assert report.outcomes == []
    assert sum("single NUMA node" in r.message for r in caplog.records) == 1


def test_sigterm_stops_the_cli_daemon_promptly(tmp_path):
    host_dir = tmp_path / "host"
    build_demo_host(host_dir)
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\ninterval_s = 60\n'
                                            '[metrics]\nlisten = ""\n')
    proc = subprocess.Popen([sys.executable, "-m", "autonumad", "run", "--root", str(host_dir), "--config", str(cfg),
                             "--dry-run"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "run" / "state.json").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 1.5
    err = proc.stderr.read()
    assert "autonumad stopped" in err
    assert "Traceback" not in err
