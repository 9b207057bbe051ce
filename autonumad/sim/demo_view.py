"""`autonumad demo`: the real daemon on the simulated host, with a live view."""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autonumad.service.daemon import Daemon, PassReport
from autonumad.sim.demo import DEMO_NAMES, build_demo_host, demo_config, drift
from autonumad.views import status_doc


def _table(report: PassReport, events: list[str], history_lf: dict[int, list[float]]) -> Group:
    snap = report.snapshot
    t = Table(title=f"pass {report.number}: simulated 2-socket + CXL host "
                    f"({snap.scanned} processes scanned, {len(snap.processes)} read in detail)",
              title_justify="left")
    for col in ("pid", "comm", "on", "N0 GiB", "N1 GiB", "N2 GiB", "local", "trend", "verdict"):
        t.add_column(col, justify="right" if col in ("pid", "N0 GiB", "N1 GiB", "N2 GiB", "local") else "left",
                     no_wrap=col != "verdict", overflow="fold")
    for pid in DEMO_NAMES:
        p = snap.process(pid)
        if p is None:
            continue
        lf = p.local_fraction()
        style = "green" if lf >= 0.9 else "yellow" if lf >= 0.5 else "red"
        v = report.decision.verdicts.get(pid)
        trend = "".join("▁▂▃▄▅▆▇█"[min(7, int(x * 8))] for x in history_lf.get(pid, [])[-8:])
        t.add_row(str(pid), p.comm, ",".join(map(str, p.running_nodes)),
                  *(f"{p.pages_by_node.get(n, 0) * snap.page_size_bytes / 2**30:.1f}" for n in (0, 1, 2)),
                  Text(f"{lf:.0%}", style=style), trend, Text(v.rule if v else "-", style="bold" if v and v.actions else ""))
    lines = [t]
    for o in report.outcomes:
        lines.append(Text(f"  {o.action.kind} pid {o.action.pid} ({o.action.comm}): {o.status}: {o.action.reason}"))
    for e in events:
        lines.append(Text(f"  drift: {e}", style="magenta"))
    return Group(*lines)


def run_demo(args) -> int:
    logging.getLogger("autonumad").setLevel(logging.WARNING)
    tmp = None
    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="autonumad-demo-")
        root = Path(tmp.name)
    host = build_demo_host(root / "host")
    config = demo_config(root / "run", args.interval)
    daemon = Daemon(host, config, manage_knobs=False)
    daemon.install_signal_handlers()
    rng = random.Random(7)
    console = Console()
    history_lf: dict[int, list[float]] = {}
    if not args.json:
        console.print(f"[bold]autonumad demo[/bold]: the daemon on a simulated host under {root / 'host'}; "
                      f"{args.passes} passes every {args.interval:g} s (Ctrl-C stops)")
    try:
        with Live(console=console, auto_refresh=False, transient=False) if not args.json else _Null() as live:
            for n in range(1, args.passes + 1):
                t0 = time.monotonic()
                report = daemon.run_pass()
                for p in report.snapshot.processes:
                    history_lf.setdefault(p.pid, []).append(p.local_fraction())
                events = drift(host, n, rng)
                if args.json:
                    doc = status_doc(report.snapshot, limit=None)
                    doc["pass"] = n
                    doc["actions"] = [{"kind": o.action.kind, "pid": o.action.pid, "rule": o.action.rule,
                                       "status": o.status, "reason": o.action.reason} for o in report.outcomes]
                    doc["drift"] = events
                    print(json.dumps(doc), flush=True)
                else:
                    live.update(_table(report, events, history_lf), refresh=True)
                if daemon.stop_event.wait(max(0.0, args.interval - (time.monotonic() - t0))):
                    break
    finally:
        if tmp is not None:
            tmp.cleanup()
    if not args.json:
        console.print("\nEvery process the rules allow reached its target locality; the interleaved, excluded "
                      "and too-large ones were left as they were. Try: autonumad explain 4001 --root DIR "
                      "(with --keep DIR).")
    return 0


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def update(self, *a, **k):
        pass
