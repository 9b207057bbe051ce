"""The one selection (plan/selection.py): balancing and tiering leave the same processes alone, for the same reason."""

from __future__ import annotations

import pytest

from autonumad.observe.snapshot import take_snapshot
from autonumad.plan import selection
from autonumad.service.config import compile_config
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

GiB = 2**30


def process(tmp_path, comm="java", cgroup="/user.slice", policy="default", pid=10, pages=1000):
    spec = HostSpec(nodes=(NodeSpec((0,), 4 * GiB, 2 * GiB, (10, 20)), NodeSpec((1,), 4 * GiB, 2 * GiB, (20, 10))),
                    processes=(ProcessSpec(pid, comm, (ThreadSpec(pid, 0),), cgroup=cgroup,
                                           vmas=(VmaSpec(0x7F0000000000, {1: pages} if pages else {},
                                                         policy=policy),)),))
    snap = take_snapshot(build_host(tmp_path, spec))
    return snap.process(pid), snap.topology


CASES = [
    ("default-selects-all", {}, {}, None),
    ("pid", {"exclude_pids": [10]}, {}, ("excluded-pid", "pid 10 is in balance.exclude_pids")),
    ("comm-search", {"exclude_comm": ["^qemu"]}, {"comm": "qemu-system-x86"},
     ("excluded-comm", "command 'qemu-system-x86' matches balance.exclude_comm '^qemu'")),
    ("comm-anchored-no-match", {"exclude_comm": ["^java$"]}, {"comm": "javac"}, None),
    ("include-miss", {"include_comm": ["^postgres"]}, {},
     ("not-included", "command 'java' matches no balance.include_comm pattern")),
    ("cgroup-below", {"exclude_cgroup": ["/system.slice/db.service"]}, {"cgroup": "/system.slice/db.service/worker"},
     ("excluded-cgroup", "cgroup /system.slice/db.service/worker is under balance.exclude_cgroup "
                         "'/system.slice/db.service'")),
    ("cgroup-sibling-not-excluded", {"exclude_cgroup": ["/system.slice/db"]}, {"cgroup": "/system.slice/db2"}, None),
    ("include-cgroup-miss", {"include_cgroup": ["/machine.slice"]}, {},
     ("not-included", "cgroup /user.slice is under no balance.include_cgroup prefix")),
    ("explicit-policy", {}, {"policy": "bind:1"},
     ("explicit-memory-policy", "memory policy 'bind' set by its owner (numactl/mbind): left as it is")),
    ("exclusion-before-policy", {"exclude_pids": [10]}, {"policy": "bind:1"},
     ("excluded-pid", "pid 10 is in balance.exclude_pids")),
]


@pytest.mark.parametrize("balance,proc,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_select(tmp_path, balance, proc, expected):
    p, topology = process(tmp_path, **proc)
    assert selection.select(p, compile_config({"balance": balance}).balance, topology) == expected


def test_no_memory_is_balancings_own_rule(tmp_path):
    p, topology = process(tmp_path, pages=0)
    assert selection.select(p, compile_config({}).balance, topology) is None
    assert selection.no_memory(p) == ("no-memory", "no resident pages attributed to any node")


def test_pinned_by_owner_only_when_narrowed_by_someone_else(tmp_path):
    p, _ = process(tmp_path)  # allowed on every CPU
    everything = frozenset(p.status.cpus_allowed)
    assert not selection.pinned_by_owner(p, everything, None)
    assert selection.pinned_by_owner(p, everything | {99}, None)
    assert not selection.pinned_by_owner(p, everything | {99}, frozenset(p.status.cpus_allowed))
