"""The numa-vm guest itself: the kernel sees the topology scripts/numa-vm promises.

These check the harness, not autonumad: node count, which nodes have CPUs,
distances and memory tiers, from sysfs and from numactl (an independent
reader), against the topology definitions below (kept in step with
TOPOLOGIES in scripts/numa-vm and docs/numa-vm.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Cheap (about a second): they check every guest of the matrix, including
# the no-cgroup and 6.1-kernel ones.
pytestmark = pytest.mark.every_guest

NODE_SYSFS = Path("/sys/devices/system/node")
TIER_SYSFS = Path("/sys/devices/virtual/memory_tiering")

# topology -> (CPUs of each node, distances between node pairs)
EXPECTED = {
    "2node": ({0: {0}, 1: {1}}, {(0, 1): 21}),
    "tiered": ({0: {0}, 1: {1}, 2: set()}, {(0, 1): 21, (0, 2): 24, (1, 2): 28}),
    "4node": ({0: {0}, 1: {1}, 2: {2}, 3: {3}},
              {(0, 1): 21, (0, 2): 21, (0, 3): 31, (1, 2): 31, (1, 3): 21, (2, 3): 21}),
    "2x2": ({0: {0, 1}, 1: {2, 3}}, {(0, 1): 21}),
    "4x2": ({0: {0, 1}, 1: {2, 3}, 2: {4, 5}, 3: {6, 7}},
            {(0, 1): 21, (0, 2): 21, (0, 3): 31, (1, 2): 31, (1, 3): 21, (2, 3): 21}),
}


def parse_list(text: str) -> set[int]:
    """Parse a kernel list such as '0-2,4'."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def sysfs_nodes() -> set[int]:
    return parse_list((NODE_SYSFS / "online").read_text())


def sysfs_node_cpus(node: int) -> set[int]:
    return parse_list((NODE_SYSFS / f"node{node}" / "cpulist").read_text())


def sysfs_distances(node: int) -> list[int]:
    return [int(x) for x in (NODE_SYSFS / f"node{node}" / "distance").read_text().split()]


def numactl_hardware() -> tuple[set[int], dict[int, set[int]], dict[int, list[int]]]:
    """(nodes, cpus per node, distance rows) from `numactl -H`."""
    numactl = shutil.which("numactl")
    assert numactl, "numactl must be usable in the guest (it comes from the host root)"
    out = subprocess.run([numactl, "-H"], check=True, capture_output=True, text=True).stdout
    m = re.search(r"^available: (\d+) nodes \(([^)]*)\)", out, re.M)
    assert m, f"unexpected numactl -H output:\n{out}"
    nodes = parse_list(m.group(2))
    assert len(nodes) == int(m.group(1))
    cpus = {int(n): {int(c) for c in cs.split()}
            for n, cs in re.findall(r"^node (\d+) cpus:(.*)$", out, re.M)}
    rows: dict[int, list[int]] = {}
    in_matrix = False
    for line in out.splitlines():
        if line.startswith("node distances:"):
            in_matrix = True
        elif in_matrix:
            row = re.match(r"^\s*(\d+):\s+(.*)$", line)
            if row:
                rows[int(row.group(1))] = [int(x) for x in row.group(2).split()]
    return nodes, cpus, rows


def tier_of_nodes() -> dict[int, int]:
    tiers: dict[int, int] = {}
    for d in TIER_SYSFS.glob("memory_tier*"):
        tier = int(d.name[len("memory_tier"):])
        for node in parse_list((d / "nodelist").read_text()):
            tiers[node] = tier
    return tiers


def test_online_nodes(vm_topology):
    cpus, _ = EXPECTED[vm_topology]
    assert sysfs_nodes() == set(cpus)


def test_sysfs_cpus_and_distances(vm_topology):
    cpus, distances = EXPECTED[vm_topology]
    nodes = sorted(cpus)
    for n in nodes:
        assert sysfs_node_cpus(n) == cpus[n], f"node {n}"
    has_cpu = parse_list((NODE_SYSFS / "has_cpu").read_text())
    assert has_cpu == {n for n in nodes if cpus[n]}
    for a in nodes:
        row = sysfs_distances(a)
        for b in nodes:
            want = 10 if a == b else distances[(min(a, b), max(a, b))]
            assert row[b] == want, f"distance {a}->{b}"


def test_numactl_agrees_with_sysfs(vm_topology):
    nodes, cpus, rows = numactl_hardware()
    assert nodes == sysfs_nodes()
    assert len(nodes) == len(EXPECTED[vm_topology][0])
    for n in nodes:
        assert cpus.get(n, set()) == sysfs_node_cpus(n), f"cpus of node {n}"
        assert rows[n] == sysfs_distances(n), f"distances of node {n}"
    assert {n for n in nodes if not cpus.get(n)} == \
        {n for n, c in EXPECTED[vm_topology][0].items() if not c}


def test_node_memory_size(vm_topology):
    """Every node has roughly the memory numa-vm gave it."""
    per_node_mib = int(os.environ.get("AUTONUMAD_VM_NODE_MEMORY_MIB", "0"))
    if not per_node_mib:
        pytest.skip("AUTONUMAD_VM_NODE_MEMORY_MIB unset")
    for n in sysfs_nodes():
        text = (NODE_SYSFS / f"node{n}" / "meminfo").read_text()
        total_kib = int(re.search(r"MemTotal:\s+(\d+) kB", text).group(1))
        assert 0.8 * per_node_mib <= total_kib / 1024 <= per_node_mib, f"node {n}"


@pytest.mark.topology("tiered")
def test_cpuless_node_is_in_a_slower_tier():
    tiers = tier_of_nodes()
    assert len(set(tiers.values())) == 2, f"expected two memory tiers, got {tiers}"
    assert tiers[2] > tiers[0] and tiers[2] > tiers[1], tiers
    assert tiers[0] == tiers[1], tiers


@pytest.mark.topology("2node", "4node")
def test_single_tier_without_hmat():
    if not Path("/sys/devices/virtual/memory_tiering").exists():
        # Memory tiers arrived in 6.1 (the 5.10 guest): none in sysfs, and autonumad's
        # topology puts every memory node in one tier (readers/memtiers.py, "single").
        from autonumad.host import LinuxHost
        from autonumad.readers.nodes import read_topology
        topo = read_topology(LinuxHost())
        assert topo.tier_source == "single" and len(topo.tiers) == 1, topo.tiers
        return
    tiers = tier_of_nodes()
    assert len(set(tiers.values())) == 1, tiers


def test_kernel_is_the_requested_series(vm_guest):
    """--kernel 6.12 boots a 6.12.N kernel, --kernel 6.1 Debian's 6.1.0-ABI one."""
    release = os.uname().release
    assert release.startswith(vm_guest["kernel"] + "."), release


def test_cgroup_hierarchy_as_requested(vm_guest):
    """--cgroup none leaves /proc/PID/cgroup empty; v2 gives the one "0::" line; v1 one line per
    legacy hierarchy and no cgroup2."""
    text = Path("/proc/self/cgroup").read_text()
    if vm_guest["cgroup"] == "none":
        assert text == "", text
        assert not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    elif vm_guest["cgroup"] == "v1":
        controllers = {line.split(":")[1] for line in text.splitlines()}
        assert controllers == {"cpuset", "cpu,cpuacct", "memory"}, text
        assert "0::" not in text and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
        assert Path("/sys/fs/cgroup/cpuset/cpuset.cpus").exists()
    else:
        assert text.startswith("0::/"), text
        assert Path("/sys/fs/cgroup/cgroup.controllers").exists()
