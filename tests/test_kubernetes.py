"""The Kubernetes manifests (config/kubernetes/), checked offline.

- Every object of the base and the canary validates against the Kubernetes
  JSON schemas of each supported version (kubernetes-validate ships them),
  in strict mode (unknown fields are errors).
- The Prometheus operator's objects (CRDs, not in those schemas) are checked
  for what matters: they select the DaemonSet's pods and its metrics port,
  and the PrometheusRule holds exactly the rules of config/prometheus/.
- The security context is the narrow one docs/fleet.md describes, the
  ConfigMap's TOML passes autonumad's own config checks, the canary is the
  base DaemonSet but for its documented differences, and the seccomp profile
  is the runtime default plus move_pages/migrate_pages.

Run as a script with --write-prometheusrule to regenerate
config/kubernetes/prometheus-operator/prometheusrule.yaml.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "config/kubernetes"
# Native sidecars (an init container with restartPolicy: Always) are on by
# default from 1.29 and GA in 1.33; 1.30 is the oldest release still
# patched by most vendors.
OLDEST_SUPPORTED = (1, 30)
IMAGE = "localhost/autonumad:latest"
PROMETHEUSRULE = K8S / "prometheus-operator/prometheusrule.yaml"
RULE_FILES = [REPO / "config/prometheus/autonumad-rules.yml", REPO / "config/prometheus/autonumad-fleet-rules.yml"]


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize_objects(directory: Path) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objs = []
    for res in kust["resources"]:
        assert (directory / res).is_file(), f"{directory.name}/kustomization.yaml lists missing {res}"
        objs += load(directory / res)
    return objs


def supported_versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate.utils")
    out = []
    for v in kv.all_versions():
        m = re.fullmatch(r"(\d+)\.(\d+)\.\d+", v)
        if m and (int(m.group(1)), int(m.group(2))) >= OLDEST_SUPPORTED:
            out.append(v)
    return out


def daemonset(directory: str) -> dict:
    (ds,) = [o for o in kustomize_objects(K8S / directory) if o["kind"] == "DaemonSet"]
    return ds


def containers(ds: dict) -> dict[str, dict]:
    spec = ds["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


# -- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["base", "canary"])
def test_manifests_validate_against_every_supported_kubernetes_version(directory):
    import kubernetes_validate.utils as kv

    versions = supported_versions()
    assert len(versions) >= 4, versions  # the package ships these; fewer means it lost some
    objs = kustomize_objects(K8S / directory)
    assert objs
    for version in versions:
        for obj in objs:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{directory} {obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: "
                            f"{e.message} at {'.'.join(map(str, e.path))}")


def test_validation_catches_a_broken_manifest():
    """The check above can fail: a misspelt field and a wrong type are rejected."""
    import kubernetes_validate.utils as kv

    version = supported_versions()[-1]
    ds = copy.deepcopy(daemonset("base"))
    ds["spec"]["template"]["spec"]["hostPid"] = True  # should be hostPID
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, version, strict=True)
    ds = copy.deepcopy(daemonset("base"))
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "10117"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (optional: kustomize render)")
@pytest.mark.parametrize("directory", ["base", "canary", "prometheus-operator"])
def test_kubectl_kustomize_renders(directory):
    r = subprocess.run(["kubectl", "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rendered = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert {o["kind"] for o in rendered} == {o["kind"] for o in kustomize_objects(K8S / directory)}


# -- what the DaemonSet may do -------------------------------------------------------------


def test_the_daemon_container_is_narrow():
    ds = daemonset("base")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["automountServiceAccountToken"] is False
    c = containers(ds)["autonumad"]
    sc = c["securityContext"]
    assert c["image"] == IMAGE
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "SYS_NICE"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "autonumad.json"}
    assert c["args"] == ["run", "--kernel-knobs=external"]
    # the only writable mounts: the runtime directory and a memory-backed /tmp
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/run/autonumad", "/tmp"}


def test_only_the_kernel_knob_sidecar_is_privileged_and_it_restores():
    ds = daemonset("base")
    by_name = containers(ds)
    privileged = {n for n, c in by_name.items() if c.get("securityContext", {}).get("privileged")}
    assert privileged == {"kernel-knobs"}
    knobs = by_name["kernel-knobs"]
    # A native sidecar: started before the daemon, stopped after it (restore at stop).
    assert knobs["restartPolicy"] == "Always"
    assert knobs["command"][-1] == "autonumad.service.knobkeeper"
    assert knobs["startupProbe"]["exec"]["command"] == ["/usr/bin/autonumad", "sysctl", "verify"]
    installer = by_name["install-seccomp-profile"]
    assert installer["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "/usr/share/autonumad/seccomp.json" in installer["command"][-1]
    assert "'/seccomp/autonumad.json'" in installer["command"][-1]
    order = [c["name"] for c in ds["spec"]["template"]["spec"]["initContainers"]]
    assert order == ["install-seccomp-profile", "kernel-knobs"]


def test_only_numa_nodes_are_selected():
    ds = daemonset("base")
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    for term in terms:  # ORed: each must require a NUMA label and exclude the canary
        keys = {e["key"]: e for e in term["matchExpressions"]}
        assert {"feature.node.kubernetes.io/memory-numa", "autonumad.io/numa"} & set(keys)
        assert keys["autonumad.io/mode"]["operator"] == "NotIn"
        assert set(keys["autonumad.io/mode"]["values"]) == {"dry-run", "off"}


def test_canary_is_the_base_but_dry_run_on_canary_nodes_without_knobs():
    base, canary = daemonset("base"), daemonset("canary")
    assert canary["metadata"]["name"] != base["metadata"]["name"]
    cc = containers(canary)
    assert "kernel-knobs" not in cc
    assert cc["autonumad"]["args"] == ["run", "--kernel-knobs=external", "--dry-run"]
    terms = canary["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    for term in terms:
        assert {"key": "autonumad.io/mode", "operator": "In", "values": ["dry-run"]} in term["matchExpressions"]
    # everything else identical: undo the documented differences and compare
    undone = copy.deepcopy(canary)
    undone["metadata"]["name"] = base["metadata"]["name"]
    undone["spec"]["selector"]["matchLabels"]["autonumad.io/mode"] = "active"
    t = undone["spec"]["template"]
    t["metadata"]["labels"]["autonumad.io/mode"] = "active"
    t["spec"]["affinity"] = base["spec"]["template"]["spec"]["affinity"]
    t["spec"]["initContainers"] = base["spec"]["template"]["spec"]["initContainers"]
    t["spec"]["containers"][0]["args"] = base["spec"]["template"]["spec"]["containers"][0]["args"]
    assert undone == base


def test_configmap_toml_passes_autonumads_own_checks():
    from autonumad.service.config import compile_config, parse_listen, parse_toml

    (cm,) = [o for o in kustomize_objects(K8S / "base") if o["kind"] == "ConfigMap"]
    cfg = compile_config(parse_toml(cm["data"]["autonumad.toml"]))
    listen = parse_listen(cfg.metrics.listen)
    assert listen == ("0.0.0.0", 10117)
    assert cfg.daemon.runtime_dir == "/run/autonumad"
    assert cfg.kernel.numa_balancing is not None
    ds = daemonset("base")
    assert containers(ds)["autonumad"]["ports"][0]["containerPort"] == listen[1]
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(listen[1]) and ann["prometheus.io/scrape"] == "true"


def test_namespace_admits_what_the_daemonset_needs():
    (ns,) = [o for o in kustomize_objects(K8S / "base") if o["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for o in kustomize_objects(K8S / "base"):
        assert o["metadata"].get("namespace", ns["metadata"]["name"]) == ns["metadata"]["name"]


# -- the Prometheus operator -----------------------------------------------------------------


def test_podmonitor_selects_the_daemonset_pods_and_names_them_by_node():
    (pm,) = [o for o in load(K8S / "prometheus-operator/podmonitor.yaml")]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    labels = daemonset("base")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    canary_labels = daemonset("canary")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= canary_labels.items()
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == containers(daemonset("base"))["autonumad"]["ports"][0]["name"]
    relabel = {r["targetLabel"]: r for r in ep["relabelings"]}
    assert relabel["job"]["replacement"] == "autonumad"  # what the rules select on
    assert relabel["instance"]["sourceLabels"] == ["__meta_kubernetes_pod_node_name"]


def prometheusrule_text() -> str:
    groups = []
    for f in RULE_FILES:
        groups += yaml.safe_load(f.read_text())["groups"]
    obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "autonumad", "namespace": "autonumad",
                        "labels": {"app.kubernetes.io/name": "autonumad"}},
           "spec": {"groups": groups}}
    header = "".join(line + "\n" for line in PROMETHEUSRULE.read_text().splitlines() if line.startswith("#"))
    return header + yaml.safe_dump(obj, sort_keys=False, width=100)


def test_prometheusrule_holds_exactly_the_rule_files():
    (pr,) = load(PROMETHEUSRULE)
    expected = [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]
    assert pr["spec"]["groups"] == expected, "regenerate: python tests/test_kubernetes.py --write-prometheusrule"


# -- seccomp ---------------------------------------------------------------------------------

PROFILE = K8S / "base/seccomp-autonumad.json"
CONTAINERS_DEFAULT = Path("/usr/share/containers/seccomp.json")


def test_seccomp_profile_is_the_runtime_default_plus_page_moves():
    profile = json.loads(PROFILE.read_text())
    allowed_by_nice = [r for r in profile["syscalls"] if set(r["names"]) == {"move_pages", "migrate_pages"}]
    assert len(allowed_by_nice) == 1
    rule = allowed_by_nice[0]
    assert rule["action"] == "SCMP_ACT_ALLOW" and rule["includes"] == {"caps": ["CAP_SYS_NICE"]}
    others = [r for r in profile["syscalls"] if r is not rule]
    assert not any({"move_pages", "migrate_pages"} & set(r["names"]) for r in others)
    # the daemon's other syscalls are in the default's allow list
    allowed = {n for r in others if r["action"] == "SCMP_ACT_ALLOW" and not r.get("includes") for n in r["names"]}
    assert {"sched_setaffinity", "get_mempolicy", "process_vm_readv", "openat", "bind"} <= allowed
    if not CONTAINERS_DEFAULT.exists():
        pytest.skip(f"{CONTAINERS_DEFAULT} (containers-common) not installed: cannot compare with the default")
    out = subprocess.run([sys.executable, str(REPO / "scripts/seccomp-profile"), str(CONTAINERS_DEFAULT)],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == profile, "regenerate: scripts/seccomp-profile > config/kubernetes/base/seccomp-autonumad.json"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-prometheusrule"]:
        PROMETHEUSRULE.write_text(prometheusrule_text())
    else:
        sys.exit("usage: python tests/test_kubernetes.py --write-prometheusrule")
