"""Prometheus metrics: what the host looks like and what the daemon did about it.

Two kinds of metric, following prometheus/docs writing_exporters.md:

* Counters, a histogram and a few gauges updated by the loop
  (`DaemonMetrics.observe_pass`, `config_reload`, `pass_error`): passes,
  pass duration, decisions, pages moved, failures, drift, reloads.
* A custom collector (`PassCollector`) that turns the LATEST pass report
  into samples on each scrape: per-node memory, CPUs, tiers and the kernel's
  NUMA counters, the kernel knobs, processes scanned and managed, the
  memory-weighted local fraction. A scrape never reads the host; the values
  are as of the last pass (HELP says so), so a scrape costs microseconds and
  cannot stall behind, or slow down, a pass.

Naming (style.md 5.5): prefix `autonumad_`, base units (bytes, seconds),
ratios not percentages, counters end in `_total`, the node label is `node`
as in node_exporter. Label values come from small fixed sets (node ids,
node pairs, knob names, policy rules, errno names, the kernel's NUMA
counter names). The only per-process series is the opt-in top-K gauge
(`[metrics] top_processes`): pids churn, so it is off by default.

The kernel counters exported per node are the NUMA families node_exporter
drops by default (its vmstat collector keeps `^(oom_kill|pgpg|pswp|pg.*fault)`,
its meminfo_numa collector is off): `numa_*`, `pgpromote_*`, `pgdemote_*`
and `pgmigrate_*`. On current kernels nodeN/vmstat holds the node stats
(numa_hit..numa_other since v5.14, pgpromote_*/pgdemote_* since v5.18) but
not the vm events (numa_hint_faults, numa_pages_migrated, pgmigrate_*),
which exist only host-wide in /proc/vmstat (mm/vmstat.c vmstat_text[]);
those are exported without a node label as `autonumad_vmstat_total`.

Tiering (issue 6) will add its own families here: promotions and demotions
by node pair, headroom target and actual per fast node.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest, make_wsgi_app, write_to_textfile
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from autonumad import __version__
from autonumad.errors import AutonumadError, ParseError
from autonumad.readers.knobs import KNOBS
from autonumad.observe.skips import SKIP_FILES, skip_file
from autonumad.observe.snapshot import HostSnapshot, ProcessView

if TYPE_CHECKING:  # for annotations only: metrics must not import the loop it observes
    from autonumad.service.daemon import PassReport
    from autonumad.act.executor import Outcome
    from autonumad.plan.policy import Action

log = logging.getLogger("autonumad")

PREFIX = "autonumad_"

# The kernel counter families worth exporting (see the module docstring).
# Filtering by family keeps the `counter` label to the few dozen names the
# kernel defines in these families, whatever else a kernel adds to vmstat.
NUMA_COUNTER_PREFIXES = ("numa_", "pgpromote_", "pgdemote_", "pgmigrate_")

# A pass reads /proc/<pid>/statm of every process and numa_maps of the
# candidates: a few ms on an idle box, seconds on a big one; the daemon cuts
# a pass at 80 % of the interval (10 s by default), so the buckets span
# 5 ms .. 60 s.
PASS_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Verdict rules meaning "not autonumad's to place": excluded by the config,
# placed explicitly by its owner, or nothing to balance at all. Processes
# under any other verdict count as managed.
UNMANAGED_RULES = frozenset({"disabled", "single-node", "excluded-pid", "excluded-comm", "not-included",
                             "excluded-cgroup", "explicit-memory-policy",
                             "kubelet-placed", "excluded-qos", "excluded-pod"})  # plan/kubepods.py

# Label values known up front, so their series exist (at 0) from the start
# and rate()/increase() see the first event. Skipped.kind in snapshot.py;
# the stages the daemon reports to pass_error().
SKIP_REASONS = ("gone", "denied", "malformed", "error")
PASS_ERROR_STAGES = ("snapshot",)
RELOAD_OUTCOMES = ("success", "failure")

_AS_OF = " As of the daemon's last pass (read then, not at scrape time)."


# -- pure helpers over a pass ---------------------------------------------------------


def numa_counters(counters: Mapping[str, int]) -> dict[str, int]:
    """The NUMA counter families (NUMA_COUNTER_PREFIXES) of a vmstat/numastat mapping."""
    return {name: value for name, value in counters.items() if name.startswith(NUMA_COUNTER_PREFIXES)}


def local_pages(p: ProcessView) -> int:
    """Base pages of the process on the nodes its threads last ran on."""
    return sum(p.pages_by_node.get(n, 0) for n in p.running_nodes)


def memory_weighted_local_fraction(processes: Iterable[ProcessView]) -> float | None:
    """Fraction of all scanned processes' pages that sit where their threads run.

    Weighted by memory, so a 100 GiB database counts for what it weighs and
    a forest of small helpers does not mask it. None when no process has
    pages on any node (nothing measured, which is not the same as 1.0).
    """
    total = local = 0
    for p in processes:
        total += p.total_pages
        local += local_pages(p)
    return local / total if total else None


def top_remote_processes(processes: Iterable[ProcessView], k: int) -> list[ProcessView]:
    """The k processes with the most base pages away from where they run (ties: lower pid)."""
    remote = [p for p in processes if p.total_pages - local_pages(p) > 0]
    remote.sort(key=lambda p: (-(p.total_pages - local_pages(p)), p.pid))
    return remote[:k]


def remote_memory_families(processes: Iterable[ProcessView], page_size_bytes: int) -> Iterator[Metric]:
    """The local fraction's numerator and denominator in bytes, host-wide.

    A fraction cannot be summed across hosts; these two can, so the fleet
    rules get a memory-weighted fleet fraction and the hosts with the most
    remote bytes (docs/fleet.md).
    """
    measured = remote = 0
    for p in processes:
        measured += p.total_pages
        remote += p.total_pages - local_pages(p)
    total = GaugeMetricFamily(f"{PREFIX}measured_memory_bytes",
                              "Resident bytes of the detailed processes, on any node (the local fraction's "
                              "denominator)." + _AS_OF)
    total.add_metric([], measured * page_size_bytes)
    away = GaugeMetricFamily(f"{PREFIX}remote_memory_bytes",
                             "Resident bytes of the detailed processes away from the nodes their threads run on."
                             + _AS_OF)
    away.add_metric([], remote * page_size_bytes)
    yield from (total, away)


def decision_label(actions: Iterable[Action]) -> str:
    """The `action` label of one verdict: its action kinds joined by "+", or "none"."""
    kinds = [a.kind for a in actions]
    return "+".join(kinds) if kinds else "none"


def _num(value: int | bool) -> float:
    return float(int(value))


# -- the scrape-time collector ---------------------------------------------------------


class PassCollector:
    """Samples of the latest pass report, built on each scrape (no host reads).

    The loop hands it each report with `update()`; `collect()` runs in the
    HTTP server's thread and takes one reference to the report, which the
    loop replaces as a whole, so a scrape sees one pass, never a mix of two.
    """

    def __init__(self, top_processes: int = 0):
        self.top_processes = top_processes
        self._report: PassReport | None = None

    def update(self, report: PassReport) -> None:
        self._report = report

    def describe(self) -> list[Metric]:
        # Registering a collector calls describe() (or collect()) to learn its
        # names; an empty list means "do not check", which is right for
        # families that come and go with the pass.
        return []

    def collect(self) -> Iterator[Metric]:
        report = self._report
        if report is None:
            return  # no pass yet: nothing to say about the host
        snap: HostSnapshot = report.snapshot
        yield from self._nodes(snap)
        yield from self._kernel(snap)
        yield from self._processes(report)
        yield from self._tiering(getattr(report, "tiering", None))

    def _nodes(self, snap: HostSnapshot) -> Iterator[Metric]:
        topo = snap.topology
        total = GaugeMetricFamily(f"{PREFIX}node_memory_total_bytes",
                                  "Memory of the NUMA node (nodeN/meminfo MemTotal)." + _AS_OF, labels=["node"])
        free = GaugeMetricFamily(f"{PREFIX}node_memory_free_bytes",
                                 "Free memory of the NUMA node (nodeN/meminfo MemFree)." + _AS_OF, labels=["node"])
        used = GaugeMetricFamily(f"{PREFIX}node_memory_used_bytes",
                                 "Used memory of the NUMA node (nodeN/meminfo MemUsed)." + _AS_OF, labels=["node"])
        cpus = GaugeMetricFamily(f"{PREFIX}node_cpus",
                                 "Online CPUs of the NUMA node (nodeN/cpulist); 0 for a memory-only node." + _AS_OF,
                                 labels=["node"])
        tier = GaugeMetricFamily(
            f"{PREFIX}node_tier_info",
            "Memory tier of the node, always 1: tier is memory_tierN's N (smaller is faster); source is "
            "memory_tiering (the kernel's tiers), fallback-cpuless (CPU-less nodes guessed slower) or "
            "single. Memory-less nodes have no tier." + _AS_OF, labels=["node", "tier", "source"])
        tier_rank = GaugeMetricFamily(
            f"{PREFIX}node_tier_rank",
            "Position of the node's memory tier, 0 = fastest, 1 = next slower, ..." + _AS_OF, labels=["node"])
        numastat = CounterMetricFamily(
            f"{PREFIX}node_numastat",
            "The node's nodeN/numastat counters (pages; numa_hit, numa_miss, numa_foreign, interleave_hit, "
            "local_node, other_node), by kernel counter name." + _AS_OF, labels=["node", "counter"])
        vmstat = CounterMetricFamily(
            f"{PREFIX}node_vmstat",
            "The node's NUMA counters from nodeN/vmstat (numa_*, pgpromote_*, pgdemote_*, pgmigrate_*; "
            "pages or events, as the kernel counts them), by kernel counter name." + _AS_OF,
            labels=["node", "counter"])
        for n in topo.nodes:
            node = str(n.id)
            total.add_metric([node], n.memory_total_bytes)
            free.add_metric([node], n.memory_free_bytes)
            used.add_metric([node], n.memory_used_bytes)
            cpus.add_metric([node], len(n.cpus))
            for name, value in sorted(n.numastat.items()):
                numastat.add_metric([node, name], value)
            for name, value in sorted(numa_counters(n.vmstat).items()):
                vmstat.add_metric([node, name], value)
        for rank, t in enumerate(topo.tiers):
            for node_id in t.nodes:
                tier.add_metric([str(node_id), str(t.id), topo.tier_source], 1)
                tier_rank.add_metric([str(node_id)], rank)
        yield from (total, free, used, cpus, tier, tier_rank, numastat, vmstat)

    def _kernel(self, snap: HostSnapshot) -> Iterator[Metric]:
        host_vmstat = CounterMetricFamily(
            f"{PREFIX}vmstat",
            "Host-wide NUMA counters from /proc/vmstat (numa_*, pgpromote_*, pgdemote_*, pgmigrate_*), by kernel "
            "counter name; hint faults, numa_pages_migrated and pgmigrate_* exist only here." + _AS_OF,
            labels=["counter"])
        for name, value in sorted(numa_counters(snap.vmstat).items()):
            host_vmstat.add_metric([name], value)
        knob = GaugeMetricFamily(
            f"{PREFIX}kernel_knob",
            "Current value of a kernel NUMA knob (booleans as 0/1); absent when this kernel has no such knob "
            "or it could not be read." + _AS_OF, labels=["knob"])
        for name, kv in snap.knobs.items():
            if kv.value is not None:
                knob.add_metric([name], _num(kv.value))
        yield from (host_vmstat, knob)

    def _processes(self, report: PassReport) -> Iterator[Metric]:
        snap: HostSnapshot = report.snapshot
        verdicts = report.decision.verdicts
        scanned = GaugeMetricFamily(f"{PREFIX}processes_scanned",
                                    "Processes whose /proc/<pid>/status the last pass read." + _AS_OF)
        scanned.add_metric([], snap.scanned)
        detailed = GaugeMetricFamily(
            f"{PREFIX}processes_detailed",
            "Processes large enough (balance.min_rss_bytes) that the last pass read their numa_maps, or reused "
            "a settled process's earlier read." + _AS_OF)
        detailed.add_metric([], len(snap.processes))
        # Reads saved: each would have walked the process's page tables under
        # its mmap_lock (observe/snapshot.py SnapshotCache).
        reused = GaugeMetricFamily(
            f"{PREFIX}numa_maps_reused",
            "Detailed processes whose numa_maps the last pass did not read: settled, with no cheap signal "
            "changed, the daemon's earlier read reused (balance.numa_maps_refresh_s)." + _AS_OF)
        reused.add_metric([], sum(1 for p in snap.processes if p.numa_maps_age_s > 0))
        oldest = GaugeMetricFamily(
            f"{PREFIX}numa_maps_oldest_age_seconds",
            "Age of the oldest numa_maps data the last pass planned from; 0 when it read every file." + _AS_OF)
        oldest.add_metric([], max((p.numa_maps_age_s for p in snap.processes), default=0.0))
        managed = GaugeMetricFamily(
            f"{PREFIX}processes_managed",
            "Processes the policy may place: detailed ones not excluded by the config nor placed by their "
            "owner's explicit memory policy." + _AS_OF)
        managed.add_metric([], sum(1 for v in verdicts.values() if v.rule not in UNMANAGED_RULES))
        yield from (scanned, detailed, reused, oldest, managed)
        fraction = memory_weighted_local_fraction(snap.processes)
        if fraction is not None:
            local = GaugeMetricFamily(
                f"{PREFIX}local_fraction",
                "Fraction of the scanned processes' resident pages on the nodes their threads run on, "
                "weighted by memory (1 = all local)." + _AS_OF)
            local.add_metric([], fraction)
            yield local
        yield from remote_memory_families(snap.processes, snap.page_size_bytes)  # fleet sums (config/prometheus/autonumad-fleet-rules.yml)
        if self.top_processes > 0:
            remote = GaugeMetricFamily(
                f"{PREFIX}process_remote_bytes",
                f"Resident bytes away from the nodes its threads run on, for the {self.top_processes} processes "
                "with the most (metrics.top_processes; pids churn, so this is opt-in)." + _AS_OF,
                labels=["pid", "comm"])
            local_fraction = GaugeMetricFamily(
                f"{PREFIX}process_local_fraction",
                "Fraction of the process's resident pages on the nodes its threads run on, for the same top "
                "processes as autonumad_process_remote_bytes." + _AS_OF, labels=["pid", "comm"])
            for p in top_remote_processes(snap.processes, self.top_processes):
                labels = [str(p.pid), p.comm]
                remote.add_metric(labels, (p.total_pages - local_pages(p)) * snap.page_size_bytes)
                local_fraction.add_metric(labels, p.local_fraction())
            yield from (remote, local_fraction)


    @staticmethod
    def _tiering(t) -> Iterator[Metric]:
        """Tiering (issue 6): headroom per fast node, moves by node pair, blocked promotions, tracker cost."""
        if t is None or t.decision.plan is None:
            return
        target = GaugeMetricFamily(f"{PREFIX}tiering_headroom_target_bytes",
                                   "Free memory tiering keeps on each fast node: its promotion floor plus the "
                                   "adaptive headroom." + _AS_OF, labels=["node"])
        free = GaugeMetricFamily(f"{PREFIX}tiering_headroom_free_bytes",
                                 "Free memory on each fast node when tiering decided." + _AS_OF, labels=["node"])
        floor = GaugeMetricFamily(f"{PREFIX}tiering_promotion_floor_bytes",
                                  "Free memory promotion leaves on each fast node: its zones' promo watermarks."
                                  + _AS_OF, labels=["node"])
        waiting = GaugeMetricFamily(f"{PREFIX}tiering_hot_waiting_bytes",
                                    "Hot bytes on the slow tier whose tasks run on this fast node (the promotion "
                                    "backlog)." + _AS_OF, labels=["node"])
        hot = GaugeMetricFamily(f"{PREFIX}tiering_hot_bytes",
                                "Resident bytes the hotness tracker saw hot, by node (estimated)." + _AS_OF,
                                labels=["node"])
        cold = GaugeMetricFamily(f"{PREFIX}tiering_cold_bytes",
                                 "Resident bytes unused for tiering.cold_age_s, by node (estimated)." + _AS_OF,
                                 labels=["node"])
        for n, h in sorted(t.headroom.items()):
            target.add_metric([str(n)], h.target_bytes)
            free.add_metric([str(n)], h.free_bytes)
            floor.add_metric([str(n)], h.floor_bytes)
            waiting.add_metric([str(n)], h.candidate_bytes)
        for n, b in sorted(t.decision.hot_bytes_by_node.items()):
            hot.add_metric([str(n)], b)
        for n, b in sorted(t.decision.cold_bytes_by_node.items()):
            cold.add_metric([str(n)], b)
        pages = CounterMetricFamily(f"{PREFIX}tiering_moved_pages",
                                    "Base pages promoted (rule promote-hot) or demoted (demote-cold), by node pair."
                                    + _AS_OF, labels=["rule", "from_node", "to_node"])
        nbytes = CounterMetricFamily(f"{PREFIX}tiering_moved_bytes",
                                     "Bytes promoted or demoted, by node pair." + _AS_OF,
                                     labels=["rule", "from_node", "to_node"])
        for (rule, src, dst), n in sorted(t.moved_pages.items()):
            pages.add_metric([rule, str(src), str(dst)], n)
            nbytes.add_metric([rule, str(src), str(dst)], t.moved_bytes.get((rule, src, dst), 0))
        blocked = CounterMetricFamily(f"{PREFIX}tiering_blocked_promotions",
                                      "Promotion moves that failed for lack of room (ENOMEM)." + _AS_OF)
        blocked.add_metric([], t.blocked_promotions)
        pingpongs = CounterMetricFamily(f"{PREFIX}tiering_pingpongs",
                                        "Promotions that brought back a quarter or more of a recent demotion "
                                        "(the process then backs off)." + _AS_OF)
        pingpongs.add_metric([], t.pingpongs)
        cost = CounterMetricFamily(f"{PREFIX}tiering_tracker_seconds",
                                   "Wall time the hotness tracker spent starting, re-targeting and sampling."
                                   + _AS_OF)
        cost.add_metric([], t.tracker_cost_s)
        failed = CounterMetricFamily(f"{PREFIX}tiering_move_failed_pages",
                                     "Base pages a promotion or demotion could not move, by move_pages(2) errno "
                                     "(EACCES shared, EBUSY pinned or busy, ENOMEM target full, ...)." + _AS_OF,
                                     labels=["rule", "errno"])
        for (rule, name), n in sorted(t.failed_pages.items()):
            failed.add_metric([rule, name], n)
        yield from (target, free, floor, waiting, hot, cold, pages, nbytes, blocked, pingpongs, cost, failed)


class _OnlyOurs:
    """A view of a registry with only the autonumad_ families (for the textfile).

    The process_* and python_* families describe the daemon's own process;
    in node_exporter's textfile they would pose as node_exporter's.
    """

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return (m for m in self.registry.collect() if m.name.startswith(PREFIX))


# -- the daemon's metrics ---------------------------------------------------------------


class DaemonMetrics:
    """Everything the daemon exports, on a private registry.

    The daemon calls `observe_pass(report)` after each pass,
    `config_reload(ok)` after a reload attempt and `pass_error(stage)` when a
    pass fails. `start_metrics()` builds one from the config and serves it.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None, top_processes: int = 0,
                 textfile: str | None = None, process_metrics: bool = True, clock=time.time):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.textfile = textfile or None
        self.clock = clock
        self.server = None
        self.server_thread = None
        r = self.registry
        self.collector = PassCollector(top_processes)
        r.register(self.collector)
        if process_metrics:
            # The daemon's own CPU, memory, fds and start time (process_*), and
            # python_info: read from this process's /proc/self, whatever host it balances.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        Info(f"{PREFIX}build", "autonumad's version.", registry=r).info({"version": __version__})

        self.passes = Counter(f"{PREFIX}passes", "Completed balancing passes.", registry=r)
        self.pass_duration = Histogram(f"{PREFIX}pass_duration_seconds",
                                       "Wall time of a pass: snapshot, decision and the moves it made.",
                                       buckets=PASS_DURATION_BUCKETS_S, registry=r)
        self.last_pass = Gauge(f"{PREFIX}last_pass_timestamp_seconds",
                               "Unix time at which the last pass completed.", registry=r)
        self.pass_errors = Counter(f"{PREFIX}pass_errors", "Passes skipped because a stage failed (snapshot: "
                                   "a host-level file could not be read).", ["stage"], registry=r)
        self.skipped = Counter(f"{PREFIX}processes_skipped",
                               "Processes a pass left out, by reason: denied (ptrace access refused), "
                               "malformed (unparsable /proc file), gone (exited while an explicitly "
                               "requested pid was read), error; and by the /proc/<pid> file concerned "
                               "(numa_maps, status, stat, task, ...).", ["reason", "file"], registry=r)
        self.decisions = Counter(
            f"{PREFIX}decisions",
            "Policy verdicts, one per detailed process per pass: action is the action kinds taken "
            "(\"none\" when the process is left alone) and rule why (memory-follows-task, task-follows-memory, "
            "already-local, excluded-comm, explicit-memory-policy, cooldown, ...).",
            ["action", "rule"], registry=r)
        self.actions = Counter(f"{PREFIX}actions",
                               "Actions the executor handled, by kind and outcome (done, partial, dry-run, "
                               "gone, denied, failed, skipped, budget).", ["action", "status"], registry=r)
        self.migrated_pages = Counter(f"{PREFIX}migrated_pages",
                                      "Base pages (4 KiB) moved by move_pages(2), by source and target node.",
                                      ["from_node", "to_node"], registry=r)
        self.migrated_bytes = Counter(f"{PREFIX}migrated_bytes", "Bytes moved by move_pages(2), by source and "
                                      "target node.", ["from_node", "to_node"], registry=r)
        self.migration_failures = Counter(
            f"{PREFIX}migration_failures",
            "Pages move_pages(2) did not move, by the per-page errno name (EBUSY, ENOMEM, EACCES, ...; a huge "
            "page counts once).", ["errno"], registry=r)
        self.task_moves = Counter(f"{PREFIX}task_moves",
                                  "Processes whose CPU affinity autonumad set or restored.", registry=r)
        self.threads_moved = Counter(f"{PREFIX}threads_moved",
                                     "Threads whose CPU affinity autonumad set or restored.", registry=r)
        self.knob_drift = Counter(
            f"{PREFIX}kernel_knob_drift",
            "Passes that found a managed kernel knob away from its configured value (changed behind "
            "autonumad's back, e.g. by tuned or an admin).", ["knob"], registry=r)
        self.reloads = Counter(f"{PREFIX}config_reloads", "Config reloads (SIGHUP), by outcome.", ["outcome"],
                               registry=r)
        self.last_reload_ok = Gauge(f"{PREFIX}config_last_reload_successful",
                                    "1 if the last config reload succeeded (or none happened), 0 if it was "
                                    "rejected and the previous config is still in force.", registry=r)
        self.last_reload_success = Gauge(f"{PREFIX}config_last_reload_success_timestamp_seconds",
                                         "Unix time of the last successful config load (start or reload).",
                                         registry=r)
        for reason in SKIP_REASONS:
            for name in SKIP_FILES:
                self.skipped.labels(reason, name)
        for stage in PASS_ERROR_STAGES:
            self.pass_errors.labels(stage)
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome)
        for name in KNOBS:
            self.knob_drift.labels(name)
        self.last_reload_ok.set(1)
        self.last_reload_success.set(self.clock())

    # -- the daemon's hooks ------------------------------------------------------------

    def observe_pass(self, report: PassReport) -> None:
        """Count what one pass did, cache it for scrapes, and write the textfile."""
        self.passes.inc()
        self.pass_duration.observe(report.duration_s)
        for s in report.snapshot.skipped:
            self.skipped.labels(s.kind, skip_file(s.message)).inc()
        for v in report.decision.verdicts.values():
            self.decisions.labels(decision_label(v.actions), v.rule).inc()
        for o in report.outcomes:
            self._observe_outcome(o)
        for d in report.drifts:
            self.knob_drift.labels(d.name).inc()
        self.collector.update(report)
        self.last_pass.set(self.clock())
        if self.textfile:
            self.write_textfile()

    def _observe_outcome(self, o: Outcome) -> None:
        a = o.action
        self.actions.labels(a.kind, o.status).inc()
        if a.kind == "migrate" and o.moved_pages:
            to_node = str(a.target_node)
            attributed = 0
            for from_node, pages in sorted(o.moved_from.items()):
                self.migrated_pages.labels(str(from_node), to_node).inc(pages)
                self.migrated_bytes.labels(str(from_node), to_node).inc(pages * o.page_size_bytes)
                attributed += pages
            # Pages whose source the mover could not tell still count in the totals.
            rest = o.moved_pages - attributed
            if rest > 0:
                self.migrated_pages.labels("unknown", to_node).inc(rest)
                self.migrated_bytes.labels("unknown", to_node).inc(rest * o.page_size_bytes)
        for name, pages in o.failures.items():
            self.migration_failures.labels(name).inc(pages)
        if a.kind in ("set_affinity", "restore_affinity") and o.status == "done":
            self.task_moves.inc()
            self.threads_moved.inc(o.threads_set)

    def config_reload(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_success.set(self.clock())

    def pass_error(self, stage: str) -> None:
        self.pass_errors.labels(stage).inc()

    # -- output ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text exposition format (what a scrape returns)."""
        return generate_latest(self.registry)

    def write_textfile(self) -> None:
        """Write the autonumad_ families to `textfile` atomically (temp file + rename).

        A failure is logged, never raised: a full disk must not stop balancing.
        """
        try:
            write_to_textfile(self.textfile, _OnlyOurs(self.registry))
        except OSError as e:
            log.warning("metrics textfile %s not written: %s", self.textfile, e)

    def serve(self, address: str, port: int, web=None) -> tuple[str, int]:
        """Serve the registry over HTTP on exactly `address`:`port` (port 0: any free one).

        Returns the bound (address, port). prometheus-client's own default
        address is 0.0.0.0, so the address is always passed explicitly.
        `web` (a webconfig.WebConfig) adds TLS and basic authentication.
        """
        try:
            if web is not None:
                from prometheus_client import make_wsgi_app

                from autonumad.service.webconfig import serve

                self.server, self.server_thread = serve(make_wsgi_app(self.registry), address, port, web)
            else:
                self.server, self.server_thread = _serve_wsgi(address, port, self.registry)
        except OSError as e:
            raise AutonumadError(f"metrics endpoint {_show_address(address, port)}: cannot listen: "
                                 f"{e.strerror or e}") from None
        return address, self.server.server_port

    @property
    def address(self) -> tuple[str, int] | None:
        """(address, port) the endpoint listens on, or None when not serving."""
        if self.server is None:
            return None
        return self.server.server_address[0], self.server.server_port

    def close(self) -> None:
        """Stop the HTTP server, if any (the daemon just exits; tests call this)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
            self.server_thread = None


def _show_address(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def start_metrics(config, host=None) -> DaemonMetrics | None:
    """Build the daemon's metrics from `config.metrics` and start serving them.

    `listen = ""` serves nothing; `textfile` (if set) is written after each
    pass. With neither, there is nobody to export to and this returns None
    (the daemon runs without metrics). `host` is not read: the collector
    works from pass reports only, so a scrape never touches /proc or /sys.
    """
    del host
    m = config.metrics
    try:
        listen = m.listen_address()
    except ParseError as e:
        raise AutonumadError(f"metrics.listen: {e}") from None
    if listen is None and not m.textfile:
        return None
    # The *_created series client_python adds to every counter double the
    # series count for a timestamp Prometheus' text format does not use.
    # This is process-wide, which is right for the daemon's own process.
    try:
        from prometheus_client import disable_created_metrics
    except ImportError:
        # client_python 0.16 (Debian 12's python3-prometheus-client) has no
        # disable_created_metrics(); 0.17 added it as a setter of this same
        # module flag, which 0.16 reads on every new metric.
        import prometheus_client.metrics as _pm

        _pm._use_created = False
    else:
        disable_created_metrics()
    web = None
    if m.web_config and listen is not None:
        from autonumad.service.webconfig import load_web_config

        web = load_web_config(m.web_config)
    metrics = DaemonMetrics(top_processes=m.top_processes, textfile=m.textfile or None)
    if listen is not None:
        address, port = metrics.serve(*listen, web=web)
        scheme = "https" if web is not None and web.tls else "http"
        auth = " (basic auth)" if web is not None and web.users else ""
        log.info("metrics on %s://%s/metrics%s", scheme, _show_address(address, port), auth)
    return metrics


def reload_metrics(metrics: DaemonMetrics | None, old, new) -> None:
    """A reload that changes [metrics]: apply what can change live, say what needs a restart.

    `top_processes` and `textfile` take effect at the next pass; the
    endpoint (`listen`, `web_config`) is bound once, at start, so a change
    there is logged as needing a restart and the endpoint keeps serving as
    it did (issue 10: "applies it or says it needs a restart").
    """
    if old == new:
        return
    restart = [k for k in ("listen", "web_config") if getattr(old, k) != getattr(new, k)]
    if metrics is None:
        if new.listen_address() is not None or new.textfile:
            restart = restart or ["listen", "textfile"]
    else:
        metrics.collector.top_processes = new.top_processes
        metrics.textfile = new.textfile or None
    if restart:
        log.warning("[metrics] %s changed: that needs a restart (systemctl restart autonumad); the endpoint "
                    "keeps serving as before until then", ", ".join(restart))
    else:
        log.info("[metrics] changes applied")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Scrapes are not worth a log line each."""


def _serve_wsgi(address: str, port: int, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    """client_python's exposition app on a thread-per-request server, returned so it can be closed.

    start_http_server() returns the server only since client_python 0.17;
    Debian 12 ships 0.16, whose version returns None. This is the same
    server, built here so both behave alike.
    """

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a scrape in flight never holds up the daemon's exit
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = make_server(address, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
