"""Memory tiers: which nodes hold fast memory and which hold slow memory.

Kernel interface (Documentation/ABI/testing/sysfs-kernel-mm-memory-tiers,
mm/memory-tiers.c, v6.1+):

    /sys/devices/virtual/memory_tiering/memory_tier4/nodelist    0-1
    /sys/devices/virtual/memory_tiering/memory_tier360/nodelist  2

Each `memory_tierN` directory is one tier; `nodelist` uses the kernel's list
syntax (readers.lists). Early versions of the series named the file `nodes`;
both are accepted. A smaller N is a faster tier: the kernel names the device
`adistance >> MEMTIER_CHUNK_BITS` (find_create_memory_tier(), with
MEMTIER_CHUNK_BITS = 7), so tier N covers the abstract distances
[N * 128, N * 128 + 128). Plain DRAM sits at MEMTIER_ADISTANCE_DRAM = 576,
i.e. memory_tier4; a CPU-less node that HMAT describes as slower lands in a
higher N (memory_tier360 in the project's QEMU `tiered` guest).

Fallback when the directory is absent (kernels before 6.1, or
CONFIG_NUMA=n / no memory-tier support): nodes with CPUs form the fast tier
(synthetic id 0) and CPU-less memory nodes a slower one (synthetic id 1),
the heuristic nri-plugins uses ("if a node only has memory (and no CPUs),
it's PMEM or HBM"). Its limits, stated plainly:
  * CPU-less DRAM (a memory-only node on a big box) or HBM (faster, not
    slower, than DRAM) is misclassified as slow memory;
  * all slow nodes become one tier even if they differ (CXL vs PMEM);
  * a node whose CPUs are all offline looks CPU-less.
Config overrides (issue 6, `[tiering]`) are the way out of these cases.
With one memory node, or no CPU-less memory node, there is one tier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from autonumad.errors import HostError, ParseError
from autonumad.host import Host
from autonumad.readers.lists import parse_list

# memory_tierN: N is a non-negative decimal integer (dev_set_name "%s%d").
_TIER_DIR = re.compile(r"memory_tier(\d+)\Z")
# Abstract distance width of one tier (include/linux/memory-tiers.h).
MEMTIER_CHUNK_BITS = 7

# tier_source values, see resolve_tiers().
SOURCE_KERNEL = "memory_tiering"
SOURCE_FALLBACK_CPULESS = "fallback-cpuless"
SOURCE_SINGLE = "single"


@dataclass(frozen=True, slots=True)
class Tier:
    """One memory tier.

    `id` is N of memory_tierN (or the fallback's synthetic 0/1); tiers sort
    fastest first by id. `abstract_distance` is the start of the tier's
    abstract-distance range (N << 7) for kernel tiers, None for fallback ones.
    """

    id: int
    nodes: tuple[int, ...]
    abstract_distance: int | None


def parse_tier_dir_name(name: str) -> int | None:
    """'memory_tier4' -> 4; None for other entries (power, uevent, ...)."""
    m = _TIER_DIR.match(name)
    return int(m.group(1)) if m else None


def parse_tier(tier_id: int, nodelist_text: str) -> Tier:
    """One tier from its id and the text of its nodelist file."""
    if tier_id < 0:
        raise ParseError(f"negative tier id {tier_id}")
    return Tier(id=tier_id, nodes=parse_list(nodelist_text),
                abstract_distance=tier_id << MEMTIER_CHUNK_BITS)


def fallback_tiers(cpu_nodes: Iterable[int], memory_nodes: Iterable[int]) -> tuple[tuple[Tier, ...], str]:
    """Tiers guessed from CPUs when the kernel exposes none (see module doc).

    Returns (tiers, source): source is "fallback-cpuless" when CPU-less memory
    nodes were split off into a slower tier, "single" when every memory node
    went into one tier.
    """
    mem = sorted(set(memory_nodes))
    cpus = set(cpu_nodes)
    fast = tuple(n for n in mem if n in cpus)
    slow = tuple(n for n in mem if n not in cpus)
    if fast and slow:
        return (Tier(0, fast, None), Tier(1, slow, None)), SOURCE_FALLBACK_CPULESS
    if not mem:
        return (), SOURCE_SINGLE
    return (Tier(0, tuple(mem), None),), SOURCE_SINGLE


def resolve_tiers(kernel_tiers: tuple[Tier, ...] | None, cpu_nodes: Iterable[int],
                  memory_nodes: Iterable[int]) -> tuple[tuple[Tier, ...], str]:
    """The kernel's tiers when it has any (source "memory_tiering"), else the fallback."""
    if kernel_tiers:
        return kernel_tiers, SOURCE_KERNEL
    return fallback_tiers(cpu_nodes, memory_nodes)


def read_kernel_memory_tiers(host: Host) -> tuple[Tier, ...] | None:
    """The kernel's memory tiers, fastest first; None if the kernel has no memory_tiering.

    Tiers with an empty nodelist are dropped (the kernel removes a tier when
    its last node goes, but a read can race with that). A malformed nodelist
    is a HostError naming the file.
    """
    base = "/sys/devices/virtual/memory_tiering"
    if not host.exists(base):
        return None
    tiers: list[Tier] = []
    for entry in host.listdir(base):
        tier_id = parse_tier_dir_name(entry)
        if tier_id is None:
            continue
        text = None
        path = f"{base}/{entry}/nodelist"
        for name in ("nodelist", "nodes"):
            path = f"{base}/{entry}/{name}"
            try:
                text = host.read_text_or_none(path)
            except OSError as e:
                raise HostError(path, e.strerror or str(e)) from None
            if text is not None:
                break
        if text is None:
            # The tier vanished between listdir and read (memory hot-unplug).
            continue
        try:
            tier = parse_tier(tier_id, text)
        except ParseError as e:
            raise HostError(path, str(e)) from None
        if tier.nodes:
            tiers.append(tier)
    tiers.sort(key=lambda t: t.id)
    return tuple(tiers)


def read_memory_tiers(host: Host) -> tuple[Tier, ...]:
    """Memory tiers sorted fastest first: the kernel's, else the CPU-less fallback.

    The fallback needs to know which nodes have CPUs and memory; it takes
    them from node/has_cpu and node/has_memory. `readers.nodes.read_topology`
    does the same with the node data it has already read and also records
    which source was used.
    """
    kernel = read_kernel_memory_tiers(host)
    if kernel:
        return kernel
    node_dir = "/sys/devices/system/node"
    lists: dict[str, tuple[int, ...]] = {}
    for name in ("online", "has_cpu", "has_memory"):
        path = f"{node_dir}/{name}"
        text = host.read_text_or_none(path)
        try:
            lists[name] = parse_list(text) if text is not None else ()
        except ParseError as e:
            raise HostError(path, str(e)) from None
    # Kernels without has_cpu/has_memory: treat every online node as both,
    # which yields a single tier.
    cpu_nodes = lists["has_cpu"] or lists["online"]
    mem_nodes = lists["has_memory"] or lists["online"]
    return fallback_tiers(cpu_nodes, mem_nodes)[0]


def tier_positions(tiers: tuple[Tier, ...]) -> Mapping[int, int]:
    """node id -> position of its tier in `tiers` (0 = fastest)."""
    out: dict[int, int] = {}
    for pos, tier in enumerate(tiers):
        for n in tier.nodes:
            out.setdefault(n, pos)
    return out
