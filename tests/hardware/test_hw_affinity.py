"""Thread affinity on every thread of a process, on a real multi-node kernel.

Runs inside the scripts/numa-vm guest (2node: CPU 0 on node 0, CPU 1 on
node 1). The workload runs 4 touching threads (plus its main and stdin
threads) on node 1's CPU; autonumad.act.affinity moves every one of them to
node 0's CPUs. Checked from /proc directly: each thread's
Cpus_allowed_list, and the CPU each thread last ran on. The cpuset tests
make a cgroup v2 cpuset in the guest.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from autonumad.act.affinity import cpuset_cpus, get_process_affinity, set_process_affinity
from autonumad.host import LinuxHost
from autonumad.readers.lists import format_list
from hardware.workload import Workload, memory_nodes, node_cpus, thread_cpus, thread_last_cpu

pytestmark = [pytest.mark.hardware, pytest.mark.topology("2node")]

CGROUP = Path("/sys/fs/cgroup")


@pytest.fixture(scope="module", autouse=True)
def two_cpu_nodes():
    if len(memory_nodes()) < 2 or not node_cpus(0) or not node_cpus(1):
        pytest.skip("needs two nodes with CPUs (run in scripts/numa-vm)")


@pytest.fixture
def workload(spawn):
    return lambda *args: spawn(Workload, *args)


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_every_thread_moves_to_node0(workload):
    w = workload("--mib", "4", "--threads", "4", "--cpunode", "1", "--touch-interval-s", "0.02")
    node0, node1 = node_cpus(0), node_cpus(1)
    host = LinuxHost()
    tids = host.tids(w.pid)
    assert len(tids) >= 5  # main + 4 touching threads (+ stdin watcher)
    assert set(thread_cpus(w.pid).values()) == {format_list(node1)}

    r = set_process_affinity(host, w.pid, node0)
    assert (r.cpus, r.threads_set, r.threads_gone, r.errors) == (frozenset(node0), len(tids), 0, {})
    assert set(thread_cpus(w.pid).values()) == {format_list(node0)}
    assert set(get_process_affinity(host, w.pid).values()) == {frozenset(node0)}
    # And the scheduler honours it: every touching thread soon runs there.
    # (The main and stdin threads sleep; they move when they next wake.)
    workers = w.info["worker_tids"]
    assert len(workers) == 4
    assert wait_until(lambda: {thread_last_cpu(w.pid)[t] for t in workers} <= node0), \
        thread_last_cpu(w.pid)


def test_new_threads_inherit_the_affinity(workload):
    w = workload("--mib", "4", "--threads", "4", "--cpunode", "1", "--touch-interval-s", "0.05")
    node0 = node_cpus(0)
    set_process_affinity(LinuxHost(), w.pid, node0)
    os.kill(w.pid, signal.SIGUSR1)
    ev = w.next_event()
    assert ev["event"] == "thread"
    assert thread_cpus(w.pid)[ev["tid"]] == format_list(node0)
    assert len(thread_cpus(w.pid)) == len(w.info["tids"]) + 1


@pytest.fixture
def cpuset_cgroup():
    """A cgroup v2 cpuset holding only node 1's CPUs, with a child that has no cpuset.

    /sys/fs/cgroup/autonumad-hw        cpuset.cpus = node 1's CPUs
    /sys/fs/cgroup/autonumad-hw/leaf   cpuset controller not enabled: inherits
    """
    if not (CGROUP / "cgroup.controllers").exists() or \
            "cpuset" not in (CGROUP / "cgroup.controllers").read_text().split():
        pytest.skip("no cgroup v2 cpuset controller")
    control = CGROUP / "cgroup.subtree_control"
    enabled_before = "cpuset" in control.read_text().split()
    if not enabled_before:
        control.write_text("+cpuset")
    group = CGROUP / "autonumad-hw"
    group.mkdir()
    leaf = group / "leaf"
    try:
        (group / "cpuset.cpus").write_text(format_list(node_cpus(1)))
        leaf.mkdir()
        yield group, leaf
    finally:
        for g in (leaf, group):
            if g.exists():
                for pid in (g / "cgroup.procs").read_text().split():
                    try:
                        (CGROUP / "cgroup.procs").write_text(pid)
                    except OSError:
                        pass  # already exited
                g.rmdir()
        if not enabled_before:
            control.write_text("-cpuset")


def test_cpuset_limits_the_mask(workload, cpuset_cgroup):
    group, leaf = cpuset_cgroup
    w = workload("--mib", "4", "--threads", "2", "--touch-interval-s", "0.05")
    (leaf / "cgroup.procs").write_text(str(w.pid))
    node0, node1 = node_cpus(0), node_cpus(1)
    host = LinuxHost()

    # The leaf has no cpuset files: the walk finds its parent's.
    assert not (leaf / "cpuset.cpus.effective").exists()
    assert cpuset_cpus(host, w.pid) == frozenset(node1)

    # Asking for all CPUs applies only the allowed ones, and says so.
    r = set_process_affinity(host, w.pid, node0 | node1)
    assert r.cpus == frozenset(node1) and r.errors == {}
    assert set(thread_cpus(w.pid).values()) == {format_list(node1)}

    # Asking only for CPUs outside the cpuset changes nothing.
    r = set_process_affinity(host, w.pid, node0)
    assert r.cpus == frozenset() and r.threads_set == 0
    assert r.errors == {"EINVAL": len(host.tids(w.pid))}
    assert set(thread_cpus(w.pid).values()) == {format_list(node1)}
