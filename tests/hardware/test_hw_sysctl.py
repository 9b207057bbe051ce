"""KnobManager on the real kernel: apply, restore, crash recovery, refusal.

Runs inside the scripts/numa-vm guest (root, a throwaway kernel), where
`kernel.numa_balancing` boots as 1 and `demotion_enabled` as false. Each
test puts back what it found, so the order of tests does not matter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autonumad.host import LinuxHost
from autonumad.readers.knobs import KNOBS, format_knob, read_knob, read_knobs
from autonumad.act.sysctl import SAVED_FILE_NAME, KnobManager

NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"
DEMOTION = "/sys/kernel/mm/numa/demotion_enabled"


def kernel_value(name: str):
    kv = read_knob(LinuxHost(), KNOBS[name])
    assert kv.error is None, kv.error
    return kv.value


def raw(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture
def knob_start():
    """Start from numa_balancing=1 and demotion_enabled=false; put the boot values back after."""
    host = LinuxHost()
    before = {n: read_knob(host, KNOBS[n]) for n in ("numa_balancing", "demotion_enabled")}
    if before["numa_balancing"].path is None:
        pytest.skip("kernel without NUMA balancing")
    host.write_text(NUMA_BALANCING, "1\n")
    if before["demotion_enabled"].path is not None:
        host.write_text(DEMOTION, "false\n")
    yield
    for name, kv in before.items():
        if kv.path is not None and kv.value is not None:
            host.write_text(kv.path, format_knob(KNOBS[name], kv.value))


def test_numa_balancing_apply_and_restore(tmp_path, knob_start):
    mgr = KnobManager(LinuxHost(), tmp_path)
    [change] = mgr.apply({"numa_balancing": 0})
    assert (change.outcome, change.old, change.new) == ("written", 1, 0)
    assert raw(NUMA_BALANCING) == "0\n"
    assert mgr.verify({"numa_balancing": 0}) == []
    [change] = mgr.restore()
    assert (change.outcome, change.new) == ("restored", 1)
    assert raw(NUMA_BALANCING) == "1\n"
    assert not (tmp_path / SAVED_FILE_NAME).exists()


def test_numa_balancing_tiering_modes(tmp_path, knob_start):
    """Modes 2 and 3 (memory tiering, v5.18+) are accepted by this kernel."""
    mgr = KnobManager(LinuxHost(), tmp_path)
    for mode in (2, 3):
        assert [c.outcome for c in mgr.apply({"numa_balancing": mode})] == ["written"]
        assert kernel_value("numa_balancing") == mode
    mgr.restore()
    assert kernel_value("numa_balancing") == 1


def test_demotion_enabled_apply_and_restore(tmp_path, knob_start):
    if not os.path.exists(DEMOTION):
        pytest.skip("kernel without demotion_enabled")
    mgr = KnobManager(LinuxHost(), tmp_path)
    [change] = mgr.apply({"demotion_enabled": True})
    assert (change.outcome, change.old, change.new) == ("written", False, True)
    assert raw(DEMOTION) == "true\n"
    [change] = mgr.restore()
    assert change.outcome == "restored"
    assert raw(DEMOTION) == "false\n"


def test_drift_detected_on_the_real_kernel(tmp_path, knob_start):
    mgr = KnobManager(LinuxHost(), tmp_path)
    mgr.apply({"numa_balancing": 0})
    with open(NUMA_BALANCING, "w") as f:  # an admin (or tuned) steps in
        f.write("1\n")
    [drift] = mgr.verify({"numa_balancing": 0})
    assert (drift.name, drift.expected, drift.actual) == ("numa_balancing", 0, 1)
    mgr.restore()


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from autonumad.host import LinuxHost
    from autonumad.act.sysctl import KnobManager
    changes = KnobManager(LinuxHost(), sys.argv[1]).apply(
        {"numa_balancing": 0, "demotion_enabled": True})
    assert all(c.outcome == "written" for c in changes), changes
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_recovery_after_sigkill(tmp_path, knob_start):
    if not os.path.exists(DEMOTION):
        pytest.skip("kernel without demotion_enabled")
    p = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    # The run died holding the knobs: the kernel still has its values.
    assert (raw(NUMA_BALANCING), raw(DEMOTION)) == ("0\n", "true\n")
    assert (tmp_path / SAVED_FILE_NAME).exists()

    changes = {c.name: c for c in KnobManager(LinuxHost(), tmp_path).recover()}
    assert changes["numa_balancing"].outcome == "restored"
    assert changes["demotion_enabled"].outcome == "restored"
    assert (raw(NUMA_BALANCING), raw(DEMOTION)) == ("1\n", "false\n")
    assert not (tmp_path / SAVED_FILE_NAME).exists()
    assert KnobManager(LinuxHost(), tmp_path).recover() == []


WITHOUT_SYS_ADMIN = textwrap.dedent("""
    import json, sys
    from autonumad.host import LinuxHost
    from autonumad.act.sysctl import KnobManager
    changes = KnobManager(LinuxHost(), sys.argv[1]).apply(
        {"numa_balancing": 0, "demotion_enabled": True})
    print(json.dumps({c.name: [c.outcome, c.error] for c in changes}))
""")


def test_numa_balancing_refused_without_cap_sys_admin(tmp_path, knob_start):
    """Root without CAP_SYS_ADMIN (the daemon's bounding set) cannot write
    numa_balancing (kernel/sched/core.c sysctl_numa_balancing) but can write
    the 0644 demotion_enabled file: the first is refused, the second applied."""
    if shutil.which("setpriv") is None or not os.path.exists(DEMOTION):
        pytest.skip("needs setpriv and demotion_enabled")
    import json

    # Dropping the capability from the bounding and inheritable sets before
    # exec removes it from the new program's permitted and effective sets
    # (capabilities(7), "Transformation of capabilities during execve()").
    p = subprocess.run(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c",
                        WITHOUT_SYS_ADMIN, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["numa_balancing"][0] == "refused"
    assert result["numa_balancing"][1].startswith("EPERM")
    assert result["demotion_enabled"][0] == "written"
    assert raw(NUMA_BALANCING) == "1\n"

    changes = {c.name: c.outcome for c in KnobManager(LinuxHost(), tmp_path).restore()}
    assert changes == {"numa_balancing": "unchanged", "demotion_enabled": "restored"}
    assert raw(DEMOTION) == "false\n"


@pytest.fixture
def debugfs():
    """Mount debugfs if it is not (the scan knobs live there since v5.13)."""
    path = Path("/sys/kernel/debug")
    mounted_here = False
    if not (path / "sched").exists():
        r = subprocess.run(["mount", "-t", "debugfs", "debugfs", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount debugfs: {r.stderr.strip()}")
        mounted_here = True
    if not (path / "sched/numa_balancing").is_dir():
        pytest.skip("no sched/numa_balancing in debugfs")
    yield
    if mounted_here:
        subprocess.run(["umount", str(path)], check=False)


def test_scan_knobs_in_debugfs(tmp_path, debugfs):
    knobs = read_knobs(LinuxHost())
    kv = knobs["scan_delay_ms"]
    assert kv.path == "/sys/kernel/debug/sched/numa_balancing/scan_delay_ms"
    assert isinstance(kv.value, int)
    assert knobs["hot_threshold_ms"].value is not None
    original = kv.value
    mgr = KnobManager(LinuxHost(), tmp_path)
    assert [c.outcome for c in mgr.apply({"scan_delay_ms": original + 500})] == ["written"]
    assert kernel_value("scan_delay_ms") == original + 500
    assert [c.outcome for c in mgr.restore()] == ["restored"]
    assert kernel_value("scan_delay_ms") == original


def test_scan_knobs_absent_without_debugfs(tmp_path):
    if os.path.exists("/sys/kernel/debug/sched"):
        pytest.skip("debugfs is mounted")
    changes = KnobManager(LinuxHost(), tmp_path).apply({"scan_size_mb": 128})
    assert [(c.outcome, c.is_warning) for c in changes] == [("absent", True)]
    assert not (tmp_path / SAVED_FILE_NAME).exists()
