"""What the container image relies on: the host-PID-namespace check and the kernel-knob keeper.

The check runs for real in a new PID namespace (unshare(1), as a container
without hostPID has), skipped where unshare is refused. The keeper is run
against a fake runtime directory with a config that manages no knob, so it
touches nothing on this machine, and is stopped with SIGTERM like the kubelet
stops a sidecar.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autonumad.errors import AutonumadError
from autonumad.service.hostview import PROC_PID_INIT_INO, check_host_pid_namespace, pid_namespace_inode

REPO = Path(__file__).resolve().parent.parent


def fake_proc(tmp_path: Path, inode: int, pids=(1, 7, 42)) -> str:
    proc = tmp_path / "proc"
    (proc / "self/ns").mkdir(parents=True)
    (proc / "self/ns/pid").symlink_to(f"pid:[{inode}]")
    for pid in pids:
        (proc / str(pid)).mkdir()
    return str(proc)


def test_the_hosts_namespace_passes(tmp_path):
    proc = fake_proc(tmp_path, PROC_PID_INIT_INO)
    assert pid_namespace_inode(proc) == 0xEFFFFFFC == 4026531836
    check_host_pid_namespace(proc)


def test_a_private_namespace_is_refused_with_what_to_do(tmp_path):
    proc = fake_proc(tmp_path, 4026532178)
    with pytest.raises(AutonumadError) as e:
        check_host_pid_namespace(proc)
    msg = str(e.value)
    assert "cannot see the host's processes" in msg and "pid:[4026532178]" in msg and "its 3 processes" in msg
    assert "--pid=host" in msg and "hostPID: true" in msg and "\n" not in msg


def test_no_namespace_link_says_nothing(tmp_path):
    (tmp_path / "proc").mkdir()
    check_host_pid_namespace(str(tmp_path / "proc"))


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid refused here (needs CAP_SYS_ADMIN)")
def test_run_refuses_in_a_new_pid_namespace_and_allow_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nruntime_dir = "{tmp_path}/run"\n[metrics]\nlisten = ""\n')
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "autonumad", "run", "--once",
           "--dry-run", "--config", str(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("autonumad: error: cannot see the host's processes"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(cmd + ["--allow-pid-namespace"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "cannot see the host's processes" not in r.stderr
    assert r.returncode == 0, r.stderr


def test_knobkeeper_applies_waits_and_restores_on_sigterm(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nruntime_dir = "{tmp_path}/run"\n')  # every knob "keep": nothing written
    keeper = subprocess.Popen([sys.executable, "-m", "autonumad.service.knobkeeper", "--config", str(cfg)],
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = keeper.stderr.readline()
        assert "kernel knobs applied; restoring them on SIGTERM" in line, line
        time.sleep(0.2)
        assert keeper.poll() is None  # it waits
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(60) == 0
        assert "SIGTERM: restoring the kernel knobs" in keeper.stderr.read()
    finally:
        if keeper.poll() is None:
            keeper.kill()


def test_knobkeeper_passes_on_a_failed_apply(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[kernel]\nnuma_balancing = \"sideways\"\n")
    r = subprocess.run([sys.executable, "-m", "autonumad.service.knobkeeper", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 78, r.stderr  # EX_CONFIG from `autonumad sysctl apply`, and no waiting
