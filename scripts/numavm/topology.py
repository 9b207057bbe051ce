"""Guest NUMA topologies and the QEMU options that build them (pure)."""

import re

DEFAULT_TOPOLOGY = "2node"


class Topology:
    def __init__(self, name, summary, nodes, distances, mem_per_node, hmat=None):
        # nodes: list of (ncpus, initiator or None); node i gets the next
        # ncpus CPU indices.
        self.name = name
        self.summary = summary
        self.nodes = nodes
        self.distances = distances          # {(a, b): d} for a < b, all pairs
        self.mem_per_node = mem_per_node    # MiB
        self.hmat = hmat                    # {(init, target): (lat_ns, bw)}

    @property
    def ncpus(self):
        return sum(n for n, _ in self.nodes)

    def qemu_args(self, mem_mib):
        nn = len(self.nodes)
        args = ["-machine", "pc,hmat=on" if self.hmat else "pc",
                "-m", f"{mem_mib * nn}M",
                "-smp", f"{self.ncpus},sockets={self.ncpus},cores=1,threads=1"]
        cpu = 0
        for i, (ncpu, initiator) in enumerate(self.nodes):
            args += ["-object", f"memory-backend-ram,id=m{i},size={mem_mib}M"]
            spec = f"node,nodeid={i},memdev=m{i}"
            if ncpu:
                cpus = f"{cpu}" if ncpu == 1 else f"{cpu}-{cpu + ncpu - 1}"
                spec += f",cpus={cpus}"
                cpu += ncpu
            if self.hmat:
                spec += f",initiator={i if ncpu else initiator}"
            args += ["-numa", spec]
        for (a, b), d in sorted(self.distances.items()):
            args += ["-numa", f"dist,src={a},dst={b},val={d}"]
        if self.hmat:
            for (ini, tgt), (lat, bw) in sorted(self.hmat.items()):
                base = f"hmat-lb,initiator={ini},target={tgt},hierarchy=memory"
                args += ["-numa", f"{base},data-type=access-latency,latency={lat}",
                         "-numa", f"{base},data-type=access-bandwidth,bandwidth={bw}"]
        return args


def _hmat_tiered():
    # Access latency (ns) and bandwidth for every initiator/target pair.
    # Both CPU nodes see their local DRAM alike (the kernel requires equal
    # DRAM performance to compute tiers); node 2 is slow memory attached to
    # node 0.
    return {
        (0, 0): (100, "16G"), (1, 1): (100, "16G"),
        (0, 1): (160, "10G"), (1, 0): (160, "10G"),
        (0, 2): (300, "4G"), (1, 2): (380, "3G"),
    }


TOPOLOGIES = {
    "2node": Topology(
        "2node", "two nodes, 1 CPU + 1536 MiB each, distance 21",
        nodes=[(1, None), (1, None)], distances={(0, 1): 21},
        mem_per_node=1536),
    "tiered": Topology(
        "tiered", "nodes 0,1: 1 CPU + 1 GiB each; node 2: 1 GiB, no CPU,"
        " slower memory tier (HMAT)",
        nodes=[(1, None), (1, None), (0, 0)],
        distances={(0, 1): 21, (0, 2): 24, (1, 2): 28},
        mem_per_node=1024, hmat=_hmat_tiered()),
    "4node": Topology(
        "4node", "four nodes, 1 CPU + 1 GiB each; distances 21 (ring), 31"
        " (diagonal)",
        nodes=[(1, None)] * 4,
        distances={(0, 1): 21, (1, 2): 31, (0, 2): 21, (0, 3): 31,
                   (1, 3): 21, (2, 3): 21},
        mem_per_node=1024),
    # autonuma-benchmark's patterns need threads that can run side by side on
    # one node, so these give each node two CPUs (4 and 8 vCPUs under TCG).
    "2x2": Topology(
        "2x2", "two nodes, 2 CPUs + 1536 MiB each, distance 21",
        nodes=[(2, None), (2, None)], distances={(0, 1): 21},
        mem_per_node=1536),
    "4x2": Topology(
        "4x2", "four nodes, 2 CPUs + 768 MiB each; distances 21 (ring), 31"
        " (diagonal)",
        nodes=[(2, None)] * 4,
        distances={(0, 1): 21, (1, 2): 31, (0, 2): 21, (0, 3): 31,
                   (1, 3): 21, (2, 3): 21},
        mem_per_node=768),
}


def parse_mem(text):
    m = re.fullmatch(r"(\d+)([MmGg])i?[Bb]?", text.strip())
    if not m:
        raise ValueError(text)
    n = int(m.group(1)) * (1024 if m.group(2) in "Gg" else 1)
    if n < 128:
        raise ValueError(text)
    return n
