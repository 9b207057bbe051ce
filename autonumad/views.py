"""Read-only views: a snapshot turned into JSON documents and tables.

The JSON shapes are contracts (issue 2): checks outside the project read
`topology --json` and `status --json`. Every document carries
`schema_version` so later additions stay compatible.
"""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from autonumad.readers.lists import format_list
from autonumad.readers.nodes import Topology
from autonumad.readers.proc_stat import CpuTimes, cpu_busy_fraction
from autonumad.observe.snapshot import HostSnapshot, ProcessView

SCHEMA_VERSION = 1


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def topology_doc(topology: Topology, knobs_json: Mapping[str, Any]) -> dict[str, Any]:
    tier_by_node = {n: t.id for t in topology.tiers for n in t.nodes}
    return {
        "schema_version": SCHEMA_VERSION,
        "nodes": [
            {
                "id": n.id,
                "cpus": list(n.cpus),
                "has_cpu": n.has_cpu,
                "has_memory": n.has_memory,
                "memory_total_bytes": n.memory_total_bytes,
                "memory_free_bytes": n.memory_free_bytes,
                "distances": {str(k): v for k, v in sorted(n.distances.items())},
                "tier": tier_by_node.get(n.id),
            }
            for n in topology.nodes
        ],
        # Fastest first: a smaller position in this list is faster memory.
        "tiers": [{"id": t.id, "nodes": list(t.nodes)} for t in topology.tiers],
        "tier_source": topology.tier_source,
        "kernel": dict(knobs_json),
    }


def render_topology(doc: Mapping[str, Any], console: Console) -> None:
    t = Table(title="NUMA nodes", title_justify="left")
    for col, just in (("node", "right"), ("cpus", "left"), ("tier", "right"), ("total", "right"),
                      ("free", "right"), ("distances", "left")):
        t.add_column(col, justify=just)
    for n in doc["nodes"]:
        t.add_row(str(n["id"]), format_list(n["cpus"]) or "-", str(n["tier"]),
                  _mib(n["memory_total_bytes"]), _mib(n["memory_free_bytes"]),
                  " ".join(f"{k}:{v}" for k, v in n["distances"].items()))
    console.print(t)
    tiers = Table(title=f"Memory tiers (fastest first; from {doc['tier_source']})", title_justify="left")
    tiers.add_column("position", justify="right")
    tiers.add_column("tier id", justify="right")
    tiers.add_column("nodes")
    for i, tier in enumerate(doc["tiers"]):
        tiers.add_row(str(i), str(tier["id"]), format_list(tier["nodes"]))
    console.print(tiers)
    k = Table(title="Kernel NUMA knobs", title_justify="left")
    k.add_column("knob")
    k.add_column("value", justify="right")
    for name, value in doc["kernel"].items():
        k.add_row(name, "absent" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
    console.print(k)


def process_doc(p: ProcessView, page_bytes: int) -> dict[str, Any]:
    """One process; `page_bytes` is the host's page, the unit of pages_by_node."""
    return {
        "pid": p.pid,
        "comm": p.comm,
        "rss_bytes": p.rss_bytes,
        "pages_by_node": {str(n): c for n, c in sorted(p.pages_by_node.items())},
        "cpus_allowed": list(p.status.cpus_allowed),
        "mems_allowed": list(p.status.mems_allowed),
        "running_nodes": list(p.running_nodes),
        "threads": len(p.threads),
        "local_fraction": round(p.local_fraction(), 4),
        "remote_bytes": remote_bytes(p, page_bytes),
        "page_size_bytes": page_bytes,
        "policy": p.policy,
        "cgroup": p.cgroup,
        # How old the numa_maps data behind pages_by_node is: 0 when read in
        # this pass; more when the daemon's cache reused a settled process's
        # last read (observe/snapshot.py SnapshotCache).
        "numa_maps_age_s": round(p.numa_maps_age_s, 1),
    }


def remote_bytes(p: ProcessView, base_page_bytes: int) -> int:
    """Bytes of the process away from the nodes its threads run on."""
    local = sum(p.pages_by_node.get(n, 0) for n in p.running_nodes)
    return (p.total_pages - local) * base_page_bytes


def status_doc(snap: HostSnapshot, prev_cpu: Mapping[int, CpuTimes] | None = None,
               limit: int | None = 20) -> dict[str, Any]:
    busy = cpu_busy_fraction(prev_cpu, snap.cpu_times) if prev_cpu is not None else {}
    nodes = []
    for n in snap.topology.nodes:
        cpu_use = [busy.get(c, 0.0) for c in n.cpus]
        nodes.append({
            "id": n.id,
            "tier": next((t.id for t in snap.topology.tiers if n.id in t.nodes), None),
            "cpus": list(n.cpus),
            "memory_total_bytes": n.memory_total_bytes,
            "memory_free_bytes": n.memory_free_bytes,
            "memory_used_bytes": n.memory_used_bytes,
            "cpu_busy_fraction": round(sum(cpu_use) / len(cpu_use), 4) if cpu_use else None,
        })
    procs = sorted(snap.processes, key=lambda p: (-remote_bytes(p, snap.page_size_bytes), -p.rss_bytes, p.pid))
    if limit is not None:
        procs = procs[:limit]
    total = sum(p.total_pages for p in snap.processes)
    local = sum(p.total_pages * p.local_fraction() for p in snap.processes)
    return {
        "schema_version": SCHEMA_VERSION,
        "nodes": nodes,
        "local_fraction": round(local / total, 4) if total else 1.0,
        "processes": [process_doc(p, snap.page_size_bytes) for p in procs],
        "processes_scanned": snap.scanned,
        "processes_detailed": len(snap.processes),
        "warnings": [s.message for s in snap.skipped],
    }


def render_status(doc: Mapping[str, Any], console: Console) -> None:
    t = Table(title="Nodes", title_justify="left")
    for col in ("node", "tier", "cpus", "cpu busy", "total", "used", "free"):
        t.add_column(col, justify="left" if col == "cpus" else "right")
    for n in doc["nodes"]:
        busy = "-" if n["cpu_busy_fraction"] is None else f"{n['cpu_busy_fraction']:.0%}"
        t.add_row(str(n["id"]), str(n["tier"]), format_list(n["cpus"]) or "-", busy,
                  _mib(n["memory_total_bytes"]), _mib(n["memory_used_bytes"]), _mib(n["memory_free_bytes"]))
    console.print(t)
    node_ids = [n["id"] for n in doc["nodes"]]
    p = Table(title=f"Processes, most memory away from where they run first "
                    f"(host local fraction {doc['local_fraction']:.1%})", title_justify="left")
    for col in ("pid", "comm", "rss", "runs on", "local", *(f"N{i}" for i in node_ids), "policy"):
        p.add_column(col, justify="left" if col in ("comm", "runs on", "policy") else "right")
    for proc in doc["processes"]:
        lf = proc["local_fraction"]
        style = "green" if lf >= 0.9 else "yellow" if lf >= 0.5 else "red"
        p.add_row(str(proc["pid"]), proc["comm"], _mib(proc["rss_bytes"]),
                  format_list(proc["running_nodes"]) or "-", f"[{style}]{lf:.0%}[/{style}]",
                  *(_mib(proc["pages_by_node"].get(str(i), 0) * proc["page_size_bytes"]) for i in node_ids), proc["policy"])
    console.print(p)


def tiering_status_doc(snap: HostSnapshot, tiering_config, daemon_tiering: Mapping[str, Any] | None,
                       expected_tracker: str) -> dict[str, Any] | None:
    """Tiers, the tracker, and per fast node the headroom target against the free room.

    `daemon_tiering` is the running daemon's last pass (state.json "tiering"):
    it has the adaptive headroom, the tracker really in use and the hot and
    cold bytes. Without it, the configured headroom and the tracker the
    config would choose on this kernel are shown.
    """
    from autonumad.readers.zoneinfo import node_watermarks
    from autonumad.plan.tiering import floor_bytes, kernel_roles, plan_tiers

    plan = plan_tiers(snap.topology, tiering_config)
    if plan is None:
        return None
    live = {h["node"]: h for h in (daemon_tiering or {}).get("headroom", [])}
    wmarks = node_watermarks(snap.zones)
    nodes = []
    for n in plan.fast_nodes:
        node = snap.topology.node(n)
        h = live.get(n)
        floor = floor_bytes(wmarks.get(n), snap.page_size_bytes)
        nodes.append({
            "node": n,
            "demotion_target": plan.demotion_targets[n],
            # Free memory demotion keeps: the promotion floor (promo watermark) plus the headroom.
            "headroom_target_bytes": h["target_bytes"] if h else floor + tiering_config.headroom.resolve_bytes(
                node.memory_total_bytes),
            "floor_bytes": h["floor_bytes"] if h else floor,
            "free_bytes": node.memory_free_bytes,
            "hot_bytes": h["hot_bytes"] if h else None,
            "cold_bytes": h["cold_bytes"] if h else None,
            # Hot bytes on the slow tier whose tasks run on this node (the promotion backlog).
            "hot_waiting_bytes": h.get("candidate_bytes") if h else None,
        })
    return {
        "enabled": tiering_config.enabled,
        "fast_nodes": list(plan.fast_nodes),
        "slow_nodes": list(plan.slow_nodes),
        "source": plan.source,
        "tracker": daemon_tiering["tracker"] if daemon_tiering else expected_tracker,
        "roles": kernel_roles(snap.knobs.as_json()),
        "from_daemon": daemon_tiering is not None,
        "nodes": nodes,
        # Every memory node, slow ones included (from the daemon only).
        "hot_bytes_by_node": dict((daemon_tiering or {}).get("hot_bytes_by_node", {})),
        "cold_bytes_by_node": dict((daemon_tiering or {}).get("cold_bytes_by_node", {})),
    }


def render_tiering(doc: Mapping[str, Any] | None, console: Console) -> None:
    if doc is None:
        return
    how = "the running daemon's last pass" if doc["from_daemon"] else "the config (no daemon state found)"
    t = Table(title=f"Tiering ({'on' if doc['enabled'] else 'off'}): fast {format_list(doc['fast_nodes'])}, "
                    f"slow {format_list(doc['slow_nodes'])} ({doc['source']}); tracker {doc['tracker']}; "
                    f"from {how}", title_justify="left")
    for col in ("fast node", "demotes to", "free target", "floor", "free", "hot", "cold", "hot waiting"):
        t.add_column(col, justify="right")

    def opt(v):
        return "-" if v is None else _mib(v)
    for n in doc["nodes"]:
        short = n["free_bytes"] < n["headroom_target_bytes"]
        free = _mib(n["free_bytes"])
        t.add_row(str(n["node"]), str(n["demotion_target"]), _mib(n["headroom_target_bytes"]),
                  _mib(n["floor_bytes"]), f"[yellow]{free}[/yellow]" if short else free,
                  opt(n["hot_bytes"]), opt(n["cold_bytes"]), opt(n["hot_waiting_bytes"]))
    console.print(t)
    console.print(f"roles: {doc['roles']}")
    if doc["hot_bytes_by_node"] or doc["cold_bytes_by_node"]:
        nodes = sorted(set(doc["hot_bytes_by_node"]) | set(doc["cold_bytes_by_node"]), key=int)
        console.print("hot/cold by node: " + ", ".join(
            f"N{n} {_mib(doc['hot_bytes_by_node'].get(n, 0))}/{_mib(doc['cold_bytes_by_node'].get(n, 0))}"
            for n in nodes))
