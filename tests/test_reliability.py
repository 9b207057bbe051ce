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
    report = Daemon(host, demo_config(tmp_path / "run", 10.0), manage_knobs=False).run_pass()  # deadline 8 s: the move completes
    assert report.snapshot.skipped == ()
    assert report.snapshot.process(1001).cgroup == "/"
    done = {(o.action.pid, o.action.kind) for o in report.outcomes if o.status == "done"}
    assert (1001, "migrate") in done and (2001, "set_affinity") in done


def test_malformed_cgroup_file_does_not_hide_a_process(tmp_path):
    """An optional attribute that cannot be parsed never hides a process from balancing."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/1001/cgroup").write_text("garbage without colons\n")
    report = Daemon(host, demo_config(tmp_path / "run", 10.0), manage_knobs=False).run_pass()  # deadline 8 s: the move completes
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
    from autonumad.plan.policy import decide
    from autonumad.observe.snapshot import ScanLimits, take_snapshot

    host = build_demo_host(tmp_path / "host")
    c = config(tmp_path)
    snap = take_snapshot(host, ScanLimits(min_rss_bytes=c.balance.min_rss_bytes))
    history = History()
    history.observe(snap, 0.0)
    decision = decide(snap, history, c.balance, 0.0)
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


# -- the CLI daemon: one instance, reload by identity, state per host ------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from autonumad.readers.knobs import read_knobs  # noqa: E402


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def start_daemon(host_dir: Path, cfg: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "autonumad", "run", "--root", str(host_dir), "--config", str(cfg),
                             *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (run_dir / "state.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"daemon did not start: {proc.stderr.read()}")
        time.sleep(0.05)
    return proc


def stop_daemon(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    return proc.stderr.read()


def test_second_run_refuses_and_clean_stop_removes_state(tmp_path):
    """main: a second `run` "recovered" the live daemon's saved knobs; state.json was never removed."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/sys/kernel/numa_balancing").write_text("1\n")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\ninterval_s = 60\n'
                                            '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    first = start_daemon(host.root, cfg, run)
    try:
        assert read_knobs(host)["numa_balancing"].value == 0
        second = subprocess.run([sys.executable, "-m", "autonumad", "run", "--root", str(host.root), "--config",
                                 str(cfg), "--once"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another autonumad daemon" in second.stderr and "Traceback" not in second.stderr
        assert second.stderr.count("\n") == 1
        assert read_knobs(host)["numa_balancing"].value == 0  # the first one's setting is untouched
        assert first.poll() is None
    finally:
        err = stop_daemon(first)
    assert "Traceback" not in err
    assert not (run / "state.json").exists()
    assert read_knobs(host)["numa_balancing"].value == 1


def test_reload_signals_only_the_daemon_state_json_names(tmp_path):
    """main: `reload` sent SIGHUP to whatever process had the pid of a stale state.json (killed a `sleep`)."""
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (run / "state.json").write_text(json.dumps({"pid": sleeper.pid, "generation": 0, "start_ticks": 1}))
        assert main(["reload", "--runtime-dir", str(run)]) == 1
        time.sleep(0.2)
        assert sleeper.poll() is None  # alive: not signalled
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reload_reaches_the_live_daemon(tmp_path):
    host = build_demo_host(tmp_path / "host")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\ninterval_s = 60\n'
                                            '[metrics]\nlisten = ""\n')
    proc = start_daemon(host.root, cfg, run, "--dry-run")
    try:
        r = subprocess.run([sys.executable, "-m", "autonumad", "reload", "--runtime-dir", str(run), "--wait"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "reloaded (generation 1)" in r.stdout
    finally:
        stop_daemon(proc)


def test_sysctl_apply_beside_a_running_daemon_does_not_restore_its_originals(tmp_path):
    """issue 13: ExecReload=+sysctl apply called crash recovery: the knob went 0 -> 1 -> 0 on every reload."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/sys/kernel/numa_balancing").write_text("1\n")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\ninterval_s = 60\n'
                                            '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    sysctl = [sys.executable, "-m", "autonumad", "sysctl", "apply", "--root", str(host.root), "--config", str(cfg),
              "--json"]
    start = subprocess.run(sysctl, capture_output=True, text=True, timeout=60)  # ExecStartPre
    assert start.returncode == 0, start.stderr
    assert read_knobs(host)["numa_balancing"].value == 0
    proc = start_daemon(host.root, cfg, run, "--kernel-knobs=external")
    try:
        reload = subprocess.run(sysctl, capture_output=True, text=True, timeout=60)  # ExecReload
        assert reload.returncode == 0, reload.stderr
        outcomes = [c["outcome"] for c in json.loads(reload.stdout)["changes"]]
        assert outcomes == ["unchanged"], outcomes  # main: ["restored", "written"]
        saved = json.loads((run / "saved-knobs.json").read_text())
        assert saved["knobs"]["numa_balancing"]["value"] == 1  # the original is still saved
    finally:
        stop_daemon(proc)


def test_root_run_keeps_its_state_inside_the_root(tmp_path, monkeypatch):
    """main: `run --root DIR` used the real /run/autonumad (and consumed a real daemon's saved originals)."""
    from autonumad.service.runtime import runtime_dir_for

    host = build_demo_host(tmp_path / "host")
    assert runtime_dir_for(Config(), host) == host.root.resolve() / "run/autonumad"
    cfg = write_config(tmp_path / "c.toml", '[metrics]\nlisten = ""\n')  # default runtime_dir
    r = subprocess.run([sys.executable, "-m", "autonumad", "run", "--root", str(host.root), "--config", str(cfg),
                        "--once", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (host.root / "run/autonumad/state.json").exists()  # removed at the clean stop...
    assert (host.root / "run/autonumad/lock").exists()  # ...but it was there, inside the root


def test_dry_run_writes_no_kernel_knob(tmp_path):
    """main: `run --dry-run` applied the [kernel] knobs at start (help, README and config say it changes nothing)."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/sys/kernel/numa_balancing").write_text("1\n")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\n'
                                            '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    before = {p: p.read_text() for p in (host.root / "proc/sys").rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-m", "autonumad", "run", "--root", str(host.root), "--config", str(cfg),
                        "--once", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert {p: p.read_text() for p in before} == before
    assert not (run / "saved-knobs.json").exists()
    # Written and put back at exit would leave the same tree: the log says whether it was written.
    assert "kernel knob numa_balancing: 1 -> 0" not in r.stderr, r.stderr


def test_pins_of_a_crashed_daemon_are_undone_at_the_next_start(tmp_path):
    """main: after a SIGKILL the daemon's pins stayed forever (and were then taken for the owner's)."""
    host = build_demo_host(tmp_path / "host")
    run = tmp_path / "run"
    original = {host.thread_affinity(t) for t in host.tids(2001)}
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\ninterval_s = 60\n'
                                            '[metrics]\nlisten = ""\n')
    proc = start_daemon(host.root, cfg, run)
    pinned = {host.thread_affinity(t) for t in host.tids(2001)}
    assert pinned != original  # java: task follows memory
    assert json.loads((run / "pins.json").read_text())["pins"][0]["pid"] == 2001
    proc.kill()  # a crash: no clean stop
    proc.wait()
    run_once = [sys.executable, "-m", "autonumad", "run", "--root", str(host.root), "--config", str(cfg), "--once"]
    dry = subprocess.run(run_once + ["--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert {host.thread_affinity(t) for t in host.tids(2001)} == pinned  # a dry run changes nothing...
    assert (run / "pins.json").exists()  # ...and leaves the record for the next real start
    host.path("/proc/2001/numa_maps").write_text("")  # nothing for the real pass to re-pin
    r = subprocess.run(run_once, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "previous autonumad run pinned" in r.stderr
    assert {host.thread_affinity(t) for t in host.tids(2001)} == original
    assert not (run / "pins.json").exists()


def test_pins_of_a_reused_pid_are_not_undone(tmp_path):
    host = build_demo_host(tmp_path / "host")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\ninterval_s = 60\n'
                                            '[metrics]\nlisten = ""\n')
    proc = start_daemon(host.root, cfg, run)
    pinned = {host.thread_affinity(t) for t in host.tids(2001)}
    proc.kill()
    proc.wait()
    _set_start_ticks(host, 2001, 4242)  # the pinned process died; its pid went to a new one
    host.path("/proc/2001/numa_maps").write_text("")  # nothing for the real pass to decide about it
    r = subprocess.run([sys.executable, "-m", "autonumad", "run", "--root", str(host.root), "--config", str(cfg),
                        "--once"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert {host.thread_affinity(t) for t in host.tids(2001)} == pinned  # the new owner's, as it is


# -- bad input and signals -------------------------------------------------------------------


def test_corrupt_saved_knobs_and_sighup_keep_the_daemon_and_restore_at_stop(tmp_path):
    """main: a corrupt saved-knobs file plus SIGHUP: the daemon exited and left the knob changed."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/sys/kernel/numa_balancing").write_text("1\n")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{run}"\ninterval_s = 60\n'
                                            '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    proc = start_daemon(host.root, cfg, run)
    try:
        assert read_knobs(host)["numa_balancing"].value == 0
        (run / "saved-knobs.json").write_bytes(b"\xff{torn")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while json.loads((run / "state.json").read_text()).get("generation") != 1:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        err = stop_daemon(proc)
    assert "Traceback" not in err
    assert "using the originals this daemon saved earlier" in err
    assert read_knobs(host)["numa_balancing"].value == 1  # its original, restored at stop


def _broken_tree(tmp_path: Path):
    """The fake-tree inputs that crashed main with tracebacks (issue 10)."""
    import re

    host = build_demo_host(tmp_path / "host")
    host.path("/proc/777").write_text("a pid entry that is a file\n")
    host.path("/proc/3001/numa_maps").unlink()
    host.path("/proc/3001/numa_maps").mkdir()
    nm = host.path("/proc/1001/numa_maps")
    nm.write_text(re.sub(r"N0=\d+", "N0=" + "9" * 300, nm.read_text(), count=1))
    st = host.path("/proc/2001/status")
    st.write_text(re.sub(r"VmRSS:\t\d+", "VmRSS:\t" + "9" * 300, st.read_text()))
    for p in host.path("/proc/5001/task").glob("*/stat"):
        f = p.read_text().split(" ")
        f[13] = "9" * 300  # utime
        p.write_text(" ".join(f))
    return host


def test_broken_fake_trees_give_typed_one_line_outcomes(tmp_path, capsys):
    """main: a pid entry that is a file, numa_maps that is a directory, 300-digit counts: tracebacks."""
    host = _broken_tree(tmp_path)
    report = Daemon(host, config(tmp_path), manage_knobs=False).run_pass()
    skipped = {s.pid: s for s in report.snapshot.skipped}
    assert set(skipped) == {777, 1001, 2001, 3001, 5001}, skipped
    assert {s.kind for s in skipped.values()} == {"malformed"}
    assert main(["status", "--root", str(host.root), "--json"]) == 0
    assert main(["explain", "3001", "--root", str(host.root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "numa_maps: Is a directory" in err


def test_run_once_fails_when_the_pass_cannot_read_the_host(tmp_path):
    """main: `run --once` exited 0 although its only pass could not read the host."""
    host = build_demo_host(tmp_path / "host")
    host.path("/proc/vmstat").unlink()
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\n[metrics]\nlisten = ""\n')
    r = subprocess.run([sys.executable, "-m", "autonumad", "run", "--root", str(host.root), "--config", str(cfg),
                        "--once", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "/proc/vmstat" in r.stderr and "Traceback" not in r.stderr


def test_interval_on_the_command_line_is_validated_like_interval_s(capsys):
    """main: -1, 0 and nan busy-looped, inf never passed again, 0.0001 spun at 95 % CPU."""
    import pytest

    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        for bad in ("-1", "0", "0.0001", "nan", "inf", "ten"):
            with pytest.raises(SystemExit) as ei:
                main(["run", "--interval", bad, "--once"])
            assert ei.value.code == 2
            err = capsys.readouterr().err
            assert err.strip().splitlines()[-1].startswith("autonumad run: error: argument --interval"), err
    finally:
        for s, h in saved.items():  # `run` installs its early handlers first thing
            signal.signal(s, h)
    import argparse

    from autonumad.cli import _interval_arg

    assert _interval_arg("0.5") == 0.5 and _interval_arg("3600") == 3600.0
    for bad in ("3601", "0.49"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\[0.5, 3600\]"):
            _interval_arg(bad)


def test_a_config_path_or_dropin_that_is_a_directory_is_one_line(tmp_path, capsys):
    """main: IsADirectoryError traceback at start, and the daemon died on SIGHUP."""
    d = tmp_path / "etc"
    (d / "adir.toml").mkdir(parents=True)
    assert main(["check-config", str(d / "adir.toml")]) == 78
    assert "not a regular file (a directory)" in capsys.readouterr().err
    cfg = write_config(d / "autonumad.toml", '[metrics]\nlisten = ""\n')
    (d / "conf.d" / "10-x.toml").mkdir(parents=True)
    assert main(["check-config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert "conf.d/10-x.toml: not a regular file" in err and "Traceback" not in err
    # And a reload meeting it keeps the running config.
    host = build_demo_host(tmp_path / "host")
    d2 = Daemon(host, config(tmp_path), config_path=str(cfg), manage_knobs=False)
    assert d2.reload() is False and "not a regular file" in d2.last_reload["error"]


def run_signalled_during_start_up(signame: str, host, cfg, *args: str) -> subprocess.CompletedProcess:
    """`autonumad run --root HOST --config CFG ARGS` in a child that sends itself `signame` while its
    config is being loaded: the earliest point a test can reach in-process, before the daemon's own
    handlers (cli._EarlySignals holds the signal meanwhile)."""
    script = f"""
import os, signal, sys
import autonumad.cli as cli
real = cli._load_config
def slow_load(*a, **k):
    os.kill(os.getpid(), signal.{signame})
    return real(*a, **k)
cli._load_config = slow_load
sys.exit(cli.main(["run", "--root", {str(host.root)!r}, "--config", {str(cfg)!r}, *{list(args)!r}]))
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_sighup_during_start_up_does_not_kill_the_daemon(tmp_path):
    """main: SIGHUP in the first ~0.1 s (before the daemon's handlers) terminated it."""
    host = build_demo_host(tmp_path / "host")
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\n[metrics]\nlisten = ""\n')
    r = run_signalled_during_start_up("SIGHUP", host, cfg, "--once", "--dry-run")
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "configuration reloaded" in r.stderr  # the early SIGHUP was handed to the daemon


def test_the_fake_host_does_not_follow_symlinks_out_of_its_root(tmp_path, capsys):
    """A symlink in a fake tree must not make a view read, or an actuator write, outside the tree."""
    host = build_demo_host(tmp_path / "host")
    secret = tmp_path / "secret"
    secret.write_text("root:$6$hash:0:0\n")
    nm = host.path("/proc/1001/numa_maps")
    nm.unlink()
    nm.symlink_to(secret)
    knob = tmp_path / "real-knob"
    knob.write_text("1\n")
    host.path("/proc/sys/kernel/numa_balancing").unlink()
    host.path("/proc/sys/kernel/numa_balancing").symlink_to(knob)
    report = Daemon(host, config(tmp_path), manage_knobs=False).run_pass()
    assert report.snapshot.process(1001) is None
    assert any(s.pid == 1001 and s.kind == "denied" for s in report.snapshot.skipped)
    import pytest

    with pytest.raises(PermissionError):
        host.write_text("/proc/sys/kernel/numa_balancing", "0")
    assert knob.read_text() == "1\n" and secret.read_text() == "root:$6$hash:0:0\n"
    assert main(["explain", "1001", "--root", str(host.root)]) == 1
    assert "root:$6$" not in capsys.readouterr().out


def test_sigterm_during_start_up_stops_without_touching_the_knobs(tmp_path):
    """SIGTERM before the daemon's first pass: it stops (exit 0) without writing the kernel knobs its
    config names, rather than applying them and restoring them a moment later."""
    host = build_demo_host(tmp_path / "host")
    knob = host.path("/proc/sys/kernel/numa_balancing")
    knob.write_text("1\n")
    cfg = write_config(tmp_path / "c.toml", f'[daemon]\nruntime_dir = "{tmp_path}/run"\n'
                       '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    r = run_signalled_during_start_up("SIGTERM", host, cfg)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "stop requested during start-up" in r.stderr, r.stderr
    assert "written" not in r.stderr and knob.read_text() == "1\n", r.stderr
    assert not (tmp_path / "run" / "saved-knobs.json").exists()
