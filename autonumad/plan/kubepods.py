"""Kubernetes pods as the host sees them: QoS class and pod UID from the cgroup path, and the kubelet's pinning.

Pure: everything comes from the process's cgroup path and the cpuset its
/proc/<pid>/status reports (Cpus_allowed_list, Mems_allowed_list), which the
snapshot has already read. No API server: the daemon runs on the node with no
token (config/kubernetes/base/serviceaccount.yaml).

Where the kubelet puts a pod (pkg/kubelet/cm/qos_container_manager_linux.go,
cgroup_manager_linux.go), for pod UID 8d3c...-...:

    driver    cgroup v2 (/proc/<pid>/cgroup "0::<path>"; v1: the cpuset line, same path)
    systemd   /kubepods.slice/kubepods-pod8d3c..._....slice/cri-containerd-<id>.scope            Guaranteed
              /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8d3c..._....slice/crio-<id>.scope
              /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8d3c..._....slice/docker-<id>.scope
    cgroupfs  /kubepods/pod8d3c...-.../<id>                                                    Guaranteed
              /kubepods/burstable/pod8d3c...-.../<id>
              /kubepods/besteffort/pod8d3c...-.../<id>

(the systemd driver writes the UID's dashes as underscores). Guaranteed pods
sit directly under kubepods; there is no "guaranteed" directory.

The kubelet's explicit placement, and how it shows:

- CPU manager, static policy: a Guaranteed pod's container with an integer
  CPU request gets exclusive CPUs. The kubelet writes them to the container
  cgroup's cpuset.cpus (and records them in /var/lib/kubelet/cpu_manager_state,
  "entries"); every other container's cpuset.cpus is the shared pool, which no
  longer has them. The process's Cpus_allowed_list is that cpuset.
- Memory manager, Static policy: a Guaranteed pod's container gets NUMA nodes
  in cpuset.mems (recorded in /var/lib/kubelet/memory_manager_state); the
  process's Mems_allowed_list shows it.

So a Guaranteed pod's process whose allowed CPUs are not all of the host's,
or whose allowed memory nodes are not all of the host's, has been placed by
the kubelet and is left alone. Burstable and BestEffort pods never get
exclusive CPUs or pinned memory, whatever their cpuset says (the shared pool
shrinks as exclusive CPUs are handed out). A Guaranteed pod with a
fractional CPU request runs in the shared pool; while exclusive CPUs exist
elsewhere its cpuset is narrower than the host too, and it is left alone as
well: a false "placed" costs one pod's balancing, a false "free" would undo
the kubelet's placement.

Namespace: not available here. The cgroup path carries only the pod UID; the
namespace is in the API object and, on the node, in the runtime's bundle
annotations (io.kubernetes.pod.namespace in containerd's
/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json, or
CRI-O's userdata/config.json), which would mean mounting the runtime's state
directory into the balancer. Select pods by QoS class and UID instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# systemd driver: kubepods[-qos]-pod<uid with _>.slice
_SYSTEMD_POD = re.compile(rf"kubepods(?:-(burstable|besteffort))?-pod({_UID})\.slice")
# cgroupfs driver: /kubepods[/qos]/pod<uid>
_CGROUPFS_POD = re.compile(rf"(?:^|/)kubepods(?:/(burstable|besteffort))?/pod({_UID})(?:/|$)")


@dataclass(frozen=True, slots=True)
class PodCgroup:
    qos: str       # "guaranteed", "burstable" or "besteffort"
    uid: str       # the pod UID with dashes, as the API shows it
    driver: str    # "systemd" or "cgroupfs"


def parse_pod_cgroup(path: str) -> PodCgroup | None:
    """The pod a cgroup path belongs to, or None if it is not under the kubelet's kubepods tree."""
    if "kubepods" not in path:
        return None
    components = path.split("/")
    for part in components:
        m = _SYSTEMD_POD.fullmatch(part)
        if m:
            return PodCgroup(m.group(1) or "guaranteed", m.group(2).replace("_", "-"), "systemd")
    m = _CGROUPFS_POD.search(path)
    if m:
        return PodCgroup(m.group(1) or "guaranteed", m.group(2).replace("_", "-"), "cgroupfs")
    return None


def normalize_uid(uid: str) -> str:
    return uid.strip().lower().replace("_", "-")


def is_pod_uid(text: str) -> bool:
    return re.fullmatch(_UID, normalize_uid(text)) is not None


def kubelet_placement(pod: PodCgroup, cpus_allowed: Iterable[int], mems_allowed: Iterable[int],
                      host_cpus: Iterable[int], host_mem_nodes: Iterable[int]) -> str | None:
    """Why the kubelet placed this pod's process, or None. Only Guaranteed pods are placed."""
    if pod.qos != "guaranteed":
        return None
    cpus, every_cpu = frozenset(cpus_allowed), frozenset(host_cpus)
    if cpus and cpus != every_cpu:
        return (f"Guaranteed pod {pod.uid} runs on CPUs {_fmt(cpus)} of {_fmt(every_cpu)}: the kubelet's CPU "
                "manager placed it (exclusive CPUs, or the shared pool beside them)")
    mems, every_node = frozenset(mems_allowed), frozenset(host_mem_nodes)
    if mems and every_node and mems != every_node:  # () = the kernel does not report Mems_allowed
        return (f"Guaranteed pod {pod.uid} may use memory nodes {_fmt(mems)} of {_fmt(every_node)}: the "
                "kubelet's Memory manager pinned it")
    return None


def pod_selection(cgroup: str, cpus_allowed: Iterable[int], mems_allowed: Iterable[int],
                  host_cpus: Iterable[int], host_mem_nodes: Iterable[int], *,
                  qos_classes: Iterable[str] = QOS_CLASSES, exclude_pods: Iterable[str] = ()) -> tuple[str, str] | None:
    """(rule, reason) when a pod's process must be left alone, else None (not a pod, or a pod to manage)."""
    pod = parse_pod_cgroup(cgroup)
    if pod is None:
        return None
    if pod.uid in {normalize_uid(u) for u in exclude_pods}:
        return "excluded-pod", f"pod {pod.uid} is in balance.exclude_pods"
    placed = kubelet_placement(pod, cpus_allowed, mems_allowed, host_cpus, host_mem_nodes)
    if placed:
        return "kubelet-placed", placed
    if pod.qos not in set(qos_classes):
        return "excluded-qos", f"pod {pod.uid} is {pod.qos}, not in balance.pod_qos_classes"
    return None


def _fmt(ids: Iterable[int]) -> str:
    """Kernel list syntax: 0-3,8."""
    out: list[str] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)
