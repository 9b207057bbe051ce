"""The daemon: read -> plan -> execute -> record, pass after pass.

    while not stopping:
        inputs = read_pass_inputs(host, ...)     # observe/inputs.py: snapshot, hotness, placement
        history.observe(inputs.snapshot)         # where things ran, CPU use
        plan = plan(inputs, history, config)     # plan/planner.py: pure, actions with reasons
        outcomes = executor.run(plan.actions)    # act/executor.py: one run, rate, budget, deadline
        record(outcomes): history, metrics, state.json, sd_notify
        sleep on an Event until the next pass, a signal, or a cheap re-check
        finding a candidate re-pinned

Signals only set flags (SIGTERM/SIGINT stop, SIGHUP reload); the loop
notices them within a second. A stop ends the mover after its current
batch; a reload never does: it is applied between passes, so a burst of
SIGHUPs cannot cut an in-flight migration short. Between passes the daemon
re-reads `/proc/<pid>/status` of the processes it already knows every
`fast_recheck_s` (tens of small reads) and starts a pass at once when one's
CPU affinity changed: that is how it reacts to a re-pinned workload in
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
from typing import Any, Mapping

from autonumad import __version__
from autonumad.errors import AutonumadError, HostError, ProcessError
from autonumad.act.executor import Executor, TokenBucket
from autonumad.host import Host
from autonumad.model import CUT_DEADLINE, MIGRATE, RESTORE_AFFINITY, SET_AFFINITY, Decision, Outcome
from autonumad.observe.inputs import HotnessSource, PassInputs, read_pass_inputs
from autonumad.observe.snapshot import HostSnapshot, SnapshotCache
from autonumad.plan.assist import KernelAssist
from autonumad.plan.history import History
from autonumad.plan.planner import Plan, plan
from autonumad.plan.policy import SETTLED_RULES, owned_from_action
from autonumad.plan.refine import explain_failures
from autonumad.plan.tiering import RULE_DEMOTE, RULE_PROMOTE, TieringDecision
from autonumad.readers.proc_status import read_status
from autonumad.service.safety import Safety

log = logging.getLogger("autonumad")

# Verdicts that need no per-process line: nothing is wrong, or the reason was
# already logged once for the whole host.
_QUIET_RULES = frozenset({"already-local", "single-node", "disabled"})
# Longest sleep between watchdog pings when fast re-checks are off (the
# unit's WatchdogSec is far longer).
WATCHDOG_STEP_S = 5.0


@dataclass(frozen=True, slots=True)
class TieringReport:
    """One pass of tiering, for PassReport, metrics and views: the decision and the totals so far."""

    decision: TieringDecision
    tracker: str  # "damon", "softdirty (DAMON unavailable: ...)", "none (...)"
    tracker_cost_s: float  # cumulative wall time in track() and sample()
    moved_pages: Mapping[tuple[str, int, int], int]  # (rule, from node, to node) -> base pages, cumulative
    moved_bytes: Mapping[tuple[str, int, int], int]
    blocked_promotions: int  # promotion moves that met ENOMEM, cumulative
    pingpongs: int
    # Seconds until a tiering pass could do more than this one did (the
    # tracker's first sample, idle memory maturing for an exchange); the
    # daemon wakes for it instead of waiting a whole interval. None: nothing.
    recheck_in_s: float | None = None
    # Pages a promotion or demotion could not move, (rule, errno name) -> base pages, cumulative.
    failed_pages: Mapping[tuple[str, str], int] = field(default_factory=dict)

    @property
    def headroom(self):
        return self.decision.headroom

    @property
    def note(self) -> str:
        return self.decision.note


@dataclass
class PassReport:
    """What one pass saw and did; metrics, state.json and the demo read it."""

    number: int
    started_s: float
    duration_s: float
    snapshot: HostSnapshot
    decision: Decision  # balancing's verdicts and actions
    outcomes: list[Outcome]  # balancing's
    drifts: list[Any] = field(default_factory=list)
    tiering: TieringReport | None = None
    tiering_outcomes: list[Outcome] = field(default_factory=list)
    plan: Plan | None = None


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
        # stop_event ends the mover (SIGTERM); wake only ends a sleep (any signal).
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = threading.Event()
        self.history = History()
        self.generation = 0
        self.last_reload: dict[str, Any] = {"ok": True, "error": None}
        self.snapshot_cache = SnapshotCache()
        self.knobs = None
        self._single_node_logged = False
        self._last_rules: dict[tuple[int, int], str] = {}
        self.hotness = HotnessSource(host, clock)
        self.once = False  # run(once=True): a single pass
        self.safety = Safety(host, config)  # issue 10: pins on disk, skip warnings, state.json
        self.assist = KernelAssist()  # plan/assist.py; its knobs come from the config below
        self._knob_baseline: int | None = None
        self._build_from_config()

    # -- configuration ---------------------------------------------------------
    @property
    def interval_s(self) -> float:
        return self.interval_override or self.config.daemon.interval_s

    @property
    def dry_run(self) -> bool:
        return self.config.daemon.dry_run if self.dry_run_override is None else self.dry_run_override

    def _build_from_config(self) -> None:
        rate = self.config.balance.migrate_rate_mib_s * 2**20
        self.executor = Executor(self.host, TokenBucket(rate, clock=self.clock), self.stop_event,
                                 self.dry_run, self.clock)

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()
        self.wake.set()

    def request_reload(self, *_: Any) -> None:
        # Only the sleep wakes: the mover finishes its pass, the reload comes after it.
        self.reload_requested.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def reload(self) -> bool:
        from autonumad.service.config import load_config
        from autonumad.service.metrics import reload_metrics
        from autonumad.service.runtime import keep_runtime_dir

        self._notify("reloading")
        try:
            new = load_config(self.config_path) if self.config_path else self.config
            new = keep_runtime_dir(new, self.config)
        except AutonumadError as e:
            log.error("reload rejected, keeping the running config: %s", e)
            self.last_reload = {"ok": False, "error": str(e), "at": time.time()}
            if self.metrics:
                self.metrics.config_reload(False)
            self._notify("ready")
            return False
        reload_metrics(self.metrics, self.config.metrics, new.metrics)  # applies it or says: restart
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
    def _desired_knobs(self) -> dict:
        """The config's knobs, with kernel assist's numa_balancing (plan/assist.py)."""
        return self.assist.adjust(self.config.kernel.desired(), self._knob_baseline or 0)

    def _step_assist(self, snap: HostSnapshot, decision: Decision, now: float) -> None:
        """Kernel assist: the kernel's hint-fault sampling on while a spread-by-capacity process is
        misplaced, off at plateau or over budget (plan/assist.py); a knob write, so only when managing."""
        self.assist.allowed = self.config.balance.kernel_assist
        self.assist.hint_faults_per_s_budget = self.config.balance.kernel_assist_hint_faults_per_s
        if self._knob_baseline is None:
            self._knob_baseline = int(snap.knobs.as_json().get("numa_balancing") or 0)
        spread = [(p.pid, p.start_ticks) for p in snap.processes
                  if (v := decision.verdicts.get(p.pid)) is not None and v.rule == "spread-by-capacity"]
        if self.assist.step(now, spread, [(p.pid, p.start_ticks) for p in snap.processes], snap.vmstat):
            log.info("kernel assist %s", self.assist.reason)
            if self.manage_knobs and self.knobs is not None and not self.dry_run:
                self._apply_knobs()

    def _apply_knobs(self) -> None:
        desired = self._desired_knobs()
        for c in self.knobs.apply(desired):
            if c.outcome in ("written", "restored"):
                log.info("kernel knob %s: %s -> %s (%s)", c.name, c.old, c.new, c.outcome)
            elif c.outcome in ("absent", "refused"):
                log.warning("kernel knob %s not set: %s %s", c.name, c.outcome, c.error or "")

    def _check_drift(self) -> list[Any]:
        if self.knobs is None:
            return []
        drifts = self.knobs.verify(self._desired_knobs())
        for d in drifts:
            log.warning("kernel knob %s changed behind autonumad's back: want %s, found %s%s", d.name, d.expected,
                        d.actual, "; re-applying (kernel.enforce)" if self.config.kernel.enforce else "")
        if drifts and self.config.kernel.enforce and self.manage_knobs:
            self._apply_knobs()
        return drifts

    # -- the loop --------------------------------------------------------------
    def run(self, once: bool = False) -> int:
        from autonumad.act.sysctl import KnobManager

        self.once = once
        runtime_dir = self.safety.dir
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
            if self.stop_event.is_set():
                # SIGTERM during start-up (systemctl stop right after start; cli._EarlySignals
                # hands it over): applying the knobs only to restore them a moment later would
                # flip the kernel's behaviour for nothing.
                log.info("stop requested during start-up: kernel knobs left as they are")
            else:
                self._apply_knobs()
        self.safety.start(dry_run=self.dry_run)
        log.info("autonumad %s started on %s: interval %.1f s, migrate rate %.0f MiB/s%s", __version__,
                 self.host, self.interval_s,
                 self.config.balance.migrate_rate_mib_s, ", DRY RUN" if self.dry_run else "")
        ready = failed = False
        try:
            while True:
                if self.stop_event.is_set():
                    break
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                try:
                    report = self.run_pass()
                except HostError:
                    # Logged by run_pass; a host file may come back (a node
                    # onlined again). Try again after one interval; a reload
                    # wakes the wait and is applied at the top of the loop.
                    if once:
                        # `run --once` is a script's single pass: one that
                        # could not read the host is not a success.
                        failed = not self.stop_event.is_set()
                        break
                    self._wait(self.interval_s)
                    continue
                if not ready:
                    self._notify("ready")
                    ready = True
                self._notify("watchdog")
                if once:
                    break
                self._sleep_until_next_pass(report)
                # The last report's snapshot holds every numa_maps text of its pass: let it go before the
                # next pass reads the new ones (metrics keep their own reference for scrapes).
                report = None
        finally:
            self._shutdown()
        return 1 if failed else 0

    def run_pass(self) -> PassReport:
        """One pass: read -> plan -> execute -> record."""
        t0 = self.clock()
        number = self.history.passes + 1
        inputs = self._read(number, t0)
        self.history.observe(inputs.snapshot, t0)
        the_plan = plan(inputs, self.history, self.config)
        self._log_plan(inputs.snapshot, the_plan)
        self._step_assist(inputs.snapshot, the_plan.balancing, t0)
        self.history.tiering.record_decision(the_plan.tiering, t0)
        self.executor.dry_run = self.dry_run
        # The window starts when moving does: a slow read (a TCG guest's soft-dirty scan) must not
        # leave the mover no time at all, pass after pass.
        # Spare demotions run, in the same run, when the planned ones moved less than planned (Plan.top_up).
        outcomes = self.executor.run(the_plan.actions, self.clock() + inputs.window_s, the_plan.budget_bytes,
                                     then=the_plan.top_up)
        return self._record(number, t0, inputs, the_plan, outcomes)

    def pass_window_s(self) -> float:
        """How long a pass may move pages: 80 % of the interval, and never more than half the
        watchdog's ping interval, so that reading, planning and moving end well inside WatchdogSec.

        A single pass (`run --once`) has no next pass to continue in: it may take as long as moving
        the whole pass budget at the configured rate.
        """
        window = max(0.5, self.interval_s * 0.8)
        if self.once:
            b = self.config.balance
            window = max(window, b.pass_budget_mib / b.migrate_rate_mib_s)
        watchdog_s = self.notifier.watchdog_interval_s() if self.notifier is not None and hasattr(
            self.notifier, "watchdog_interval_s") else None
        if watchdog_s:
            window = min(window, max(0.1, watchdog_s / 2))
        return window

    def _read(self, number: int, t0: float) -> PassInputs:
        try:
            inputs = read_pass_inputs(self.host, self.config, self.hotness, self.snapshot_cache, t0,
                                      self.pass_window_s())
        except HostError as e:
            # A host-level file went bad mid-run (a node offlined?): skip this pass, keep serving.
            log.error("pass %d skipped: %s", number, e)
            if self.metrics:
                self.metrics.pass_error("snapshot")
            raise
        self.safety.pass_seen(inputs.snapshot)
        if len(inputs.snapshot.topology.nodes) < 2 and not self._single_node_logged:
            log.info("this host has a single NUMA node: nothing to balance; serving views and metrics only")
            self._single_node_logged = True
        return inputs

    def _log_plan(self, snap: HostSnapshot, the_plan: Plan) -> None:
        for a in the_plan.balancing.actions:
            log.info("%s pid %d (%s): %s%s", a.kind.replace("_", " "), a.pid, a.comm, a.reason,
                     " [dry run]" if self.dry_run else "")
        self._log_verdict_changes(snap, the_plan.balancing)

    def _record(self, number: int, t0: float, inputs: PassInputs, the_plan: Plan,
                outcomes: list[Outcome]) -> PassReport:
        """After the executor: history, log lines, metrics, state.json."""
        now = self.clock()
        self._settle(inputs.snapshot, the_plan.balancing, outcomes)
        balancing, tiering = [], []
        for o in outcomes:
            if o.action.rule in (RULE_PROMOTE, RULE_DEMOTE):
                tiering.append(o)
                self.history.tiering.record_outcome(o, now, self.config.tiering.promote_cooldown_s)
                a = o.action
                log.info("%s pid %d (%s): %s: %s%s", a.rule, a.pid, a.comm, a.reason, o.status,
                         f" ({outcome_text(o)})" if o.detail else "")
            else:
                balancing.append(o)
                self._record_outcome(o, now)
        self.history.end_continuations({o.action.key for o in outcomes if o.action.kind == MIGRATE})
        drifts = self._check_drift()
        report = PassReport(number, t0, self.clock() - t0, inputs.snapshot, the_plan.balancing, balancing, drifts,
                            self._tiering_report(inputs, the_plan), tiering, the_plan)
        if self.metrics:
            self.metrics.observe_pass(report)
        self._write_state(report)
        return report

    def _settle(self, snap: HostSnapshot, decision: Decision, outcomes: list[Outcome]) -> None:
        """Tell the snapshot cache which processes it may leave unread next pass (SnapshotCache).

        Settled: left alone by balancing for a lasting reason (SETTLED_RULES)
        with no action of either planner on it. Any outcome of an action on a
        process, whatever its status (a failed or partial move may still have
        moved pages), makes its next pass read numa_maps afresh.
        """
        settled = {(p.pid, p.start_ticks) for p in snap.processes
                   if (v := decision.verdicts.get(p.pid)) is not None and not v.actions and v.rule in SETTLED_RULES}
        self.snapshot_cache.settle(settled)
        for o in outcomes:
            self.snapshot_cache.invalidate(o.action.key)

    def _tiering_report(self, inputs: PassInputs, the_plan: Plan) -> TieringReport:
        h = self.history.tiering
        d = the_plan.tiering
        waits = [w for w in (d.recheck_in_s, inputs.tracker_ready_in_s) if w is not None and w > 0]
        return TieringReport(d, self.hotness.tracker_name, self.hotness.tracker_cost_s, dict(h.moved_pages),
                             dict(h.moved_bytes), h.blocked_promotions, h.pingpongs_total,
                             min(waits) if waits else None, dict(h.failed_pages))

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

    def _record_outcome(self, o: Outcome, now: float) -> None:
        self.safety.outcome(o)
        a = o.action
        if o.status in ("done", "partial") and a.kind == MIGRATE:
            self.history.record_migration(a.key, now, a.target_node, complete=o.status == "done")
            log.info("pid %d (%s): %s", a.pid, a.comm, outcome_text(o))
        elif o.status == "done" and a.kind == SET_AFFINITY:
            self.history.record_affinity(a.key, now, owned_from_action(a))
            log.info("pid %d (%s): affinity set to node %s, %s", a.pid, a.comm, a.target_node, o.detail)
        elif o.status == "done" and a.kind == RESTORE_AFFINITY:
            self.history.record_affinity(a.key, now, None)
        elif o.status not in ("dry-run", "done"):
            log.info("pid %d (%s): %s %s: %s", a.pid, a.comm, a.kind, o.status, outcome_text(o))

    def next_pass_at(self, report: PassReport) -> float:
        """When the pass after `report` starts, on self.clock, unless a signal or a re-pin comes first.

        One interval after the last start; sooner when a move stopped short:
        at once when the pass's moving window ended it (a mover slower than
        its rate: the token bucket still bounds the next pass, and waiting
        would only leave the workload's memory remote for longer), and
        fast_recheck_s from now when the byte budget or the rate limit did
        (both are limits the wait itself serves); also sooner when tiering
        can do more then than now (its tracker's first sample, idle memory
        old enough to exchange for waiting hot memory).
        """
        now = self.clock()
        at = report.started_s + self.interval_s
        cuts = {o.cut for o in (*report.outcomes, *report.tiering_outcomes) if o.status in ("partial", "budget")}
        if CUT_DEADLINE in cuts:
            at = now
        elif cuts:
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
            if self._wait(min(step or WATCHDOG_STEP_S, left)):
                return
            # The loop is alive between passes: keep systemd's watchdog fed when
            # the interval is longer than half of WatchdogSec. A wedged *pass*
            # still trips it, since nothing pings during one.
            self._notify("watchdog")
            if step and self._affinity_changed(watched):
                return

    def _wait(self, seconds: float) -> bool:
        """Sleep until a signal (True) or `seconds` pass (False)."""
        woke = self.wake.wait(seconds)
        if woke:
            self.wake.clear()
        return woke or self.stop_event.is_set()

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
        self.hotness.close()
        if self.config.daemon.restore_affinity_on_exit:
            self.restore_owned_affinities()
        if self.manage_knobs and self.knobs is not None and self.config.kernel.restore_on_exit:
            for c in self.knobs.restore():
                log.info("kernel knob %s restored to %s", c.name, c.new)
        self.safety.stop()
        log.info("autonumad stopped")

    def restore_owned_affinities(self) -> int:
        from autonumad.act import identity
        from autonumad.act.affinity import set_process_affinity

        n = 0
        for (pid, _start), h in list(self.history.processes.items()):
            if h.owned_affinity is None:
                continue
            try:
                identity.hold(self.host, pid, _start)  # never restore onto a process that reused the pid
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
        start_ticks = {p.pid: p.start_ticks for p in report.snapshot.processes}
        doc = {
            "schema_version": 1,
            "pid": os.getpid(),
            # Read by `explain`, which plans with the daemon's configuration.
            "config_path": os.path.abspath(self.config_path) if self.config_path else None,
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
                             "detail": outcome_text(o)} for o in report.outcomes],
            },
            # Every detailed process's rule this pass: what `explain PID` must agree with
            # (tests/hardware/test_hw_daemon.py checks it on a real kernel).
            # start_ticks: with the pid, the process's identity (explain must not show a reused
            # pid's predecessor's verdict).
            "verdicts": {str(v.pid): {"comm": v.comm, "start_ticks": start_ticks.get(v.pid), "rule": v.rule,
                                      "reason": v.reason}
                         for v in list(report.decision.verdicts.values())[:MAX_STATE_VERDICTS]},
            "dry_run": self.dry_run,
            "tiering": tiering_doc(report.tiering),
            "updated_at": time.time(),
        }
        self.safety.write_state(doc)


# state.json stays small on a host with thousands of processes: a pass details at most
# balance.scan_max_processes of them anyway.
MAX_STATE_VERDICTS = 1000


def outcome_text(o: Outcome) -> str:
    """An outcome's detail for its log line, the pages it could not move explained per errno
    (refine.explain_failures, after move_pages(2))."""
    if not o.failures:
        return o.detail
    return f"{o.detail}; not moved: {explain_failures(o.failures, o.page_size_bytes)}"


def tiering_doc(report: TieringReport | None, max_verdicts: int = 200) -> dict | None:
    """The JSON form of a tiering pass, for state.json (read back by `status` and `explain`)."""
    if report is None:
        return None
    d = report.decision
    plan = d.plan
    interesting = [v for v in d.verdicts.values() if v.actions or v.rule not in ("in-place", "not-tracked")]
    return {
        "note": d.note,
        "tracker": report.tracker,
        "tracker_seconds": round(report.tracker_cost_s, 3),
        "fast_nodes": list(plan.fast_nodes) if plan else [],
        "slow_nodes": list(plan.slow_nodes) if plan else [],
        "demotion_targets": {str(k): v for k, v in plan.demotion_targets.items()} if plan else {},
        "headroom": [{"node": h.node, "target_bytes": h.target_bytes, "free_bytes": h.free_bytes,
                      "floor_bytes": h.floor_bytes, "headroom_bytes": h.headroom_bytes,
                      "hot_bytes": h.hot_bytes, "cold_bytes": h.cold_bytes,
                      "candidate_bytes": h.candidate_bytes, "change": h.change}
                     for h in sorted(d.headroom.values(), key=lambda h: h.node)],
        "hot_bytes_by_node": {str(n): b for n, b in sorted(d.hot_bytes_by_node.items())},
        "cold_bytes_by_node": {str(n): b for n, b in sorted(d.cold_bytes_by_node.items())},
        "moved_bytes": [{"rule": r, "from_node": s, "to_node": t, "bytes": b}
                        for (r, s, t), b in sorted(report.moved_bytes.items())],
        "blocked_promotions": report.blocked_promotions,
        "pingpongs": report.pingpongs,
        "verdicts": {str(v.pid): {"rule": v.rule, "reason": v.reason} for v in interesting[:max_verdicts]},
    }
