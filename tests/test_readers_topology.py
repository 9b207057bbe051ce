"""Topology and memory tiers (autonumad.readers.nodes, autonumad.readers.memtiers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autonumad.errors import HostError, ParseError
from autonumad.host import Host
from autonumad.readers.lists import format_list
from autonumad.readers.memtiers import (
    Tier,
    fallback_tiers,
    parse_tier,
    parse_tier_dir_name,
    read_kernel_memory_tiers,
    read_memory_tiers,
)
from autonumad.readers.nodes import (
    node_memory,
    parse_distance_row,
    parse_numastat,
    read_topology,
)

GIB = 1 << 30
ND = "sys/devices/system/node"
MT = "sys/devices/virtual/memory_tiering"


@dataclass
class N:
    """A node for the tree builder below: CPUs, memory in bytes, SLIT row."""

    cpus: tuple[int, ...]
    total: int
    free: int
    dist: tuple[int, ...]


def node_meminfo(i: int, n: N) -> str:
    # drivers/base/node.c node_read_meminfo(): "Node %d %-15s %8lu kB"-style.
    rows = [("MemTotal", n.total // 1024), ("MemFree", n.free // 1024),
            ("MemUsed", (n.total - n.free) // 1024), ("Active", 0), ("FilePages", 0)]
    text = "".join(f"Node {i} {k + ':':<15} {v:>8} kB\n" for k, v in rows)
    return text + f"Node {i} HugePages_Total:     0\nNode {i} HugePages_Free:      0\n"


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def make_host(root: Path, nodes: dict[int, N], tiers: dict[int, tuple[int, ...]] | None = None,
              legacy: bool = False) -> Host:
    """Write a node tree like the kernel's; `legacy` drops possible/has_cpu/has_memory."""
    ids = sorted(nodes)
    write(root, f"{ND}/online", format_list(ids) + "\n")
    if not legacy:
        write(root, f"{ND}/possible", format_list(ids) + "\n")
        write(root, f"{ND}/has_cpu", format_list(i for i in ids if nodes[i].cpus) + "\n")
        write(root, f"{ND}/has_memory", format_list(i for i in ids if nodes[i].total) + "\n")
    for i, n in nodes.items():
        write(root, f"{ND}/node{i}/cpulist", format_list(n.cpus) + "\n")
        write(root, f"{ND}/node{i}/distance", " ".join(map(str, n.dist)) + "\n")
        write(root, f"{ND}/node{i}/meminfo", node_meminfo(i, n))
        write(root, f"{ND}/node{i}/numastat", f"numa_hit {100 + i}\nnuma_miss 0\nother_node {i}\n")
        write(root, f"{ND}/node{i}/vmstat", f"nr_free_pages {n.free // 4096}\npgpromote_success {7 * i}\n")
    if tiers is not None:
        (root / MT).mkdir(parents=True, exist_ok=True)
        write(root, f"{MT}/uevent", "")
        for t, members in tiers.items():
            write(root, f"{MT}/memory_tier{t}/nodelist", format_list(members) + "\n")
    return Host(root)


TWO_NODE = {0: N((0, 1), 4 * GIB, 3 * GIB, (10, 21)), 1: N((2, 3), 4 * GIB, 1 * GIB, (21, 10))}
TIERED = {0: N((0,), 2 * GIB, GIB, (10, 21, 17)), 1: N((1,), 2 * GIB, GIB, (21, 10, 28)),
          2: N((), 4 * GIB, 4 * GIB, (17, 28, 10))}
SINGLE = {0: N((0, 1), 8 * GIB, 6 * GIB, (10,))}
# Node 1 has CPUs but no memory (a memoryless node, seen on some EPYC/POWER boxes).
MEMORYLESS = {0: N((0,), 4 * GIB, 2 * GIB, (10, 20)), 1: N((1,), 0, 0, (20, 10))}


# -- read_topology: shapes ---------------------------------------------------------

TOPOLOGY_CASES = [
    # name, nodes, kernel tiers, legacy files, want (tier ids fastest first, tier nodes), source
    ("2node-kernel-tiers", TWO_NODE, {4: (0, 1)}, False, ((4, (0, 1)),), "memory_tiering"),
    ("2node-no-tiers", TWO_NODE, None, False, ((0, (0, 1)),), "single"),
    ("tiered-kernel", TIERED, {4: (0, 1), 360: (2,)}, False, ((4, (0, 1)), (360, (2,))), "memory_tiering"),
    ("tiered-fallback", TIERED, None, False, ((0, (0, 1)), (1, (2,))), "fallback-cpuless"),
    ("tiered-legacy-files", TIERED, None, True, ((0, (0, 1)), (1, (2,))), "fallback-cpuless"),
    ("tiered-empty-tiering-dir", TIERED, {}, False, ((0, (0, 1)), (1, (2,))), "fallback-cpuless"),
    ("single", SINGLE, None, False, ((0, (0,)),), "single"),
    ("single-kernel", SINGLE, {4: (0,)}, False, ((4, (0,)),), "memory_tiering"),
    ("memoryless-node", MEMORYLESS, None, False, ((0, (0,)),), "single"),
]


@pytest.mark.parametrize("name,nodes,tiers,legacy,want_tiers,want_source", TOPOLOGY_CASES,
                         ids=[c[0] for c in TOPOLOGY_CASES])
def test_read_topology_shapes(tmp_path, name, nodes, tiers, legacy, want_tiers, want_source):
    topo = read_topology(make_host(tmp_path, nodes, tiers, legacy))
    assert topo.online == tuple(sorted(nodes))
    assert topo.possible == tuple(sorted(nodes))
    assert [n.id for n in topo.nodes] == sorted(nodes)
    assert tuple((t.id, t.nodes) for t in topo.tiers) == want_tiers
    assert topo.tier_source == want_source
    for i, spec in nodes.items():
        node = topo.node(i)
        assert node.cpus == spec.cpus
        assert node.has_cpu == bool(spec.cpus)
        assert node.has_memory == bool(spec.total)
        assert node.memory_total_bytes == spec.total
        assert node.memory_free_bytes == spec.free
        assert node.memory_used_bytes == spec.total - spec.free
        assert dict(node.distances) == dict(zip(sorted(nodes), spec.dist))


def test_tiered_cpuless_node_is_slower(tmp_path):
    for sub, tiers in (("kernel", {4: (0, 1), 360: (2,)}), ("fallback", None)):
        topo = read_topology(make_host(tmp_path / sub, TIERED, tiers))
        assert topo.tier_of(0) == topo.tier_of(1) == 0
        assert topo.tier_of(2) == 1
        assert topo.cpu_nodes == (0, 1)
        assert topo.memory_nodes == (0, 1, 2)


def test_kernel_tier_ids_and_abstract_distance(tmp_path):
    topo = read_topology(make_host(tmp_path, TIERED, {360: (2,), 4: (0, 1)}))
    assert topo.tiers == (Tier(4, (0, 1), 4 * 128), Tier(360, (2,), 360 * 128))
    assert topo.tier_id_of(2) == 360


def test_memoryless_node_has_no_tier(tmp_path):
    topo = read_topology(make_host(tmp_path, MEMORYLESS))
    assert topo.tier_id_of(1) is None
    with pytest.raises(KeyError):
        topo.tier_of(1)
    assert topo.cpu_nodes == (0, 1)
    assert topo.memory_nodes == (0,)


def test_cpu_to_node_and_counters(tmp_path):
    topo = read_topology(make_host(tmp_path, TWO_NODE))
    assert dict(topo.cpu_to_node) == {0: 0, 1: 0, 2: 1, 3: 1}
    n1 = topo.node(1)
    assert n1.numastat == {"numa_hit": 101, "numa_miss": 0, "other_node": 1}
    assert n1.vmstat["pgpromote_success"] == 7
    assert n1.meminfo["MemTotal"] == 4 * GIB
    assert n1.meminfo["HugePages_Total"] == 0
    with pytest.raises(KeyError):
        topo.node(5)


def test_sparse_online_nodes_align_distances(tmp_path):
    # Node 1 offline: every distance row has two entries, for nodes 0 and 2.
    nodes = {0: N((0,), GIB, GIB, (10, 20)), 2: N((1,), GIB, GIB, (20, 10))}
    topo = read_topology(make_host(tmp_path, nodes))
    assert dict(topo.node(2).distances) == {0: 20, 2: 10}
    write(tmp_path, f"{ND}/possible", "0-3\n")
    assert read_topology(Host(tmp_path)).possible == (0, 1, 2, 3)


def test_optional_files_are_tolerated(tmp_path):
    host = make_host(tmp_path, TWO_NODE, legacy=True)
    (tmp_path / ND / "node0/numastat").unlink()
    (tmp_path / ND / "node1/vmstat").write_text("this is not vmstat\n")
    topo = read_topology(host)
    assert topo.node(0).numastat == {}
    assert topo.node(1).vmstat == {}
    assert topo.possible == topo.online == (0, 1)


def test_legacy_memory_tier_file_name(tmp_path):
    make_host(tmp_path, TIERED)
    write(tmp_path, f"{MT}/memory_tier4/nodes", "0-1\n")
    write(tmp_path, f"{MT}/memory_tier5/nodes", "2\n")
    topo = read_topology(Host(tmp_path))
    assert [(t.id, t.nodes) for t in topo.tiers] == [(4, (0, 1)), (5, (2,))]


def test_empty_kernel_tier_is_dropped(tmp_path):
    host = make_host(tmp_path, TIERED, {4: (0, 1), 5: (), 360: (2,)})
    assert [t.id for t in read_kernel_memory_tiers(host)] == [4, 360]


# -- read_topology: host-level errors name the file -----------------------------------

def _rm(rel):
    return lambda root: (root / rel).unlink()


def _put(rel, text):
    return lambda root: (root / rel).write_text(text)


ERROR_CASES = [
    ("online-missing", _rm(f"{ND}/online"), f"{ND}/online", "missing"),
    ("online-malformed", _put(f"{ND}/online", "0-x\n"), f"{ND}/online", "bad"),
    ("online-empty", _put(f"{ND}/online", "\n"), f"{ND}/online", "no online nodes"),
    ("cpulist-missing", _rm(f"{ND}/node1/cpulist"), f"{ND}/node1/cpulist", "missing"),
    ("cpulist-malformed", _put(f"{ND}/node1/cpulist", "2-1\n"), f"{ND}/node1/cpulist", "bad range"),
    ("distance-missing", _rm(f"{ND}/node0/distance"), f"{ND}/node0/distance", "missing"),
    ("distance-short", _put(f"{ND}/node0/distance", "10\n"), f"{ND}/node0/distance", "1 distances for 2"),
    ("distance-garbage", _put(f"{ND}/node0/distance", "10 x\n"), f"{ND}/node0/distance", "bad distance"),
    ("distance-zero", _put(f"{ND}/node0/distance", "10 0\n"), f"{ND}/node0/distance", "out of range"),
    ("meminfo-missing", _rm(f"{ND}/node1/meminfo"), f"{ND}/node1/meminfo", "missing"),
    ("meminfo-no-total", _put(f"{ND}/node1/meminfo", "Node 1 MemFree: 5 kB\n"), f"{ND}/node1/meminfo",
     "MemTotal"),
    ("meminfo-garbage", _put(f"{ND}/node1/meminfo", "Node 1 MemTotal: lots\n"), f"{ND}/node1/meminfo", "bad"),
    ("tier-nodelist-garbage", _put(f"{MT}/memory_tier4/nodelist", "zero\n"), f"{MT}/memory_tier4/nodelist",
     "bad"),
]


@pytest.mark.parametrize("name,damage,path,reason", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_host_errors_name_the_file(tmp_path, name, damage, path, reason):
    host = make_host(tmp_path, TWO_NODE, {4: (0, 1)})
    damage(tmp_path)
    with pytest.raises(HostError) as ei:
        read_topology(host)
    assert ei.value.path == "/" + path
    assert reason in ei.value.reason


# -- memtiers pure functions ----------------------------------------------------------

@pytest.mark.parametrize("name,want", [("memory_tier4", 4), ("memory_tier360", 360), ("memory_tier", None),
                                       ("memory_tier4x", None), ("power", None), ("uevent", None),
                                       ("memory_tier-1", None)],
                         ids=["4", "360", "no-number", "suffix", "power", "uevent", "negative"])
def test_parse_tier_dir_name(name, want):
    assert parse_tier_dir_name(name) == want


FALLBACK_CASES = [
    ("cpu-and-cpuless", (0, 1), (0, 1, 2, 3), ((0, (0, 1)), (1, (2, 3))), "fallback-cpuless"),
    ("all-cpu", (0, 1), (0, 1), ((0, (0, 1)),), "single"),
    ("one-node", (0,), (0,), ((0, (0,)),), "single"),
    ("memoryless-cpu-node", (0, 1), (0,), ((0, (0,)),), "single"),
    ("no-memory-info", (0,), (), (), "single"),
]


@pytest.mark.parametrize("name,cpu,mem,want,source", FALLBACK_CASES, ids=[c[0] for c in FALLBACK_CASES])
def test_fallback_tiers(name, cpu, mem, want, source):
    tiers, got_source = fallback_tiers(cpu, mem)
    assert tuple((t.id, t.nodes) for t in tiers) == want
    assert all(t.abstract_distance is None for t in tiers)
    assert got_source == source


def test_read_memory_tiers_kernel_and_fallback(tmp_path):
    kernel = make_host(tmp_path / "k", TIERED, {360: (2,), 4: (0, 1)})
    assert [t.id for t in read_memory_tiers(kernel)] == [4, 360]
    fallback = make_host(tmp_path / "f", TIERED)
    assert [(t.id, t.nodes) for t in read_memory_tiers(fallback)] == [(0, (0, 1)), (1, (2,))]
    assert read_kernel_memory_tiers(fallback) is None


def test_node_memory_without_memused():
    mem = node_memory({"MemTotal": 100, "MemFree": 30})
    assert (mem.total_bytes, mem.free_bytes, mem.used_bytes) == (100, 30, 70)
    with pytest.raises(ParseError):
        node_memory({"MemFree": 30})


# -- property tests: parsers raise ParseError or succeed ----------------------------------

text_like = st.text(alphabet=st.sampled_from("0123456789 -,\n\tx:kBNode"), max_size=60) | st.text(max_size=60)


@given(text_like, st.lists(st.integers(min_value=0, max_value=64), max_size=5, unique=True))
def test_parse_distance_row_total(text, online):
    online = tuple(sorted(online))
    try:
        row = parse_distance_row(text, online)
    except ParseError:
        return
    assert tuple(row) == online
    assert all(1 <= d <= 255 for d in row.values())


@given(st.sampled_from(["10 21 17\n", "21 10 28\n"]), st.integers(min_value=0, max_value=10))
def test_parse_distance_row_truncated(text, cut):
    try:
        parse_distance_row(text[:cut], (0, 1, 2))
    except ParseError:
        pass


@given(text_like)
def test_parse_numastat_total(text):
    try:
        parse_numastat(text)
    except ParseError:
        pass


@given(st.integers(min_value=-5, max_value=1000), text_like)
def test_parse_tier_total(tier_id, text):
    try:
        tier = parse_tier(tier_id, text)
    except ParseError:
        return
    assert tier.id == tier_id >= 0
    assert tier.nodes == tuple(sorted(set(tier.nodes)))


@given(st.text(max_size=30))
def test_parse_tier_dir_name_total(name):
    got = parse_tier_dir_name(name)
    assert got is None or (got >= 0 and name == f"memory_tier{name[len('memory_tier'):]}")


@given(st.dictionaries(st.sampled_from(["MemTotal", "MemFree", "MemUsed", "Active"]),
                       st.integers(min_value=0, max_value=2**50)))
def test_node_memory_total(meminfo):
    try:
        mem = node_memory(meminfo)
    except ParseError:
        assert "MemTotal" not in meminfo or "MemFree" not in meminfo
        return
    assert mem.total_bytes == meminfo["MemTotal"]


@given(st.integers(min_value=0, max_value=4), st.integers(min_value=0, max_value=80))
def test_read_topology_survives_truncated_files(tmp_path_factory, which, cut):
    """Truncating any host-level file gives a topology or a HostError, nothing else."""
    root = tmp_path_factory.mktemp("trunc")
    host = make_host(root, TIERED, {4: (0, 1), 360: (2,)})
    rel = [f"{ND}/online", f"{ND}/node0/cpulist", f"{ND}/node1/distance", f"{ND}/node2/meminfo",
           f"{MT}/memory_tier360/nodelist"][which]
    p = root / rel
    p.write_text(p.read_text()[:cut])
    try:
        read_topology(host)
    except HostError as e:
        assert e.path.startswith("/sys/")


# -- trees captured from real kernels (scripts/capture-host, tests/data/hosts/) ----------

HOSTS_DIR = Path(__file__).parent / "data" / "hosts"
CAPTURED = sorted(p for p in HOSTS_DIR.glob("*") if (p / ND / "online").is_file()) if HOSTS_DIR.is_dir() else []


@pytest.mark.parametrize("root", CAPTURED, ids=[p.name for p in CAPTURED])
def test_captured_host_trees(root):
    topo = read_topology(Host(root))
    assert topo.nodes and topo.tiers
    for node in topo.nodes:
        assert node.distances[node.id] == 10
        assert set(node.distances) == set(topo.online)
        assert 0 <= node.memory_free_bytes <= node.memory_total_bytes
    # Every memory node sits in exactly one tier, and tiers are fastest first.
    members = [n for t in topo.tiers for n in t.nodes]
    assert sorted(members) == list(topo.memory_nodes)
    assert [t.id for t in topo.tiers] == sorted(t.id for t in topo.tiers)
    cpuless = [n.id for n in topo.nodes if n.has_memory and not n.has_cpu]
    if "tiered" in root.name:
        assert cpuless, "a tiered capture has a CPU-less node"
        slowest_cpu_tier = max(topo.tier_of(n) for n in topo.cpu_nodes if n in topo.memory_nodes)
        assert all(topo.tier_of(n) > slowest_cpu_tier for n in cpuless)
