"""read_topology on a real multi-node kernel agrees with numactl -H and with sysfs.

Runs inside the scripts/numa-vm guest on every topology (2node, tiered,
4node). numactl is an independent reader: libnuma gets sizes from
nodeN/meminfo and distances from nodeN/distance too, but parses them with
its own code, and the expected shapes below come from the guest definition
(scripts/numa-vm TOPOLOGIES), not from our reader.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

from autonumad.host import LinuxHost
from autonumad.readers.lists import parse_list
from autonumad.readers.nodes import read_topology

MIB = 1 << 20

# What each guest must look like: node count and the CPU-less nodes.
EXPECTED_SHAPE = {
    "2node": (2, ()),
    "tiered": (3, (2,)),
    "4node": (4, ()),
    "2x2": (2, ()),
    "4x2": (4, ()),
}


@dataclass
class NumactlNode:
    cpus: tuple[int, ...] = ()
    size_mib: int | None = None
    free_mib: int | None = None
    distances: dict[int, int] = field(default_factory=dict)


def numactl_hardware() -> dict[int, NumactlNode]:
    """Parse `numactl -H` (numactl.c print_node_cpus / hardware()):

        available: 3 nodes (0-2)
        node 0 cpus: 0
        node 0 size: 1008 MB
        node 0 free: 950 MB
        ...
        node distances:
        node   0   1   2
          0:  10  21  24
    """
    if shutil.which("numactl") is None:
        pytest.skip("numactl is not installed")
    out = subprocess.run(["numactl", "-H"], check=True, capture_output=True, text=True).stdout
    nodes: dict[int, NumactlNode] = {}
    header: list[int] | None = None
    for line in out.splitlines():
        if m := re.match(r"node (\d+) cpus:(.*)$", line):
            nodes.setdefault(int(m[1]), NumactlNode()).cpus = tuple(int(c) for c in m[2].split())
        elif m := re.match(r"node (\d+) size: (\d+) MB", line):
            nodes.setdefault(int(m[1]), NumactlNode()).size_mib = int(m[2])
        elif m := re.match(r"node (\d+) free: (\d+) MB", line):
            nodes.setdefault(int(m[1]), NumactlNode()).free_mib = int(m[2])
        elif re.match(r"node\s+\d", line) and "distances" not in line:
            header = [int(x) for x in line.split()[1:]]
        elif header is not None and (m := re.match(r"\s*(\d+):\s+(.*)$", line)):
            nodes[int(m[1])].distances = dict(zip(header, (int(x) for x in m[2].split())))
    return nodes


@pytest.fixture
def topo():
    return read_topology(LinuxHost())


def test_matches_the_guest_definition(topo, vm_topology):
    count, cpuless = EXPECTED_SHAPE[vm_topology]
    assert len(topo.nodes) == count
    assert tuple(n.id for n in topo.nodes if not n.has_cpu) == cpuless
    assert all(n.has_memory for n in topo.nodes)


def test_agrees_with_numactl(topo):
    ref = numactl_hardware()
    assert sorted(ref) == [n.id for n in topo.nodes]
    for node in topo.nodes:
        r = ref[node.id]
        assert node.cpus == r.cpus, f"node {node.id} cpus"
        # numactl prints bytes >> 20; allow one MiB for rounding.
        assert abs(node.memory_total_bytes // MIB - r.size_mib) <= 1, f"node {node.id} size"
        # Free memory moves between the two reads (this test allocates too).
        assert abs(node.memory_free_bytes // MIB - r.free_mib) <= 64, f"node {node.id} free"
        assert dict(node.distances) == r.distances, f"node {node.id} distances"


def test_agrees_with_sysfs(topo):
    def sys_list(name: str) -> tuple[int, ...]:
        with open(f"/sys/devices/system/node/{name}") as f:
            return parse_list(f.read())

    assert topo.online == sys_list("online")
    assert topo.cpu_nodes == sys_list("has_cpu")
    assert topo.memory_nodes == sys_list("has_memory")
    with open("/sys/devices/system/cpu/online") as f:
        assert sorted(topo.cpu_to_node) == list(parse_list(f.read()))
    for node in topo.nodes:
        assert node.distances[node.id] == 10
        for other in topo.nodes:  # the guests' SLITs are symmetric
            assert node.distances[other.id] == other.distances[node.id]
        assert node.memory_used_bytes == node.memory_total_bytes - node.memory_free_bytes
        # The per-node counters the metrics use are there on this kernel.
        assert "numa_hit" in node.numastat
        assert "nr_free_pages" in node.vmstat


def test_tiers_agree_with_memory_tiering_sysfs(topo):
    base = "/sys/devices/virtual/memory_tiering"
    if not os.path.isdir(base):
        pytest.skip("kernel has no memory_tiering")
    kernel = {}
    for entry in os.listdir(base):
        if m := re.fullmatch(r"memory_tier(\d+)", entry):
            with open(f"{base}/{entry}/nodelist") as f:
                kernel[int(m[1])] = parse_list(f.read())
    assert topo.tier_source == "memory_tiering"
    assert [(t.id, t.nodes) for t in topo.tiers] == sorted(kernel.items())
    # Every memory node is in exactly one tier.
    members = [n for t in topo.tiers for n in t.nodes]
    assert sorted(members) == list(topo.memory_nodes)


@pytest.mark.topology("tiered")
def test_cpuless_node_is_in_a_slower_tier(topo):
    assert topo.tier_source == "memory_tiering"
    assert topo.tier_of(0) == topo.tier_of(1) == 0
    assert topo.tier_of(2) > topo.tier_of(0)
    assert topo.tier_id_of(2) > topo.tier_id_of(0)
