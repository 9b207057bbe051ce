"""Process identity on the running kernel: pidfds, start times, a reaped process (act/identity.py).

Real processes, real pidfd_open(2) and /proc: nothing here is faked. The
pid-reuse storm with a lowered pid_max is a guest test
(tests/hardware/test_hw_pid_reuse.py); here one child at a time.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from autonumad.act import identity
from autonumad.act.affinity import set_process_affinity
from autonumad.errors import ProcessGone
from autonumad.host import LinuxHost


@pytest.fixture
def child():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    if p.poll() is None:
        p.kill()
        p.wait()


def test_start_time_is_stat_field_22(child):
    host = LinuxHost()
    with open(f"/proc/{child.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert identity.start_ticks(host, child.pid) == int(fields[19])  # field 22 is the 20th after comm


def test_handle_holds_a_live_process_and_notices_its_exit(child):
    host = LinuxHost()
    start = identity.start_ticks(host, child.pid)
    with identity.Handle.open(host, child.pid, start) as h:
        if hasattr(os, "pidfd_open"):
            assert h.pidfd is not None
        h.check()  # alive: no exception
        child.kill()
        child.wait()  # reaped: the pid is free for reuse now
        with pytest.raises(ProcessGone):
            h.check()


def test_wrong_start_time_is_refused_before_anything_is_done(child):
    host = LinuxHost()
    start = identity.start_ticks(host, child.pid)
    with pytest.raises(identity.ProcessReplaced, match="pid reused"):
        identity.hold(host, child.pid, start + 1)
    with pytest.raises(identity.ProcessReplaced, match="unknown"):
        identity.hold(host, child.pid, 0)


def test_actuators_refuse_once_the_held_process_is_gone(child):
    """The check the actuators make per step (check_held) fires for a process reaped mid-action."""
    host = LinuxHost()
    pid = child.pid
    identity.hold(host, pid, identity.start_ticks(host, pid))
    try:
        before = os.sched_getaffinity(pid)
        set_process_affinity(host, pid, before)  # alive and the same: allowed
        child.kill()
        child.wait()
        with pytest.raises(ProcessGone):
            set_process_affinity(host, pid, before)
        with pytest.raises(ProcessGone):
            host.move_pages(pid, 0x1000, 0x2000, 4096, 0)
    finally:
        identity.release(host)


def test_start_time_alone_without_pidfd(child, monkeypatch):
    """Kernels before 5.3 (or a sandbox refusing pidfd_open): the start time is re-read at every check."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    host = LinuxHost()
    start = identity.start_ticks(host, child.pid)
    h = identity.Handle.open(host, child.pid, start)
    assert h.pidfd is None
    h.check()
    child.kill()
    child.wait()
    with pytest.raises(ProcessGone):
        h.check()
