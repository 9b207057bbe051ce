"""DAMON on the real kernel (tiered guest, 6.12): set-up, the hot buffer found, clean-up, and after a kill.

Runs inside scripts/numa-vm --topology tiered. A hammered mapping must
read hot (nr_accesses at least tiering.hot_access_fraction of the 20
samples per aggregation at the default 5 ms / 100 ms intervals), and a
mapping touched once and then left must read 0. Under TCG the hammering
process needs periodic TLB flushes for DAMON to see its accesses at all
(tests/hardware/tier_workload.py explains why).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autonumad.observe.damon import KDAMONDS_DIR, DamonSession, MonitoringAttrs, damon_available, read_slots
from autonumad.service.config import TieringConfig
from autonumad.errors import NotSupported
from autonumad.host import LinuxHost
from hardware.tier_workload import TierWorkload
from hardware.workload import Workload

pytestmark = [pytest.mark.hardware, pytest.mark.topology("tiered")]

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def host():
    h = LinuxHost()
    if not damon_available(h):
        pytest.skip("this kernel has no DAMON sysfs")
    assert read_slots(h) == (), "the guest starts with no kdamonds"
    return h


@pytest.fixture
def workloads(spawn):
    return lambda *args: spawn(Workload, *args)


def _bytes(regions, lo, hi, pred):
    return sum(min(r.end, hi) - max(r.start, lo) for r in regions if r.start < hi and r.end > lo and pred(r))


def _histogram(regions, lo, hi):
    hist = {}
    for r in regions:
        if r.start < hi and r.end > lo:
            hist[r.nr_accesses] = hist.get(r.nr_accesses, 0) + (min(r.end, hi) - max(r.start, lo)) / MIB
    return {k: round(v, 1) for k, v in sorted(hist.items())}


def test_finds_each_processs_hot_mapping_and_cleans_up(host, tmp_path):
    # Two processes, so the per-target scheme filters must attribute regions right.
    a = TierWorkload("--hot-mib", "64", "--cold-mib", "64", "--node", "2", "--cpunode", "0")
    b = TierWorkload("--hot-mib", "16", "--cold-mib", "48", "--node", "0", "--cpunode", "1")
    attrs = MonitoringAttrs()
    s = DamonSession(host, tmp_path, attrs)
    try:
        s.monitor([a.pid, b.pid])
        assert [x.state for x in read_slots(host)] == ["on"]
        assert (tmp_path / "damon-owned.json").exists()
        top = attrs.max_nr_accesses
        hot_min = int(top * TieringConfig().hot_access_fraction)

        def found(regions, w) -> bool:
            hot_bytes = _bytes(regions[w.pid], *w.hot, lambda r: r.nr_accesses >= hot_min)
            cold_zero = _bytes(regions[w.pid], *w.cold, lambda r: r.nr_accesses == 0)
            return hot_bytes >= 0.9 * (w.hot[1] - w.hot[0]) and cold_zero >= 0.9 * (w.cold[1] - w.cold[0])

        # DAMON's adaptive regions converge over some aggregation intervals;
        # sample every 2 s until both processes' mappings are told apart.
        t0 = time.monotonic()
        while True:
            time.sleep(2)
            regions = s.regions()
            for w in (a, b):
                print(f"{time.monotonic() - t0:4.0f} s pid {w.pid}: hot MiB by nr_accesses "
                      f"{_histogram(regions[w.pid], *w.hot)}, cold {_histogram(regions[w.pid], *w.cold)}")
            if all(found(regions, w) for w in (a, b)) or time.monotonic() - t0 > 40:
                break
        assert found(regions, a) and found(regions, b)
    finally:
        s.close()
        a.stop()
        b.stop()
    assert read_slots(host) == ()
    assert not (tmp_path / "damon-owned.json").exists()


_KILLED = """
import sys, time
sys.path.insert(0, {root!r})
from autonumad.observe.damon import DamonSession
from autonumad.host import LinuxHost
s = DamonSession(LinuxHost(), {run!r})
s.monitor([{pid}])
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_owner_is_cleaned_up_by_the_next_start(host, tmp_path, workloads):
    w = workloads("--mib", "16", "--touch-interval-s", "0.5")
    child = subprocess.Popen([sys.executable, "-c", _KILLED.format(root=str(ROOT), run=str(tmp_path), pid=w.pid)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (slot,) = read_slots(host)
    assert slot.state == "on" and slot.pid > 0
    assert Path(f"/proc/{slot.pid}").is_dir()  # the kdamond thread outlived its owner
    restarted = DamonSession(host, tmp_path)
    assert restarted.recover() == [0]
    assert read_slots(host) == ()


def test_another_users_kdamond_is_left_alone(host, tmp_path, workloads):
    w = workloads("--mib", "16", "--touch-interval-s", "0.5")
    k = KDAMONDS_DIR
    host.write_text(k + "/nr_kdamonds", "1")
    host.write_text(k + "/0/contexts/nr_contexts", "1")
    host.write_text(k + "/0/contexts/0/operations", "vaddr")
    host.write_text(k + "/0/contexts/0/targets/nr_targets", "1")
    host.write_text(k + "/0/contexts/0/targets/0/pid_target", str(w.pid))
    host.write_text(k + "/0/state", "on")
    try:
        theirs = read_slots(host)
        ours = DamonSession(host, tmp_path)
        assert ours.recover() == []
        with pytest.raises(NotSupported, match="another user"):
            ours.monitor([w.pid])
        assert read_slots(host) == theirs
        # The kernel's own rule that forces this: no resizing while one runs.
        with pytest.raises(OSError) as e:
            host.write_text(k + "/nr_kdamonds", "2")
        assert e.value.errno == 16  # EBUSY
    finally:
        host.write_text(k + "/0/state", "off")
        host.write_text(k + "/nr_kdamonds", "0")
    assert os.path.exists("/sys/kernel/mm/damon/admin")
