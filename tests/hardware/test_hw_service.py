"""Running as a service on a real kernel (issue 5's "done when").

The config sets numa_balancing = "off": the daemon holds the knob at 0 while
it runs; after a SIGKILL the knob stays 0 until the next start, which finds
the saved originals and restores them (then applies the config again); a
reload with an invalid file is rejected and the daemon runs on with the old
config; SIGTERM restores the original.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardware.workload import start_daemon, write_config

REPO = Path(__file__).resolve().parents[2]
AUTONUMAD = [sys.executable, "-m", "autonumad"]
KNOB = Path("/proc/sys/kernel/numa_balancing")

pytestmark = pytest.mark.topology("2node")


@pytest.fixture
def original_mode():
    before = KNOB.read_text()
    KNOB.write_text("1")
    yield "1"
    KNOB.write_text(before)


def test_knob_held_restored_after_sigkill_and_sigterm_and_bad_reload_kept(tmp_path, original_mode):
    good = (f'[daemon]\ninterval_s = 1.0\nruntime_dir = "{tmp_path}/run"\n'
            '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    cfg = write_config(tmp_path / "autonumad.toml", good)
    log = tmp_path / "daemon.log"

    first = start_daemon(cfg, log)
    assert KNOB.read_text().strip() == "0"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # Killed: nothing restored the knob, but the originals are saved.
    assert KNOB.read_text().strip() == "0"
    saved = json.loads((tmp_path / "run" / "saved-knobs.json").read_text())
    assert saved["knobs"]["numa_balancing"]["value"] == 1

    second = start_daemon(cfg, log)
    try:
        text = log.read_text()
        assert "restored kernel knob numa_balancing to 1" in text, text
        assert KNOB.read_text().strip() == "0"  # and the config applied again

        write_config(cfg, "[balance]\ntarget_local_fraction = 2.0\nno_such_key = 1\n")
        r = subprocess.run([*AUTONUMAD, "reload", "--wait", "--timeout", "60",
                            "--runtime-dir", str(tmp_path / "run")],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "rejected" in r.stderr
        time.sleep(2)
        assert second.poll() is None  # still running
        assert KNOB.read_text().strip() == "0"  # on the old config
        state = json.loads((tmp_path / "run" / "state.json").read_text())
        assert state["last_reload"]["ok"] is False
        assert "target_local_fraction" in state["last_reload"]["error"]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    assert KNOB.read_text().strip() == original_mode
    assert not (tmp_path / "run" / "saved-knobs.json").exists()


@pytest.fixture
def tiering_only_mode():
    """kernel.numa_balancing = 2 before the test: memory tiering only, which on this topology (every
    node top tier) migrates nothing (mm/mprotect.c skips top-tier memory), so the pages move only by
    the daemon; and it differs from the 0 the daemon writes, so the restore is seen. (Mode 1 here
    let the kernel move the workload's pages while the daemon was still starting.)"""
    before = KNOB.read_text()
    KNOB.write_text("2")
    yield "2"
    KNOB.write_text(before)


def test_sigterm_in_the_middle_of_a_move_stops_at_once_and_restores(tmp_path, tiering_only_mode, workloads):
    """SIGTERM while the mover is copying a large process at a low rate: the daemon stops between
    batches (the executor's token bucket waits on the stop event), exits 0 within seconds rather
    than after the move, restores the kernel knob and leaves no state behind; the pages it moved
    stay moved and the process runs on."""
    from autonumad.act.syscalls import page_nodes
    from hardware.workload import Workload

    w = Workload("--mib", "256", "--node", "1", "--cpunode", "0", "--touch-interval-s", "1")
    workloads.append(w)

    def on_node0() -> float:
        nodes = page_nodes(w.pid, w.pages())
        return sum(1 for n in nodes if n == 0) / len(nodes)

    # 16 MiB/s: the 256 MiB take 16 s, passes of 1 s each continue the move.
    cfg = write_config(tmp_path / "autonumad.toml",
                       f'[daemon]\ninterval_s = 1.0\nruntime_dir = "{tmp_path}/run"\n'
                       '[balance]\nmigrate_rate_mib_s = 16\nmin_rss_bytes = "16MiB"\n'
                       '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    log = tmp_path / "daemon.log"
    # Not start_daemon: it waits for the first pass's state.json, and that first pass may be the
    # one that moves all 256 MiB (pass_budget_mib is 1 GiB): watched from the start instead.
    with open(log, "w") as logf:
        daemon = subprocess.Popen([*AUTONUMAD, "run", "--config", str(cfg)], stderr=logf, cwd=REPO)
    try:
        t0 = time.monotonic()
        # Its start-up (imports, knobs) takes seconds in a loaded guest; the move starts after it.
        while "started on" not in log.read_text():
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 90, log.read_text()
            time.sleep(0.2)
        assert on_node0() < 0.05
        while on_node0() < 0.15:
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 90, log.read_text()
            time.sleep(0.2)
        at_signal = on_node0()
        assert at_signal < 0.7, (at_signal, log.read_text())  # still moving
        t = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
        stop_s = time.monotonic() - t
    finally:
        if daemon.poll() is None:
            daemon.kill()
    after = on_node0()
    # The rest of the move would have taken (1 - at_signal) * 16 s.
    assert stop_s < 5.0, (stop_s, at_signal, log.read_text())
    assert at_signal <= after < 0.9, (at_signal, after)
    assert w.proc.poll() is None  # the workload runs on
    assert KNOB.read_text().strip() == tiering_only_mode
    assert not (tmp_path / "run" / "state.json").exists()
    assert not (tmp_path / "run" / "saved-knobs.json").exists()
    print(f"SIGTERM at {at_signal:.0%} moved: exited 0 in {stop_s:.2f} s, {after:.0%} moved at exit")
