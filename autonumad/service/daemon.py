"""The daemon: snapshot -> decide -> execute, pass after pass.

    while not stopping:
        snapshot = take_snapshot(host)          # one immutable read
        history.observe(snapshot)               # where things ran, CPU use
        decision = decide(snapshot, history)    # pure: actions with reasons
        outcomes = executor.run(decision)       # rate-limited, budgeted
        history.record(outcomes); metrics; state.json; sd_notify
        sleep on an Event until the next pass, a signal, or a cheap re-check
        finding a candidate re-pinned

Signals only set flags (SIGTERM/SIGINT stop, SIGHUP reload); the loop
notices them within a second, after the current batch. Between passes the
daemon re-reads `/proc/<pid>/status` of the processes it already knows
every `fast_recheck_s` (tens of small reads) and starts a pass at once when
one's CPU affinity changed: that is how it reacts to a re-pinned workload in
about a second instead of a whole interval.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autonumad import __version__
from autonumad.errors import AutonumadError, HostError, ProcessError
from autonumad.act.executor import Executor, Outcome, TokenBucket
from autonumad.plan.history import History
from autonumad.host import Host
from autonumad.plan.policy import BalancePolicyConfig, Decision, decide, owned_from_action
from autonumad.readers.proc_status import read_status
from autonumad.observe.snapshot import HostSnapshot, ScanLimits, SnapshotCache, take_snapshot
from autonumad.service.tiering_step import TieringStep, leave_slow_tier_to_tiering, tiering_doc

log = logging.getLogger("autonumad")

# Verdicts that need no per-process line: nothing is wrong, or the reason was
# already logged once for the whole host.
_QUIET_RULES = frozenset({"already-local", "single-node", "disabled"})
# Longest sleep between watchdog pings when fast re-checks are off (the
# unit's WatchdogSec is far longer).
WATCHDOG_STEP_S = 5.0


@dataclass
class PassReport:
    """What one pass saw and did; metrics, state.json and the demo read it."""

    number: int
    started_s: float
    duration_s: float
    snapshot: HostSnapshot
    decision: Decision
    outcomes: list[Outcome]
    drifts: list[Any] = field(default_factory=list)
    tiering: Any = None  # tiering.TieringDecision, when tiering ran
    tiering_outcomes: list[Outcome] = field(default_factory=list)


class Daemon:
    def __init__(self, host: Host, config, *, config_path: str | None = None, dry_run: bool | None = None,
                 interval_s: float | None = None, manage_knobs: bool = True, notifier=None, metrics=None,
                 clock=time.monotonic):
        self.host = host
        self.config = config
        self.config_path = config_path
        self.dry_run_override = dry_run
        self.interval_override = interval_s
        self.manage_knobs = manage_knobs
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.history = History()
        self.generation = 0
        self.last_reload: dict[str, Any] = {"ok": True, "error": None}
        # Only the last report is kept: metrics, state.json and the demo read
        # the last pass, and each report holds a whole snapshot.
        self.reports: list[PassReport] = []
        self.snapshot_cache = SnapshotCache()
        self.knobs = None
        self._prev_cpu = None
        self._single_node_logged = False
        self._last_rules: dict[tuple[int, int], str] = {}
        self.tiering = TieringStep(host, clock)
        self._build_from_config()

    # -- configuration ---------------------------------------------------------
    @property
    def interval_s(self) -> float:
        return self.interval_override or self.config.daemon.interval_s

    @property
    def dry_run(self) -> bool:
        return self.config.daemon.dry_run if self.dry_run_override is None else self.dry_run_override

    def _build_from_config(self) -> None:
        self.policy_cfg = BalancePolicyConfig.from_config(self.config.balance)
        rate = self.config.balance.migrate_rate_mib_s * 2**20
        self.executor = Executor(self.host, TokenBucket(rate, clock=self.clock), self.stop_event,
                                 self.dry_run, self.clock)

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def request_reload(self, *_: Any) -> None:
        self.reload_requested.set()
        self.stop_event.set()  # wake the sleep; cleared again after the reload

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def reload(self) -> bool:
        from autonumad.service.config import load_config

        self._notify("reloading")
        try:
            new = load_config(self.config_path) if self.config_path else self.config
        except AutonumadError as e:
            log.error("reload rejected, keeping the running config: %s", e)
            self.last_reload = {"ok": False, "error": str(e), "at": time.time()}
            if self.metrics:
                self.metrics.config_reload(False)
            self._notify("ready")
            return False
        self.config = new
        self._build_from_config()
        if self.manage_knobs and self.knobs is not None:
            self._apply_knobs()
        self.generation += 1
        self.last_reload = {"ok": True, "error": None, "at": time.time()}
        if self.metrics:
            self.metrics.config_reload(True)
        log.info("configuration reloaded (generation %d)", self.generation)
        self._notify("ready")
        return True

    # -- kernel knobs ----------------------------------------------------------
    def _apply_knobs(self) -> None:
        desired = self.config.kernel.desired()
        for c in self.knobs.apply(desired):
            if c.outcome in ("written", "restored"):
                log.info("kernel knob %s: %s -> %s (%s)", c.name, c.old, c.new, c.outcome)
            elif c.outcome in ("absent", "refused"):
                log.warning("kernel knob %s not set: %s %s", c.name, c.outcome, c.error or "")

    def _check_drift(self) -> list[Any]:
        if self.knobs is None:
            return []
        desired = self.config.kernel.desired()
        drifts = self.knobs.verify(desired)
        for d in drifts:
            log.warning("kernel knob %s changed behind autonumad's back: want %s, found %s%s", d.name, d.expected,
                        d.actual, "; re-applying (kernel.enforce)" if self.config.kernel.enforce else "")
        if drifts and self.config.kernel.enforce and self.manage_knobs:
            self._apply_knobs()
        return drifts

    # -- the loop --------------------------------------------------------------
    def run(self, once: bool = False) -> int:
        from autonumad.act.sysctl import KnobManager

        runtime_dir = Path(self.config.daemon.runtime_dir)
        if self.manage_knobs or self.config.kernel.desired():
            self.knobs = KnobManager(self.host, runtime_dir)
        if self.manage_knobs:
            # A corrupt saved-originals file stops the start (SavedKnobsError, one
            # line, exit 1): applying anyway would overwrite the only record of
            # the values to restore. The operator fixes or removes the file.
            for c in self.knobs.recover():
                if c.outcome != "restored":
                    continue
                log.warning("restored kernel knob %s to %s, left changed by a previous run that did not "
                            "exit cleanly", c.name, c.new)
            self._apply_knobs()
        log.info("autonumad %s started on %s: interval %.1f s, migrate rate %.0f MiB/s%s", __version__,
                 "this host" if not self.host.is_fake else f"fake host {self.host.root}", self.interval_s,
                 self.config.balance.migrate_rate_mib_s, ", DRY RUN" if self.dry_run else "")
        ready = False
        try:
            while True:
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.stop_event.clear()
                    self.reload()
                if self.stop_event.is_set():
                    break
                try:
                    report = self.run_pass()
                except HostError:
                    # Logged by run_pass; a host file may come back (a node
                    # onlined again). Try again after one interval.
                    if once or self.stop_event.wait(self.interval_s):
                        break
                    continue
                if not ready:
                    self._notify("ready")
                    ready = True
                self._notify("watchdog")
                if once:
                    break
                self._sleep_until_next_pass(report)
        finally:
            self._shutdown()
        return 0

    def run_pass(self) -> PassReport:
        t0 = self.clock()
        number = self.history.passes + 1
        # The last report's snapshot holds every numa_maps text of the last
        # pass: let it go before this pass reads the new ones.
        self.reports = []
        try:
            snap = take_snapshot(self.host, ScanLimits(min_rss_bytes=self.config.balance.min_rss_bytes),
                                 cache=self.snapshot_cache)
        except HostError as e:
            # A host-level file went bad mid-run (a node offlined?): skip this pass, keep serving.
            log.error("pass %d skipped: %s", number, e)
            if self.metrics:
                self.metrics.pass_error("snapshot")
            raise
        if len(snap.topology.nodes) < 2:
            if not self._single_node_logged:
                log.info("this host has a single NUMA node: nothing to balance; serving views and metrics only")
                self._single_node_logged = True
        self.history.observe(snap, t0)
        decision = decide(snap, self.history, self.policy_cfg, t0, self._prev_cpu)
        decision = leave_slow_tier_to_tiering(snap, decision, self.config, self.host)
        self._prev_cpu = snap.cpu_times
        for a in decision.actions:
            log.info("%s pid %d (%s): %s%s", a.kind.replace("_", " "), a.pid, a.comm, a.reason,
                     " [dry run]" if self.dry_run else "")
        self._log_verdict_changes(snap, decision)
        self.executor.dry_run = self.dry_run
        deadline = t0 + max(0.5, self.interval_s * 0.8)
        outcomes = self.executor.run(decision.actions, deadline)
        now = self.clock()
        for o in outcomes:
            self._record(o, now)
        tiering, tiering_outcomes = self._tiering_pass(snap, deadline, t0, outcomes)
        drifts = self._check_drift()
        report = PassReport(number, t0, self.clock() - t0, snap, decision, outcomes, drifts, tiering,
                            tiering_outcomes)
        self.reports = [report]
        if self.metrics:
            self.metrics.observe_pass(report)
        self._write_state(report)
        return report

    def _tiering_pass(self, snap: HostSnapshot, deadline: float, t0: float, outcomes: list[Outcome]):
        """Tiering after balancing, in the bytes of this pass's budget that balancing left."""
        budget = int(self.config.balance.migrate_rate_mib_s * 2**20 * (deadline - t0))
        budget -= sum(o.moved_bytes for o in outcomes)
        decision, tiering_outcomes = self.tiering.run(snap, self.config, self.executor, deadline, t0, budget)
        for o in tiering_outcomes:
            a = o.action
            log.info("%s pid %d (%s): %s: %s%s", a.rule, a.pid, a.comm, a.reason, o.status,
                     f" ({o.detail})" if o.detail else "")
        return decision, tiering_outcomes

    def _log_verdict_changes(self, snap: HostSnapshot, decision: Decision) -> None:
        """Say why a misplaced process is left alone, once per change of rule.

        Actions are logged every time; a process the policy declines to touch
        (cool-down, idle, excluded, explicit policy, ...) is logged when its
        rule changes, so an operator can see why without a line per process
        per pass; "already-local" needs no explaining.
        """
        seen = {}
        for p in snap.processes:
            v = decision.verdicts.get(p.pid)
            if v is None:
                continue
            key = (p.pid, p.start_ticks)
            seen[key] = v.rule
            if v.actions or self._last_rules.get(key) == v.rule:
                continue
            if v.rule not in _QUIET_RULES:
                log.info("pid %d (%s) left alone: %s: %s", p.pid, p.comm, v.rule, v.reason)
        self._last_rules = seen

    def _record(self, o: Outcome, now: float) -> None:
        a = o.action
        if o.status in ("done", "partial") and a.kind == "migrate":
            self.history.record_migration(a.key, now, a.target_node)
            log.info("pid %d (%s): %s", a.pid, a.comm, o.detail)
        elif o.status == "done" and a.kind == "set_affinity":
            self.history.record_affinity(a.key, now, owned_from_action(a))
            log.info("pid %d (%s): affinity set to node %s, %s", a.pid, a.comm, a.target_node, o.detail)
        elif o.status == "done" and a.kind == "restore_affinity":
            self.history.record_affinity(a.key, now, None)
        elif o.status not in ("dry-run", "done"):
            log.info("pid %d (%s): %s %s: %s", a.pid, a.comm, a.kind, o.status, o.detail)

    def next_pass_at(self, report: PassReport) -> float:
        """When the pass after `report` starts, on self.clock, unless a signal or a re-pin comes first.

        One interval after the last start; sooner when a move stopped short
        (the rate limit or the deadline cut it: fast_recheck_s from now) or
        when tiering can do more then than now (its tracker's first sample,
        idle memory old enough to exchange for waiting hot memory).
        """
        now = self.clock()
        at = report.started_s + self.interval_s
        if any(o.status == "partial" for o in (*report.outcomes, *report.tiering_outcomes)):
            at = min(at, now + self.config.daemon.fast_recheck_s)
        recheck = report.tiering.recheck_in_s if report.tiering is not None else None
        if recheck is not None:
            at = min(at, now + max(self.config.daemon.fast_recheck_s, recheck))
        return at

    def _sleep_until_next_pass(self, report: PassReport) -> None:
        """Sleep until next_pass_at(), waking early for signals or a re-pinned candidate."""
        deadline = self.next_pass_at(report)
        watched = {p.pid: tuple(p.status.cpus_allowed) for p in report.snapshot.processes}
        step = self.config.daemon.fast_recheck_s
        while not self.stop_event.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            # fast_recheck_s = 0 turns the re-checks off; the watchdog is still
            # fed every WATCHDOG_STEP_S.
            if self.stop_event.wait(min(step or WATCHDOG_STEP_S, left)):
                return
            # The loop is alive between passes: keep systemd's watchdog fed when
            # the interval is longer than half of WatchdogSec. A wedged *pass*
            # still trips it, since nothing pings during one.
            self._notify("watchdog")
            if step and self._affinity_changed(watched):
                return

    def _affinity_changed(self, watched: dict[int, tuple[int, ...]]) -> bool:
        for pid, cpus in watched.items():
            try:
                if read_status(self.host, pid).cpus_allowed != cpus:
                    log.debug("pid %d re-pinned: starting a pass now", pid)
                    return True
            except ProcessError:
                continue
        return False

    def _shutdown(self) -> None:
        self._notify("stopping")
        self.tiering.close()
        if self.config.daemon.restore_affinity_on_exit:
            self.restore_owned_affinities()
        if self.manage_knobs and self.knobs is not None and self.config.kernel.restore_on_exit:
            for c in self.knobs.restore():
                log.info("kernel knob %s restored to %s", c.name, c.new)
        log.info("autonumad stopped")

    def restore_owned_affinities(self) -> int:
        from autonumad.act.affinity import set_process_affinity

        n = 0
        for (pid, _start), h in list(self.history.processes.items()):
            if h.owned_affinity is None:
                continue
            try:
                set_process_affinity(self.host, pid, h.owned_affinity.original)
                n += 1
            except (ProcessError, OSError) as e:
                log.info("pid %d: affinity not restored: %s", pid, e)
            h.owned_affinity = None
        if n:
            log.info("restored the CPU affinity of %d process(es) autonumad had placed", n)
        return n

    # -- outputs ---------------------------------------------------------------
    def _notify(self, what: str) -> None:
        if self.notifier is not None:
            getattr(self.notifier, what)()

    def _write_state(self, report: PassReport) -> None:
        """state.json in the runtime dir, atomically: read by `reload --wait` and the CLI."""
        runtime_dir = Path(self.config.daemon.runtime_dir)
        doc = {
            "schema_version": 1,
            "pid": os.getpid(),
            "version": __version__,
            "generation": self.generation,
            "last_reload": self.last_reload,
            "passes": report.number,
            "last_pass": {
                "duration_s": round(report.duration_s, 4),
                "processes_scanned": report.snapshot.scanned,
                "processes_detailed": len(report.snapshot.processes),
                "actions": [{"kind": o.action.kind, "pid": o.action.pid, "comm": o.action.comm,
                             "rule": o.action.rule, "reason": o.action.reason, "status": o.status,
                             "detail": o.detail} for o in report.outcomes],
            },
            "dry_run": self.dry_run,
            "tiering": tiering_doc(report.tiering),
            "updated_at": time.time(),
        }
        try:
            runtime_dir.mkdir(parents=True, exist_ok=True)
            tmp = runtime_dir / f".state.json.{os.getpid()}"
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, runtime_dir / "state.json")
        except OSError as e:
            log.debug("state.json not written: %s", e)
