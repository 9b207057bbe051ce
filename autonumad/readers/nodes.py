"""NUMA topology: nodes, their CPUs, memory and distances, and the memory tiers.

Kernel interface (drivers/base/node.c; Documentation/ABI/stable/sysfs-devices-node):

  /sys/devices/system/node/online, possible, has_cpu, has_memory
        node lists in the kernel's list syntax ("0-2"; readers.lists).
        `online` is required. `possible` defaults to `online`; `has_cpu` and
        `has_memory` (missing on some old kernels) are derived from the
        node's cpulist and MemTotal when absent.
  nodeN/cpulist    "0-3,8-11": the node's online CPUs; empty for a CPU-less node.
  nodeN/distance   "10 21 21": one SLIT entry per ONLINE node, in ascending
                   node order. node_read_distance() iterates
                   for_each_online_node(), not the possible map, so the
                   row is matched against `online` and its length must equal
                   the number of online nodes.
  nodeN/meminfo    "Node 0 MemTotal:  16337940 kB" lines (readers.meminfo,
                   values in bytes; HugePages_* are counts).
  nodeN/numastat   "numa_hit 1234" lines, page counts (node_read_numastat():
                   numa_hit, numa_miss, numa_foreign, interleave_hit,
                   local_node, other_node). Optional.
  nodeN/vmstat     "name value" lines like /proc/vmstat (readers.vmstat);
                   the only per-node source of pgpromote_*/pgdemote_*. Optional.

Memory tiers come from readers.memtiers (the kernel's memory_tiering, or
the CPU-less fallback documented there).

A missing or malformed host-level file (online, or a node's cpulist,
distance, meminfo) is a HostError naming the file: without it there is no
topology to act on. The optional files are tolerated (empty mappings).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from autonumad.errors import HostError, ParseError
from autonumad.host import Host
from autonumad.readers.lists import parse_list
from autonumad.readers.meminfo import parse_meminfo
from autonumad.readers.memtiers import Tier, read_kernel_memory_tiers, resolve_tiers, tier_positions
from autonumad.readers.vmstat import parse_vmstat

# The largest SLIT entry is 255 (ACPI 6.5 5.2.17: one byte, 0xFF = unreachable).
_MAX_DISTANCE = 255


@dataclass(frozen=True, slots=True)
class Node:
    """One online NUMA node. Memory in bytes; numastat in pages."""

    id: int
    cpus: tuple[int, ...]
    distances: Mapping[int, int]  # node id -> SLIT distance (10 = local)
    memory_total_bytes: int
    memory_free_bytes: int
    memory_used_bytes: int
    meminfo: Mapping[str, int]
    numastat: Mapping[str, int]
    vmstat: Mapping[str, int]
    has_cpu: bool
    has_memory: bool


@dataclass(frozen=True, slots=True)
class Topology:
    """The host's nodes (online ones, ascending id) and memory tiers (fastest first).

    tier_source: "memory_tiering" (the kernel's tiers), "fallback-cpuless"
    (no kernel tiers; CPU-less memory nodes form a slower tier) or "single"
    (no kernel tiers; every memory node in one tier).
    """

    nodes: tuple[Node, ...]
    online: tuple[int, ...]
    possible: tuple[int, ...]
    tiers: tuple[Tier, ...]
    tier_source: str

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no online node {node_id}")

    def tier_of(self, node_id: int) -> int:
        """Position of the node's tier in `tiers` (0 = fastest); KeyError if it has none.

        A node without memory (CPUs only) belongs to no tier.
        """
        try:
            return tier_positions(self.tiers)[node_id]
        except KeyError:
            raise KeyError(f"node {node_id} is in no memory tier") from None

    def tier_id_of(self, node_id: int) -> int | None:
        """The `id` of the node's tier (memory_tierN's N, or the fallback's), or None."""
        for t in self.tiers:
            if node_id in t.nodes:
                return t.id
        return None

    @property
    def cpu_nodes(self) -> tuple[int, ...]:
        """Ids of the nodes that have CPUs."""
        return tuple(n.id for n in self.nodes if n.has_cpu)

    @property
    def memory_nodes(self) -> tuple[int, ...]:
        """Ids of the nodes that have memory."""
        return tuple(n.id for n in self.nodes if n.has_memory)

    @property
    def cpu_to_node(self) -> Mapping[int, int]:
        """CPU id -> node id, for every online CPU."""
        return MappingProxyType({c: n.id for n in self.nodes for c in n.cpus})


# -- pure parsers ----------------------------------------------------------------

def parse_distance_row(text: str, online: tuple[int, ...]) -> Mapping[int, int]:
    """A node's `distance` row -> {node id: distance}, aligned with the online nodes."""
    fields = text.split()
    if len(fields) != len(online):
        raise ParseError(f"{len(fields)} distances for {len(online)} online nodes")
    out: dict[int, int] = {}
    for node_id, field in zip(online, fields):
        try:
            d = int(field, 10)
        except ValueError:
            raise ParseError(f"bad distance {field[:20]!r}") from None
        if not 0 < d <= _MAX_DISTANCE:
            raise ParseError(f"distance {d} out of range 1-{_MAX_DISTANCE}")
        out[node_id] = d
    return MappingProxyType(out)


def parse_numastat(text: str) -> Mapping[str, int]:
    """nodeN/numastat ("numa_hit 1234" per line, pages) -> {name: pages}.

    Same line format as vmstat (node_read_numastat() prints "%s %lu\\n"
    pairs), so the vmstat parser does the work.
    """
    return parse_vmstat(text)


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """The memory figures of a node's meminfo the topology carries, in bytes."""

    total_bytes: int
    free_bytes: int
    used_bytes: int


def node_memory(meminfo: Mapping[str, int]) -> NodeMemory:
    """MemTotal/MemFree (required) and MemUsed (node files print it; else total - free)."""
    try:
        total = meminfo["MemTotal"]
        free = meminfo["MemFree"]
    except KeyError as e:
        raise ParseError(f"no {e.args[0]} line") from None
    used = meminfo.get("MemUsed", total - free)
    return NodeMemory(total, free, used)


# -- reading through a host --------------------------------------------------------

_NODE_DIR = "/sys/devices/system/node"


def _required(host: Host, path: str) -> str:
    try:
        return host.read_text(path)
    except FileNotFoundError:
        raise HostError(path, "missing") from None
    except OSError as e:
        raise HostError(path, e.strerror or str(e)) from None


def _optional(host: Host, path: str) -> str | None:
    try:
        return host.read_text_or_none(path)
    except OSError:
        # An optional file we cannot read is as good as absent.
        return None


def _parse_or_host_error(path: str, parse, *args):
    try:
        return parse(*args)
    except ParseError as e:
        raise HostError(path, str(e)) from None


def _read_list(host: Host, name: str, required: bool) -> tuple[int, ...] | None:
    path = f"{_NODE_DIR}/{name}"
    text = _required(host, path) if required else _optional(host, path)
    if text is None:
        return None
    return _parse_or_host_error(path, parse_list, text)


def read_node(host: Host, node_id: int, online: tuple[int, ...],
              has_cpu: tuple[int, ...] | None = None, has_memory: tuple[int, ...] | None = None) -> Node:
    """Read one node's files; `has_cpu`/`has_memory` None means derive them."""
    base = f"{_NODE_DIR}/node{node_id}"
    cpus = _parse_or_host_error(f"{base}/cpulist", parse_list, _required(host, f"{base}/cpulist"))
    distances = _parse_or_host_error(f"{base}/distance", parse_distance_row,
                                     _required(host, f"{base}/distance"), online)
    meminfo_path = f"{base}/meminfo"
    meminfo = _parse_or_host_error(meminfo_path, parse_meminfo, _required(host, meminfo_path))
    mem = _parse_or_host_error(meminfo_path, node_memory, meminfo)

    # Optional counters: a malformed one is dropped rather than failing the
    # topology (metrics lose a node's counters, the balancer loses nothing).
    counters: dict[str, Mapping[str, int]] = {}
    for name, parse in (("numastat", parse_numastat), ("vmstat", parse_vmstat)):
        text = _optional(host, f"{base}/{name}")
        try:
            counters[name] = parse(text) if text is not None else MappingProxyType({})
        except ParseError:
            counters[name] = MappingProxyType({})

    return Node(
        id=node_id,
        cpus=cpus,
        distances=distances,
        memory_total_bytes=mem.total_bytes,
        memory_free_bytes=mem.free_bytes,
        memory_used_bytes=mem.used_bytes,
        meminfo=meminfo,
        numastat=counters["numastat"],
        vmstat=counters["vmstat"],
        has_cpu=(node_id in has_cpu) if has_cpu is not None else bool(cpus),
        has_memory=(node_id in has_memory) if has_memory is not None else mem.total_bytes > 0,
    )


def read_topology(host: Host) -> Topology:
    """Read the node topology and memory tiers of `host` (see module doc)."""
    online = _read_list(host, "online", required=True)
    if not online:
        raise HostError(f"{_NODE_DIR}/online", "no online nodes")
    possible = _read_list(host, "possible", required=False) or online
    has_cpu = _read_list(host, "has_cpu", required=False)
    has_memory = _read_list(host, "has_memory", required=False)
    nodes = tuple(read_node(host, n, online, has_cpu, has_memory) for n in online)
    tiers, source = resolve_tiers(
        read_kernel_memory_tiers(host),
        cpu_nodes=(n.id for n in nodes if n.has_cpu),
        memory_nodes=(n.id for n in nodes if n.has_memory),
    )
    return Topology(nodes=nodes, online=online, possible=possible, tiers=tiers, tier_source=source)
