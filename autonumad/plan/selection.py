"""Who autonumad may manage: one selection for balancing and tiering alike.

    select(p, balance) -> (rule, reason) | None     None: managed

Checked in this order, the first that applies is the verdict:

1. `balance.exclude_pids`: excluded-pid;
2. `balance.exclude_comm` (Python regular expressions searched in the
   15-character comm, compiled once by the config), then a non-empty
   `balance.include_comm` none of which matches: excluded-comm / not-included;
3. `balance.exclude_cgroup` (cgroup v2 path prefixes: a path covers itself
   and everything below it, so systemd units, slices and containers), then
   a non-empty `balance.include_cgroup`: excluded-cgroup / not-included;
4. explicit placement is the owner's decision: any VMA with a non-default
   memory policy (bind, interleave, weighted interleave, preferred; set by
   numactl, mbind(2) or set_mempolicy(2)) leaves the process exactly as it
   is: explicit-memory-policy.

Balancing also leaves a process with no resident pages alone between 3
and 4 (`no_memory`), and reads the owner's CPU affinity (`pinned_by_owner`):
an affinity narrowed by someone else forbids task moves, not page moves to
the pinned node.
"""

from __future__ import annotations

from autonumad.observe.snapshot import ProcessView
from autonumad.plan.kubepods import pod_selection
from autonumad.readers.nodes import Topology

Skip = tuple[str, str]  # (rule, reason)


def cgroup_under(path: str, prefix: str) -> bool:
    """True if cgroup `path` is `prefix` or below it ("/a/b" is under "/a", "/ab" is not; "/" covers all)."""
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def excluded(p: ProcessView, balance, topology: Topology) -> Skip | None:
    """Rules 1-3: the include/exclude keys of [balance], then Kubernetes pods (`kubelet_placed`)."""
    if p.pid in balance.exclude_pids:
        return "excluded-pid", f"pid {p.pid} is in balance.exclude_pids"
    for rx in balance.exclude_comm:
        if rx.search(p.comm):
            return "excluded-comm", f"command {p.comm!r} matches balance.exclude_comm {rx.pattern!r}"
    if balance.include_comm and not any(rx.search(p.comm) for rx in balance.include_comm):
        return "not-included", f"command {p.comm!r} matches no balance.include_comm pattern"
    for prefix in balance.exclude_cgroup:
        if cgroup_under(p.cgroup, prefix):
            return "excluded-cgroup", f"cgroup {p.cgroup} is under balance.exclude_cgroup {prefix!r}"
    if balance.include_cgroup and not any(cgroup_under(p.cgroup, c) for c in balance.include_cgroup):
        return "not-included", f"cgroup {p.cgroup} is under no balance.include_cgroup prefix"
    return kubelet_placed(p, balance, topology)


def kubelet_placed(p: ProcessView, balance, topology: Topology) -> Skip | None:
    """Rule 3b: a pod's process (plan/kubepods.py) the kubelet placed itself (CPU manager's exclusive
    CPUs, Memory manager's pinned nodes), one in `balance.exclude_pods`, or one of a QoS class not in
    `balance.pod_qos_classes`. Not a pod: None."""
    return pod_selection(p.cgroup, p.status.cpus_allowed, p.status.mems_allowed,
                         topology.cpu_to_node.keys(), topology.memory_nodes,
                         qos_classes=balance.pod_qos_classes, exclude_pods=balance.exclude_pods)


def no_memory(p: ProcessView) -> Skip | None:
    if p.total_pages == 0:
        return "no-memory", "no resident pages attributed to any node"
    return None


def owner_placed(p: ProcessView) -> Skip | None:
    """Rule 4: a memory policy set by the process's owner."""
    if p.policy != "default":
        return "explicit-memory-policy", f"memory policy {p.policy!r} set by its owner (numactl/mbind): left as it is"
    return None


def select(p: ProcessView, balance, topology: Topology) -> Skip | None:
    """Rules 1-4, as tiering applies them."""
    return excluded(p, balance, topology) or owner_placed(p)


def pinned_by_owner(p: ProcessView, all_cpus: frozenset[int], owned_cpus: frozenset[int] | None) -> bool:
    """Its CPU affinity is narrower than the host and was not set by autonumad (`owned_cpus`)."""
    return frozenset(p.status.cpus_allowed) != all_cpus and owned_cpus is None
