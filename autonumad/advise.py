"""Placement advice for a new workload, like numad's `-w NCPUS:MB`.

    advise(topology, busy_by_cpu, cpus=N, memory_bytes=M) -> Advice

libvirt (`placement='auto'`), KubeVirt and OpenNebula ask numad which nodes
a new guest should use. The rule here, written down:

1. Only nodes with CPUs can host the workload's threads; memory may also
   come from CPU-less nodes only when the operator asks (not by default:
   they are the slow tier).
2. A node *fits* when its idle CPU capacity (CPUs x (1 - busy fraction))
   covers the CPUs asked for and its free memory, less a 5 % headroom,
   covers the memory asked for.
3. Prefer ONE node that fits, the one with the most free memory left after
   placement (leaving room for the others). Otherwise the smallest set of
   nodes that fits together, choosing among sets of that size the one with
   the smallest worst-case distance between its members (SLIT), then the
   most memory left.
4. If no set fits, say so and return the best-effort set: all CPU nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping

from autonumad.readers.nodes import Topology

HEADROOM_FRACTION = 0.05


@dataclass(frozen=True, slots=True)
class Advice:
    nodes: tuple[int, ...]
    cpus: tuple[int, ...]
    fits: bool
    reason: str
    free_bytes_after: int
    idle_cpus: float

    def as_json(self) -> dict:
        return {"nodes": list(self.nodes), "cpus": list(self.cpus), "fits": self.fits, "reason": self.reason,
                "memory_free_bytes_after": self.free_bytes_after, "idle_cpus": round(self.idle_cpus, 2)}


def advise(topology: Topology, busy_by_cpu: Mapping[int, float], cpus: float, memory_bytes: int) -> Advice:
    cand = [n for n in topology.nodes if n.cpus]
    idle = {n.id: sum(1.0 - busy_by_cpu.get(c, 0.0) for c in n.cpus) for n in cand}
    usable = {n.id: n.memory_free_bytes - int(n.memory_total_bytes * HEADROOM_FRACTION) for n in cand}
    by_id = {n.id: n for n in cand}
    for size in range(1, len(cand) + 1):
        fitting = []
        for combo in combinations(sorted(by_id), size):
            cpu_ok = sum(idle[i] for i in combo) >= cpus
            mem_left = sum(usable[i] for i in combo) - memory_bytes
            if cpu_ok and mem_left >= 0:
                spread = max((by_id[a].distances.get(b, 255) for a in combo for b in combo), default=10)
                fitting.append((spread, -mem_left, combo))
        if fitting:
            spread, neg_left, combo = min(fitting)
            what = f"node {combo[0]}" if size == 1 else f"nodes {','.join(map(str, combo))} (max distance {spread})"
            return Advice(combo, tuple(sorted(c for i in combo for c in by_id[i].cpus)), True,
                          f"{what}: the smallest set with {cpus:g} idle CPU(s) and the memory asked for, "
                          f"leaving the most free", -neg_left, sum(idle[i] for i in combo))
    all_ids = tuple(sorted(by_id))
    return Advice(all_ids, tuple(sorted(c for n in cand for c in n.cpus)), False,
                  "no set of nodes has that much idle CPU and free memory; spreading over all CPU nodes",
                  sum(usable.values()) - memory_bytes, sum(idle.values()))
