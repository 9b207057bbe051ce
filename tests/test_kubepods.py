"""Kubernetes pods on a fake host: the kubelet's placement is left alone, the rest selected by QoS class and UID.

The fake host is laid out as a kubelet with the static CPU manager and the
Static Memory manager leaves a node: realistic kubepods cgroup paths for
cgroup v1 and v2 and both cgroup drivers, each container's cpuset files
under /sys/fs/cgroup, the kubelet's own records in /var/lib/kubelet, and in
/proc/<pid>/status the Cpus_allowed_list / Mems_allowed_list the kernel
derives from those cpusets. The policy sees only /proc (as in production);
the cpuset files and state files are there to show, and check, that what it
sees is the kubelet's placement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autonumad.plan.history import History
from autonumad.plan.kubepods import PodCgroup, parse_pod_cgroup, pod_selection
from autonumad.plan.policy import decide
from autonumad.observe.snapshot import take_snapshot
from autonumad.readers.lists import parse_list
from autonumad.service.config import ConfigError, compile_config, parse_toml
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

GiB, MiB, P = 2**30, 2**20, 4096
N0, N1 = (0, 1), (2, 3)
UID = {
    "exclusive": "8d3c0f1e-5b7a-4c2d-9e6f-0a1b2c3d4e5f",
    "memory-pinned": "1f2e3d4c-5b6a-4789-8abc-def012345678",
    "shared-guaranteed": "0a0b0c0d-1111-4222-8333-944455556666",
    "burstable": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "besteffort": "deadbeef-0000-4000-8000-00000000beef",
    "v1-exclusive": "77777777-8888-4999-aaaa-bbbbbbbbbbbb",
}
CTR = "4f5e6d7c8b9a" * 5 + "0123"  # 64 hex digits, like a containerd id


def systemd_path(qos: str, uid: str, runtime: str = "cri-containerd") -> str:
    u = uid.replace("-", "_")
    if qos == "guaranteed":
        return f"/kubepods.slice/kubepods-pod{u}.slice/{runtime}-{CTR}.scope"
    return f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{runtime}-{CTR}.scope"


def cgroupfs_path(qos: str, uid: str) -> str:
    return f"/kubepods/pod{uid}/{CTR}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{uid}/{CTR}"


@pytest.mark.parametrize("path,expected", [
    (systemd_path("guaranteed", UID["exclusive"]), PodCgroup("guaranteed", UID["exclusive"], "systemd")),
    (systemd_path("burstable", UID["burstable"], "crio"), PodCgroup("burstable", UID["burstable"], "systemd")),
    (systemd_path("besteffort", UID["besteffort"], "docker"), PodCgroup("besteffort", UID["besteffort"], "systemd")),
    (cgroupfs_path("guaranteed", UID["exclusive"]), PodCgroup("guaranteed", UID["exclusive"], "cgroupfs")),
    (cgroupfs_path("burstable", UID["burstable"]), PodCgroup("burstable", UID["burstable"], "cgroupfs")),
    (cgroupfs_path("besteffort", UID["besteffort"]), PodCgroup("besteffort", UID["besteffort"], "cgroupfs")),
    # the pod's own cgroup (the pause process lives in a container below it, but the path is the pod's)
    (f"/kubepods/burstable/pod{UID['burstable']}", PodCgroup("burstable", UID["burstable"], "cgroupfs")),
    ("/kubepods.slice", None),                        # the kubelet's root, no pod
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/system.slice/kubelet.service", None),
    ("/user.slice/user-0.slice/session-1.scope", None),
    ("/kubepods/burstable/podnot-a-uid/x", None),
], ids=lambda v: str(v)[-40:] if isinstance(v, str) else "")
def test_parse_pod_cgroup(path, expected):
    assert parse_pod_cgroup(path) == expected


# -- the fake node --------------------------------------------------------------------------

# name: (cgroup version, path, cpus allowed, mems allowed, memory by node). Every process runs on
# CPU 2 (node 1) with its memory on node 0, so a free process would be moved.
PODS = {
    "exclusive": ("v2", systemd_path("guaranteed", UID["exclusive"]), N1, None),
    "memory-pinned": ("v2", cgroupfs_path("guaranteed", UID["memory-pinned"]), None, (0,)),
    "shared-guaranteed": ("v2", systemd_path("guaranteed", UID["shared-guaranteed"]), None, None),
    "burstable": ("v2", cgroupfs_path("burstable", UID["burstable"]), N1, None),
    "besteffort": ("v2", systemd_path("besteffort", UID["besteffort"]), None, None),
    "v1-exclusive": ("v1", cgroupfs_path("guaranteed", UID["v1-exclusive"]), N1, None),
}
PIDS = {name: 200 + 10 * i for i, name in enumerate(PODS)}


def _fmt(ids) -> str:
    return ",".join(map(str, ids))


def kube_node(tmp_path: Path):
    procs = []
    for name, (_, cgroup, cpus, mems) in PODS.items():
        pid = PIDS[name]
        procs.append(ProcessSpec(pid, name[:15], (ThreadSpec(pid, 2), ThreadSpec(pid + 1, 3)),
                                 vmas=(VmaSpec(0x7F0000000000, {0: (256 * MiB) // P}),),
                                 cpus_allowed=cpus, mems_allowed=mems, cgroup=cgroup))
    spec = HostSpec(nodes=(NodeSpec(N0, 8 * GiB, 6 * GiB, (10, 21)), NodeSpec(N1, 8 * GiB, 6 * GiB, (21, 10))),
                    processes=tuple(procs))
    knobs = dict(spec.knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = "0"
    host = build_host(tmp_path / "host", HostSpec(nodes=spec.nodes, processes=spec.processes, knobs=knobs))
    root = Path(host.root)
    cpu_entries, mem_entries = {}, {}
    for name, (version, cgroup, cpus, mems) in PODS.items():
        pid = PIDS[name]
        uid = parse_pod_cgroup(cgroup).uid
        cpus_text, mems_text = _fmt(cpus or N0 + N1), _fmt(mems or (0, 1))
        if version == "v2":
            d = root / "sys/fs/cgroup" / cgroup.lstrip("/")
            d.mkdir(parents=True)
            (d / "cpuset.cpus").write_text(cpus_text + "\n" if cpus else "\n")
            (d / "cpuset.cpus.effective").write_text(cpus_text + "\n")
            (d / "cpuset.mems.effective").write_text(mems_text + "\n")
        else:
            # cgroup v1 (cgroupfs driver, Docker-era nodes): one line per hierarchy; the cpuset line
            # carries the kubepods path, and so does every other controller's.
            (root / f"proc/{pid}/cgroup").write_text(
                f"12:memory:{cgroup}\n6:cpuset:{cgroup}\n3:cpu,cpuacct:{cgroup}\n1:name=systemd:{cgroup}\n")
            d = root / "sys/fs/cgroup/cpuset" / cgroup.lstrip("/")
            d.mkdir(parents=True)
            (d / "cpuset.cpus").write_text(cpus_text + "\n")
            (d / "cpuset.mems").write_text(mems_text + "\n")
        if cpus and name.endswith("exclusive"):
            cpu_entries.setdefault(uid, {})["app"] = cpus_text
        if mems:
            mem_entries.setdefault(uid, {})["app"] = [{"numaAffinity": list(mems), "type": "memory",
                                                       "size": 1 << 30}]
    kubelet = root / "var/lib/kubelet"
    kubelet.mkdir(parents=True)
    (kubelet / "cpu_manager_state").write_text(json.dumps(
        {"policyName": "static", "defaultCpuSet": "0-1", "entries": cpu_entries, "checksum": 1}))
    (kubelet / "memory_manager_state").write_text(json.dumps(
        {"policyName": "Static", "machineState": {}, "entries": mem_entries, "checksum": 1}))
    return host


def balance(**keys):
    """[balance] as the config compiles it; min_cpu_fraction 0: these fake processes use no CPU."""
    return compile_config({"balance": {"min_cpu_fraction": 0, **keys}}).balance


def verdicts(tmp_path, cfg=None):
    cfg = cfg if cfg is not None else balance()
    host = kube_node(tmp_path)
    snap = take_snapshot(host)
    h = History()
    h.observe(snap, 1000.0)
    d = decide(snap, h, cfg, 1000.0)
    return {name: d.verdicts[pid] for name, pid in PIDS.items()}, host


def test_the_kubelets_placement_is_left_alone_and_the_rest_balanced(tmp_path):
    v, _ = verdicts(tmp_path)
    assert {n: x.rule for n, x in v.items()} == {
        "exclusive": "kubelet-placed",          # CPU manager: exclusive CPUs 2-3
        "memory-pinned": "kubelet-placed",      # Memory manager: cpuset.mems 0
        "shared-guaranteed": "task-follows-memory",  # Guaranteed in the shared pool (all CPUs): free
        "burstable": "memory-follows-task",     # a narrow shared pool is not placement for Burstable
        "besteffort": "task-follows-memory",
        "v1-exclusive": "kubelet-placed",
    }
    assert "CPU manager" in v["exclusive"].reason and "Memory manager" in v["memory-pinned"].reason


def test_what_the_policy_reads_is_the_kubelets_cpuset(tmp_path):
    """/proc/<pid>/status shows the container cgroup's cpuset, which is the kubelet's recorded placement."""
    v, host = verdicts(tmp_path)
    root = Path(host.root)
    cpu_state = json.loads((root / "var/lib/kubelet/cpu_manager_state").read_text())["entries"]
    mem_state = json.loads((root / "var/lib/kubelet/memory_manager_state").read_text())["entries"]
    for name in ("exclusive", "v1-exclusive"):
        version, cgroup, cpus, _ = PODS[name]
        cpuset = (root / ("sys/fs/cgroup" if version == "v2" else "sys/fs/cgroup/cpuset") / cgroup.lstrip("/")
                  / ("cpuset.cpus.effective" if version == "v2" else "cpuset.cpus")).read_text()
        status = (root / f"proc/{PIDS[name]}/status").read_text()
        allowed = next(ln.split(":", 1)[1] for ln in status.splitlines() if ln.startswith("Cpus_allowed_list"))
        uid = parse_pod_cgroup(cgroup).uid
        assert parse_list(allowed.strip()) == parse_list(cpuset.strip()) == parse_list(cpu_state[uid]["app"])
        assert "2-3" in v[name].reason
    uid = UID["memory-pinned"]
    assert mem_state[uid]["app"][0]["numaAffinity"] == [0]
    assert "memory nodes 0 of 0-1" in v["memory-pinned"].reason


def test_qos_classes_and_pod_uids_narrow_the_rest(tmp_path):
    cfg = balance(pod_qos_classes=["guaranteed", "burstable"], exclude_pods=[UID["burstable"]])
    v, _ = verdicts(tmp_path, cfg)
    assert v["besteffort"].rule == "excluded-qos"
    assert v["burstable"].rule == "excluded-pod"
    assert v["exclusive"].rule == "kubelet-placed"  # placement first, whatever the lists say
    assert v["shared-guaranteed"].rule == "task-follows-memory"


def test_qos_classes_cannot_bring_placed_pods_back():
    reason = pod_selection(systemd_path("guaranteed", UID["exclusive"]), N1, (0, 1), N0 + N1, (0, 1),
                           qos_classes=("guaranteed",))
    assert reason[0] == "kubelet-placed"
    assert pod_selection("/system.slice/postgresql.service", N1, (0,), N0 + N1, (0, 1)) is None


def test_config_keys_from_toml():
    cfg = compile_config(parse_toml(f'[balance]\npod_qos_classes = ["burstable"]\n'
                                    f'exclude_pods = ["{UID["besteffort"].upper()}"]\n'))
    assert cfg.balance.pod_qos_classes == ("burstable",)
    assert cfg.balance.exclude_pods == (UID["besteffort"],)
    with pytest.raises(ConfigError, match=r"balance\.pod_qos_classes\[0\].*balance\.exclude_pods\[0\]"):
        compile_config(parse_toml('[balance]\npod_qos_classes = ["gold"]\nexclude_pods = ["web-1"]\n'))
