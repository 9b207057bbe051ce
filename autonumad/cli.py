"""The `autonumad` command line.

Subcommand names, flags and JSON keys are contracts: scripts and checks
outside the project call them. Exit statuses: 0 ok, 1 runtime error,
2 usage, 78 configuration error (EX_CONFIG, sysexits.h).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Sequence

from autonumad import __version__
from autonumad.errors import AutonumadError

EX_CONFIG = 78
log = logging.getLogger("autonumad")

DESCRIPTION = """\
autonumad balances memory and tasks across NUMA nodes from userspace:
memory follows tasks, tasks follow memory, hot pages are promoted to fast
tiers and cold ones demoted, within a rate limit, with a reason for every
action and Prometheus metrics.

Every view takes --root DIR to read a fake host tree (a directory laid out
like / with proc/ and sys/) instead of this machine, and --json for one
machine-readable document.
"""

EPILOG = """\
examples:
  autonumad topology                       nodes, CPUs, memory, tiers, kernel knobs
  autonumad status --json                  per-node use and the most misplaced processes
  autonumad topology --root tests/data/hosts/vm-tiered
"""


def _add_host_args(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--root", metavar="DIR", default=None,
                   help="read a fake host tree under DIR instead of this machine (default: /)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")


def _sample_arg(text: str) -> float:
    """explain --sample-s: 0 (one read) to 60 seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= 60:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected 0 to 60 seconds, got {text}")
    return value


def _interval_arg(text: str) -> float:
    """--interval, validated exactly as the config's daemon.interval_s (issue 10: -1, 0, nan, inf, 0.0001)."""
    from autonumad.service.config import check_key

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    try:
        return check_key("daemon", "interval_s", value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"as daemon.interval_s: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autonumad", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"autonumad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("topology", help="show NUMA nodes, CPUs, memory, distances, tiers and kernel knobs",
                       description="Show the NUMA topology as the daemon sees it: nodes with their CPUs, "
                                   "total and free memory, SLIT distances, memory tiers (fastest first) "
                                   "and the kernel's NUMA balancing knobs.")
    _add_host_args(p)
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("status", help="show per-node use and the processes with the most remote memory",
                       description="Show memory and CPU use per node, and the processes with the most memory "
                                   "away from the node(s) their threads run on. pages_by_node counts base "
                                   "pages (a 2 MiB huge page counts as 512).")
    _add_host_args(p)
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="show at most N processes (default 20; 0 = all)")
    p.add_argument("--min-rss", default="0", metavar="SIZE",
                   help="only look at processes with at least this resident memory (e.g. 64MiB)")
    p.add_argument("--sample-s", type=float, default=0.2, metavar="SECONDS",
                   help="CPU use is measured over this long (default 0.2)")
    p.add_argument("--config", metavar="PATH", default=None,
                   help="config whose [tiering] and daemon.runtime_dir to show (default: the installed one)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("run", help="run the balancing daemon",
                       description="Run the balancing loop: each pass reads one snapshot of the host, decides "
                                   "actions with reasons (memory follows task, task follows memory) and applies "
                                   "them through a rate-limited mover. SIGTERM/SIGINT stop it after the current "
                                   "batch; SIGHUP reloads the config (an invalid file is rejected and the running "
                                   "config stays).")
    p.add_argument("--config", metavar="PATH", default=None,
                   help="config file (default /etc/autonumad/autonumad.toml; missing = built-in defaults)")
    _add_host_args(p, json_flag=False)
    p.add_argument("--interval", type=_interval_arg, metavar="SECONDS", default=None,
                   help="seconds between passes (overrides daemon.interval_s; 0.5 to 3600)")
    p.add_argument("--once", action="store_true", help="run one pass and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="decide and log every action with its reason, change nothing")
    p.add_argument("--kernel-knobs", choices=("manage", "external"), default="manage",
                   help="manage: apply [kernel] knobs at start and restore them at exit (default); "
                        "external: the systemd unit's privileged ExecStartPre/ExecStopPost do it, the daemon "
                        "only watches for drift")
    p.add_argument("--allow-pid-namespace", action="store_true",
                   help="run even when /proc is not the host's PID namespace (a container without host PID); "
                        "see autonumad/service/hostview.py")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("explain", help="say what the daemon would do for a process now, and why",
                       description="Run the daemon's planner on a fresh pass and print the rule that applies to one "
                                   "process: the action it would take with its reason, or the rule that leaves "
                                   "it alone (excluded, explicit memory policy, already local, ...). Uses the "
                                   "running daemon's configuration (found through its state file) unless "
                                   "--config names one, and says which it used.")
    p.add_argument("pid", type=int)
    p.add_argument("--sample-s", type=_sample_arg, default=None, metavar="SECONDS",
                   help="read the host twice this far apart, as two daemon passes do, so the rules that "
                        "need CPU use between passes (idle, measuring) are decided as the running daemon "
                        "decides them (default 1 on this machine; 0 = one read, as the daemon's first pass, "
                        "the default for a tree given with --root, whose CPU counters do not move)")
    p.add_argument("--config", metavar="PATH", default=None, help="config file to explain with (default: the running daemon's)")
    p.add_argument("--runtime-dir", metavar="DIR", default=None,
                   help="the running daemon's runtime directory, where its state file names its config "
                        "(default: the config's daemon.runtime_dir)")
    _add_host_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("advise", help="which nodes a new workload of a given size should use (like numad -w)",
                       description="Print the node set a new workload with this many CPUs and this much memory "
                                   "should be placed on: the smallest set of nodes with enough idle CPU and free "
                                   "memory, closest together. For libvirt/KubeVirt/OpenNebula-style placement.")
    p.add_argument("--cpus", type=float, required=True, metavar="N", help="CPUs the workload needs")
    p.add_argument("--memory", required=True, metavar="SIZE", help="memory it needs, e.g. 4GiB, 512MiB")
    _add_host_args(p)
    p.add_argument("--sample-s", type=float, default=0.2, metavar="SECONDS", help="CPU use is measured over this long")
    p.set_defaults(func=cmd_advise)

    p = sub.add_parser("demo", help="run the daemon on a simulated two-socket + CXL host, with a live view",
                       description="Build a simulated host (two sockets and a CXL memory expander) whose "
                                   "workloads drift, run the real daemon on it and show locality per process "
                                   "converging pass by pass.")
    p.add_argument("--passes", type=int, default=12, metavar="N", help="passes to run (default 12)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between passes")
    p.add_argument("--keep", metavar="DIR", default=None, help="build the host tree in DIR and keep it")
    p.add_argument("--json", action="store_true", help="print one JSON status document per pass")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate a config file (exit 78 if invalid)",
                       description="Validate the config file strictly (unknown keys, types, ranges, file owner "
                                   "and mode) and print every problem with its dotted key path. Exit 0 when "
                                   "valid, 78 (EX_CONFIG) otherwise.")
    p.add_argument("path", nargs="?", default=None, help="config file (default /etc/autonumad/autonumad.toml)")
    p.add_argument("--json", action="store_true", help="print the compiled config as JSON")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("sysctl", help="show, apply, restore or verify the kernel knobs in [kernel]",
                       description="Manage the kernel knobs named in the config's [kernel] section. apply saves "
                                   "the original values under the runtime directory before the first write; "
                                   "restore writes them back (idempotent; used by the unit's ExecStopPost); "
                                   "verify exits 1 if a knob differs from the config; show lists every knob.")
    p.add_argument("action", choices=("show", "apply", "restore", "verify"))
    p.add_argument("--config", metavar="PATH", default=None)
    _add_host_args(p)
    p.set_defaults(func=cmd_sysctl)

    p = sub.add_parser("reload", help="make the running daemon re-read its config (SIGHUP)",
                       description="Send SIGHUP to the running daemon (its pid from state.json in the runtime "
                                   "directory). With --wait, wait until it has re-read the config and exit 1 if "
                                   "it rejected the file (it then keeps the config it was running).")
    p.add_argument("--config", metavar="PATH", default=None,
                   help="config whose daemon.runtime_dir to use (an invalid file falls back to /run/autonumad: "
                        "reloading is how the daemon gets to reject it)")
    p.add_argument("--runtime-dir", metavar="DIR", default=None, help="the daemon's runtime directory")
    p.add_argument("--wait", action="store_true", help="wait for the outcome")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.set_defaults(func=cmd_reload)
    return parser


def open_host(root: str | None = None):
    """The host for a --root argument: the real machine for "/" or None, else a fake tree.

    The one place that chooses between the machine and a simulated host. A
    fake root must look like a host: it needs proc/ and sys/devices/system/node/.
    """
    import os
    from pathlib import Path

    from autonumad.errors import HostError
    from autonumad.host import LinuxHost

    if root is None or os.path.realpath(root) == "/":
        return LinuxHost("/")
    from autonumad.sim.fakehost import FakeHost

    r = Path(root)
    if not r.is_dir():
        raise HostError(str(root), "--root is not a directory")
    if not (r / "sys/devices/system/node").is_dir() or not (r / "proc").is_dir():
        raise HostError(str(root), "--root is not a host tree (needs proc/ and sys/devices/system/node/)")
    return FakeHost(r)


def _live(host) -> bool:
    """A real machine: time passes between two reads of it (a fake tree only changes when acted on)."""
    from autonumad.host import LinuxHost

    return isinstance(host, LinuxHost)


def _host(args: argparse.Namespace):
    return open_host(args.root)


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _console():
    from rich.console import Console

    return Console()


def cmd_topology(args: argparse.Namespace) -> int:
    from autonumad.readers.knobs import read_knobs
    from autonumad.readers.nodes import read_topology
    from autonumad.views import render_topology, topology_doc

    host = _host(args)
    doc = topology_doc(read_topology(host), read_knobs(host).as_json())
    if args.json:
        _print_json(doc)
    else:
        render_topology(doc, _console())
    return 0


def parse_size_arg(text: str) -> int:
    from autonumad.service.config import parse_size

    return parse_size(text)


def cmd_status(args: argparse.Namespace) -> int:
    from autonumad.readers.proc_stat import read_proc_stat
    from autonumad.observe.snapshot import ScanLimits, take_snapshot
    from autonumad.views import render_status, status_doc

    host = _host(args)
    prev = read_proc_stat(host)
    if _live(host) and args.sample_s > 0:
        time.sleep(args.sample_s)
    snap = take_snapshot(host, ScanLimits(min_rss_bytes=parse_size_arg(args.min_rss)))
    doc = status_doc(snap, prev, limit=args.limit or None)
    doc["skipped"] = _skipped_status(args, host, snap)
    doc["tiering"] = _tiering_status(args, host, snap)
    if args.json:
        _print_json(doc)
    else:
        render_status(doc, _console())
        from autonumad.views import render_tiering

        render_tiering(doc["tiering"], _console())
    return 0


def _skipped_status(args: argparse.Namespace, host, snap) -> dict:
    """Processes left out, by reason, of this read and of the daemon's last pass (issue 10).

    When every candidate was left out for one reason, one warning says so
    instead of a line per process: the cause is the host, not the processes.
    """
    from autonumad.observe.skips import summarize_skips

    summary = summarize_skips(snap)
    if summary.headline() is not None:
        log.warning("%s", summary.headline())
    else:
        for s in snap.skipped:
            log.warning("left out %s", s.message)
    try:
        config, _ = _load_config(getattr(args, "config", None))
    except AutonumadError:
        config = None
    state = _daemon_state(config) if config is not None and (_live(host) or args.config) else None
    daemon = (state or {}).get("skipped")
    if daemon and daemon.get("all_skipped_reason"):
        log.warning("the running daemon's last pass balanced nothing: every one of its %d candidates was "
                    "left out (%s)", daemon.get("candidates", 0), daemon["all_skipped_reason"])
    return {**summary.as_json(), "daemon_last_pass": daemon}


def _daemon_state(config) -> dict | None:
    """The running daemon's state.json, if there is one."""
    from pathlib import Path

    return _read_state(Path(config.daemon.runtime_dir))


def _tiering_status(args: argparse.Namespace, host, snap):
    """Tiers, tracker and headroom for `status` (issue 6)."""
    from autonumad.observe.damon import damon_available
    from autonumad.views import tiering_status_doc

    config, _ = _load_config(getattr(args, "config", None))
    t = config.tiering
    expected = t.tracker if t.tracker != "auto" else ("damon" if damon_available(host) else "softdirty")
    # A fake host's daemon is found only through an explicit --config.
    state = _daemon_state(config) if _live(host) or getattr(args, "config", None) else None
    return tiering_status_doc(snap, t, (state or {}).get("tiering"), expected)


def _load_config(path: str | None, *, fake_root: bool = False):
    from autonumad.service.config import DEFAULT_CONFIG_PATH, load_config

    if path is None:
        import os

        if not os.path.exists(DEFAULT_CONFIG_PATH):
            from autonumad.service.config import Config

            return Config(), None
        path = DEFAULT_CONFIG_PATH
    return load_config(path), path


def cmd_run(args: argparse.Namespace) -> int:
    from autonumad.service.daemon import Daemon
    from autonumad.service.runtime import InstanceLock, with_host_runtime_dir
    from autonumad.service.logsetup import setup_logging
    from autonumad.service.sdnotify import Notifier

    config, path = _load_config(args.config)
    setup_logging(config.daemon.log_level)
    for w in _all_warnings(config):
        log.warning("%s", w)
    host = _host(args)
    if args.root is None and not args.allow_pid_namespace:
        from autonumad.service.hostview import check_host_pid_namespace
        check_host_pid_namespace()  # a container without the host PID namespace sees nothing to balance
    # Runtime state belongs to one host: under --root it lives inside that root (issue 10).
    config = with_host_runtime_dir(config, host)
    dry_run = bool(args.dry_run or config.daemon.dry_run)
    # One daemon per runtime directory: a second one must not "recover" the
    # first one's saved knobs and pins. Held until this process exits.
    lock = InstanceLock(config.daemon.runtime_dir).acquire()
    try:
        # A dry run changes nothing, kernel knobs included: it neither applies
        # nor restores them (it still reports drift from the config).
        daemon = Daemon(host, config, config_path=path, dry_run=True if args.dry_run else None,
                        interval_s=args.interval, manage_knobs=args.kernel_knobs == "manage" and not dry_run,
                        notifier=Notifier(), metrics=_start_metrics(config, host))
        daemon.install_signal_handlers()
        if getattr(args, "early_signals", None) is not None:
            args.early_signals.hand_over(daemon)
        # 1 when `--once` could not read the host (logged by the daemon).
        return daemon.run(once=args.once)
    finally:
        lock.release()


def _start_metrics(config, host):
    try:
        from autonumad.service.metrics import start_metrics
    except ImportError:
        return None
    return start_metrics(config, host)


def cmd_explain(args: argparse.Namespace) -> int:
    from autonumad.views import process_doc

    host = _host(args)
    config, used, state = _explain_config(args, host)
    sample_s = args.sample_s if args.sample_s is not None else (1.0 if _live(host) else 0.0)
    verdict, p, snap, ledger = _explain_verdict(host, config, args.pid, sample_s)
    rule, reason, actions = verdict.rule, verdict.reason, verdict.actions
    page = snap.page_size_bytes
    doc = {"schema_version": 1, "process": process_doc(p, page), "rule": rule, "reason": reason,
           "actions": [{"kind": a.kind, "rule": a.rule, "reason": a.reason, "target_node": a.target_node,
                        "cpus": list(a.cpus), "bytes": a.bytes} for a in actions],
           "config": used,
           "kernel_numa_balancing": snap.knobs.as_json().get("numa_balancing"),
           "cpu_ledger": {**ledger.as_json(), "summary": ledger.describe()} if ledger is not None else None,
           "tiering": _tiering_explain(args, config, host, snap, p.pid, state),
           "daemon_last_pass": _daemon_last_pass(state, p.pid, p.start_ticks)}
    if args.json:
        _print_json(doc)
    else:
        _render_explain(doc, p)
    return 0


def _explain_verdict(host, config, pid: int, sample_s: float = 0.0):
    """The daemon's planner on a pass read as the daemon reads it: (verdict, process, snapshot, CPU ledger).

    With `sample_s` > 0, two reads that far apart, as a running daemon's
    last two passes: whether a process is idle, and which of its threads are
    busy, is CPU time between two reads (plan/history.py), and a single read
    would plan as the daemon's first pass does. The history is otherwise
    fresh: the running daemon's cool-downs and back-offs live in its memory
    only (its own last verdict is shown beside, from state.json).
    """
    from autonumad.model import Verdict
    from autonumad.observe.inputs import read_pass_inputs
    from autonumad.observe.snapshot import ScanLimits, take_snapshot
    from autonumad.plan.history import History
    from autonumad.plan.planner import plan

    window_s = config.daemon.interval_s * 0.8
    history = History()
    now_s = 0.0
    if sample_s > 0:
        history.observe(read_pass_inputs(host, config, None, None, now_s, window_s).snapshot, now_s)
        t0 = time.monotonic()
        time.sleep(sample_s)
        now_s = time.monotonic() - t0
    inputs = read_pass_inputs(host, config, None, None, now_s, window_s)
    p = inputs.snapshot.process(pid)
    if p is not None:
        history.observe(inputs.snapshot, now_s)
        the_plan = plan(inputs, history, config)
        return the_plan.verdict(pid), p, inputs.snapshot, the_plan.balancing.ledger
    # Not among what a pass reads in detail: say why.
    snap = take_snapshot(host, ScanLimits(only_pids=frozenset({pid})))
    for s in snap.skipped:
        raise AutonumadError(s.message)
    p = snap.process(pid)
    if p is None:
        raise AutonumadError(f"pid {pid}: not a process with memory (kernel thread?)")
    b = config.balance
    if p.rss_bytes < b.min_rss_bytes:
        v = Verdict(pid, p.comm, "below-min-rss", f"resident {p.rss_bytes / 2**20:.0f} MiB is below "
                    f"balance.min_rss_bytes ({b.min_rss_bytes / 2**20:.0f} MiB): not scanned by the daemon")
    else:
        v = Verdict(pid, p.comm, "not-scanned", f"not among the {b.scan_max_processes} largest processes a pass "
                    "reads in detail (balance.scan_max_processes)")
    return v, p, snap, None


def _explain_config(args: argparse.Namespace, host):
    """The configuration explain uses, where it came from, and the running daemon's state.

    --config names it; else the running daemon's, named in its state file
    (in --runtime-dir, or the default config's daemon.runtime_dir); else
    the default file or the built-in defaults. On a fake host the daemon is
    found only through --config or --runtime-dir.
    """
    from pathlib import Path

    config, path = _load_config(args.config)
    state = None
    if args.runtime_dir:
        state = _read_state(Path(args.runtime_dir))
    elif _live(host) or args.config:
        state = _daemon_state(config)
    if args.config:
        return config, {"path": path, "source": "--config"}, state
    daemon_path = (state or {}).get("config_path")
    if daemon_path and _daemon_alive(state):
        try:
            return (_load_config(daemon_path)[0],
                    {"path": daemon_path, "source": f"the running daemon (pid {state['pid']})"}, state)
        except AutonumadError as e:
            log.warning("the running daemon's config %s: %s; using %s", daemon_path, e, path or "the defaults")
    return config, {"path": path, "source": "the default file" if path else "built-in defaults"}, state


def _read_state(runtime_dir) -> dict | None:
    try:
        return json.loads((runtime_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _daemon_alive(state: dict) -> bool:
    """The state file's daemon still runs (on this machine, whichever host tree it serves)."""
    import os

    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _render_explain(doc: dict, p) -> None:
    c = _console()
    pd = doc["process"]
    c.print(f"[bold]pid {p.pid}[/bold] ({p.comm}): {pd['rss_bytes'] / 2**20:,.0f} MiB resident, "
            f"runs on node(s) {','.join(map(str, pd['running_nodes'])) or '-'}, "
            f"{pd['local_fraction']:.0%} local, policy {pd['policy']}")
    age_s = pd.get("numa_maps_age_s") or 0
    c.print("pages by node: " + ", ".join(f"N{n}={v}" for n, v in pd["pages_by_node"].items())
            + (f" (numa_maps read {age_s:.0f} s ago)" if age_s else " (numa_maps read now)"))
    c.print(f"config: {doc['config']['path'] or '-'} ({doc['config']['source']})")
    c.print(f"rule: [bold]{doc['rule']}[/bold]")
    c.print(f"why:  {doc['reason']}")
    for a in doc["actions"]:
        c.print(f"would: {a['kind']} -> node {a['target_node']}: {a['reason']}")
    if not doc["actions"]:
        c.print("would: nothing")
    ledger = doc["cpu_ledger"]
    if ledger is not None:
        c.print(f"cpu ledger: {ledger['summary']}")
        d = ledger["demands"].get(str(p.pid))
        if d is not None:
            c.print(f"  its demand: {d['busy_threads']} busy thread(s), CPU by node "
                    + ", ".join(f"N{n}={v:g}" for n, v in d["cores_by_node"].items())
                    + ("" if d["measured"] else " (not measured yet)"))
        for line in ledger["bookings"]:
            c.print(f"  booked this pass: {line}")
    last = doc["daemon_last_pass"]
    if last is not None and last["rule"] != doc["rule"]:
        # explain plans with a fresh history; the daemon's cool-downs and measurements live in its memory.
        c.print(f"the running daemon's last pass (#{last['pass']}) said [bold]{last['rule']}[/bold]: "
                f"{last['reason']}")
    tv = doc["tiering"]
    if tv is not None:
        c.print(f"tiering (tracker {tv['tracker']}): [bold]{tv['rule']}[/bold]: {tv['reason']}")


def _daemon_last_pass(state: dict | None, pid: int, start_ticks: int) -> dict | None:
    """The running daemon's own verdict for this process in its last pass (state.json), if it detailed
    it: the same pid *and* start time, so a reused pid never shows its predecessor's verdict.

    explain plans on a fresh read with a fresh history; the daemon remembers cool-downs and CPU
    measurements between passes, so the two can differ for a process it has just acted on.
    """
    if not state or not _daemon_alive(state):
        return None
    v = (state.get("verdicts") or {}).get(str(pid))
    if not isinstance(v, dict) or not isinstance(v.get("rule"), str) or v.get("start_ticks") != start_ticks:
        return None
    return {"pass": state.get("passes"), "rule": v["rule"], "reason": str(v.get("reason", ""))}


def _tiering_explain(args: argparse.Namespace, config, host, snap, pid: int, state) -> dict | None:
    """The running daemon's last tiering verdict for `pid`: tiering needs the tracker's samples."""
    from autonumad.plan.tiering import plan_tiers

    if plan_tiers(snap.topology, config.tiering) is None:
        return None
    status = _tiering_status(args, host, snap)
    t = (state or {}).get("tiering")
    if t is None:
        return {"tracker": status["tracker"] if status else "-", "rule": "no-daemon-state",
                "reason": "tiering decides from the hotness tracker's samples, which only the running daemon "
                          "has; no state.json from a daemon pass was found"}
    v = t.get("verdicts", {}).get(str(pid))
    if v is None:
        v = {"rule": "in-place", "reason": "the daemon's last pass had nothing to promote or demote for it"}
    return {"tracker": t["tracker"], **v}


def cmd_advise(args: argparse.Namespace) -> int:
    from autonumad.advise import advise
    from autonumad.readers.nodes import read_topology
    from autonumad.readers.proc_stat import cpu_busy_fraction, read_proc_stat

    host = _host(args)
    prev = read_proc_stat(host)
    if _live(host) and args.sample_s > 0:
        time.sleep(args.sample_s)
    busy = cpu_busy_fraction(prev, read_proc_stat(host))
    a = advise(read_topology(host), busy, args.cpus, parse_size_arg(args.memory))
    if args.json:
        _print_json({"schema_version": 1, **a.as_json()})
    else:
        from autonumad.readers.lists import format_list

        print(format_list(a.nodes))
        print(f"# {a.reason}", file=sys.stderr)
    return 0 if a.fits else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from autonumad.sim.demo_view import run_demo

    return run_demo(args)


def _kernel_warnings(config) -> list[str]:
    """Combinations that are legal but worth a word (style.md 5.4)."""
    out = []
    nb = config.kernel.numa_balancing
    if config.balance.enabled and nb is not None and nb & 1:
        out.append("kernel.numa_balancing includes normal (1) while autonumad balances too: the daemon will "
                   "only place tasks and migrate what the kernel leaves misplaced; 'off' lets it do all")
    if config.kernel.demotion_enabled:
        out.append("kernel.demotion_enabled = true lets reclaim place pages outside cpuset.mems "
                   "(Documentation/ABI/testing/sysfs-kernel-mm-numa)")
    return out


def _all_warnings(config) -> list[str]:
    """_kernel_warnings and the config module's own (metrics.listen beyond loopback, ...), once each."""
    from autonumad.service.config import config_warnings

    out = _kernel_warnings(config)
    out += [w for w in config_warnings(config) if not w.startswith(("kernel.numa_balancing", "kernel.demotion"))]
    return out


def cmd_check_config(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from autonumad.service.config import DEFAULT_CONFIG_PATH, load_config

    path = args.path or DEFAULT_CONFIG_PATH
    config = load_config(path)
    for w in _all_warnings(config):
        print(f"autonumad: warning: {w}", file=sys.stderr)
    if config.metrics.web_config:
        from autonumad.service.webconfig import load_web_config

        load_web_config(config.metrics.web_config)  # TLS files and bcrypt hashes checked now, not at start
    if args.json:
        _print_json(json.loads(json.dumps(asdict(config), default=lambda o: getattr(o, "pattern", str(o)))))
    else:
        print(f"{path}: OK")
    return 0


def cmd_sysctl(args: argparse.Namespace) -> int:
    from autonumad.act.sysctl import KnobManager
    from autonumad.service.runtime import daemon_running, runtime_dir_for

    config, _ = _load_config(args.config)
    host = _host(args)
    runtime_dir = runtime_dir_for(config, host)
    mgr = KnobManager(host, runtime_dir)
    desired = config.kernel.desired()
    if args.action == "show":
        rows = mgr.show()
        doc = [{"knob": r.name, "path": r.path, "value": r.value, "desired": desired.get(r.name),
                "saved_original": r.original, "managed": r.managed, "error": r.error} for r in rows]
        if args.json:
            _print_json({"schema_version": 1, "knobs": doc})
        else:
            from rich.table import Table

            t = Table(title="Kernel knobs", title_justify="left")
            for col in ("knob", "value", "config", "saved original", "path"):
                t.add_column(col)
            for d in doc:
                t.add_row(d["knob"], "absent" if d["path"] is None else str(d["value"]),
                          "keep" if d["desired"] is None else str(d["desired"]),
                          "-" if not d["managed"] else str(d["saved_original"]), d["path"] or "-")
            _console().print(t)
        return 0
    if args.action == "verify":
        drifts = mgr.verify(desired)
        doc = [{"knob": d.name, "expected": d.expected, "actual": d.actual} for d in drifts]
        if args.json:
            _print_json({"schema_version": 1, "drift": doc})
        for d in drifts:
            print(f"{d.name}: config wants {d.expected}, kernel has {d.actual}", file=sys.stderr)
        if not drifts and not args.json:
            print("kernel knobs match the config")
        return 1 if drifts else 0
    # A leftover saved file is a crashed run's only while no daemon runs: the
    # unit's ExecReload=+sysctl apply runs beside the live daemon, whose saved
    # originals must stay saved (restoring them flipped the knob 0 -> 1 -> 0).
    recover = args.action == "apply" and not daemon_running(runtime_dir)
    changes = mgr.recover() if recover else []
    changes += mgr.apply(desired) if args.action == "apply" else mgr.restore()
    doc = [{"knob": c.name, "path": c.path, "old": c.old, "new": c.new, "outcome": c.outcome, "error": c.error}
           for c in changes]
    if args.json:
        _print_json({"schema_version": 1, "changes": doc})
    else:
        for c in doc:
            print(f"{c['knob']}: {c['old']} -> {c['new']} ({c['outcome']}{': ' + c['error'] if c['error'] else ''})")
        if not doc:
            print("nothing to do")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from autonumad.service.runtime import read_file, signal_daemon

    if args.runtime_dir:
        runtime_dir = args.runtime_dir
    else:
        try:
            runtime_dir = _load_config(args.config)[0].daemon.runtime_dir
        except AutonumadError:
            from autonumad.service.config import Config

            runtime_dir = Config().daemon.runtime_dir
    state_path = Path(runtime_dir) / "state.json"
    try:
        data = read_file(runtime_dir, "state.json")
        if data is None:
            raise AutonumadError(f"{state_path}: no such file: no daemon is running with this runtime directory")
        state = json.loads(data)
        pid = int(state["pid"])
    except (ValueError, KeyError, TypeError) as e:
        raise AutonumadError(f"{state_path}: no running daemon found ({e})") from None
    before = (state.get("generation"), json.dumps(state.get("last_reload")))
    signal_daemon(runtime_dir, state, signal.SIGHUP)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            continue
        after = (state.get("generation"), json.dumps(state.get("last_reload")))
        if after != before:
            lr = state.get("last_reload") or {}
            if lr.get("ok"):
                print(f"reloaded (generation {state.get('generation')})")
                return 0
            print(f"autonumad: reload rejected, running config kept: {lr.get('error')}", file=sys.stderr)
            return 1
    raise AutonumadError(f"daemon pid {pid} did not report a reload within {args.timeout:g} s")


class _EarlySignals:
    """SIGHUP/SIGTERM/SIGINT arriving before the daemon's own handlers: remembered, then handed over.

    SIGHUP's default action terminates the process, and starting `run`
    (imports, config, metrics endpoint) takes a while: systemd's reload, or
    an operator's, in that window killed the daemon (issue 10). So `main`
    installs these first thing for `run`, and cmd_run hands what arrived to
    the daemon once it has installed its own.
    """

    def __init__(self) -> None:
        import signal

        self.reload = self.stop = False
        signal.signal(signal.SIGHUP, self._hup)
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)

    def _hup(self, *_: Any) -> None:
        self.reload = True

    def _term(self, *_: Any) -> None:
        self.stop = True

    def hand_over(self, daemon) -> None:
        if self.stop:
            daemon.request_stop()
        if self.reload:
            daemon.request_reload()


def main(argv: Sequence[str] | None = None) -> int:
    early = _EarlySignals() if list(sys.argv[1:] if argv is None else argv)[:1] == ["run"] else None
    parser = build_parser()
    args = parser.parse_args(argv)
    args.early_signals = early
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="autonumad: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except AutonumadError as e:
        code = EX_CONFIG if type(e).__name__ == "ConfigError" else 1
        print(f"autonumad: error: {e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
