"""Pid reuse under a storm, on the real kernel: zero actions on a process the daemon did not decide about.

Issue 10's fault injection. In the 2node guest, with `kernel.pid_max`
lowered to 500 (pids 300-499 cycle: the kernel allocates from
RESERVED_PIDS = 300 after a wrap, kernel/pid.c), for STORM_S seconds:

* burners use up pids: one forks and execs `/bin/true` in a loop (new
  processes), one starts and joins threads in bursts (thread ids come from
  the same pid space and are far cheaper under TCG: the first run with the
  fork burner alone created 340 tasks in 60 s, too few for the pids the
  daemon acted on to come round again), so pids wrap within a second;
* short-lived `dd` processes (a 4 MiB buffer first touched on node 1, then
  re-pinned by their "owner" to node 0 so the daemon wants to move their
  memory; some re-pinned again, to node 1, while they live) come and go
  and take over pids the daemon acted on;
* two long-lived misplaced workloads must still converge.

The daemon runs at debug level, where every action logs
"acting on pid P start_ticks S" (act/identity.py: the identity it proved).
The checker does not trust that: the kernel's tracer records every
`move_pages(2)` that moves pages and every `sched_setaffinity(2)` the
daemon makes, and every task creation (`task:task_newtask`, with its clone
flags, so threads are told from processes). From the trace alone it knows
which process (thread group and its creation time) held the target pid or
tid at the instant of each syscall; that process must be one the daemon
logged a decision about (same pid, start time within one tick of its
creation). Zero exceptions are allowed. Also: the long-lived workloads
reach 90 % local, the daemon never dies, and its RSS stays flat.

The figures (actions, processes created, pids reused, pids the daemon had
acted on that were reused) are printed for the issue's closing note.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from hardware.test_hw_daemon import AUTONUMAD, REPO, workload
from autonumad.readers.lists import parse_list

pytestmark = pytest.mark.topology("2node")

STORM_S = 60
PID_MAX = 500
TRACING = Path("/sys/kernel/tracing")
CLONE_THREAD = 0x00010000
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _node_cpus(node: int) -> list[int]:
    return parse_list(Path(f"/sys/devices/system/node/node{node}/cpulist").read_text())


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


class Tracer:
    """ftrace: task creation and the daemon's actuating syscalls, with boot-clock timestamps."""

    EVENTS = ("task/task_newtask", "syscalls/sys_enter_move_pages", "syscalls/sys_enter_sched_setaffinity")

    def __init__(self) -> None:
        if not (TRACING / "events/syscalls/sys_enter_move_pages").exists():
            pytest.skip("this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)")
        self.w("tracing_on", "0")
        self.w("trace", "")
        self.w("trace_clock", "boot")  # the clock of /proc/<pid>/stat's starttime
        self.w("buffer_size_kb", "16384")
        for e in self.EVENTS:
            self.w(f"events/{e}/enable", "1")

    @staticmethod
    def w(name: str, value: str) -> None:
        (TRACING / name).write_text(value)

    def start(self) -> None:
        self.w("tracing_on", "1")

    def stop(self) -> str:
        self.w("tracing_on", "0")
        text = (TRACING / "trace").read_text(errors="replace")
        for e in self.EVENTS:
            self.w(f"events/{e}/enable", "0")
        self.w("trace_clock", "local")
        self.w("buffer_size_kb", "1408")
        return text


# "  comm-tid  [cpu] flags  ts: task_newtask: pid=.. comm=.. clone_flags=.. ..." and, for a
# syscall event, "  comm-tid  [cpu] flags  ts: sys_move_pages(pid: 4d2, nr_pages: 1, ...)".
_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+"
                   r"(?P<event>\w+)(?::\s+|\()(?P<rest>.*)$")


def check_trace(text: str, initial: dict[int, tuple[int, float]], daemon_pid: int,
                decided: set[tuple[int, int]]) -> dict[str, int]:
    """Match every actuating syscall of the daemon with the process that held the target at that instant.

    `initial`: tid -> (tgid, start in seconds since boot) for the tasks alive
    when tracing began. Returns counts; raises AssertionError listing the
    syscalls that reached a process the daemon did not decide about.
    """
    owner = dict(initial)  # tid -> (tgid, process start s) of its current holder
    daemon_tids = {t for t, (g, _) in initial.items() if g == daemon_pid}
    allocated: set[int] = set(initial)
    acted_pids: set[int] = set()
    counts = defaultdict(int)
    wrong = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        ts, event, rest, caller = float(m["ts"]), m["event"], m["rest"], int(m["tid"])
        if event == "task_newtask":
            f = dict(re.findall(r"(\w+)=(\S+)", rest))
            child, flags = int(f["pid"]), int(f["clone_flags"], 16)
            counts["tasks_created"] += 1
            if child in allocated:
                counts["pid_reuses"] += 1
                if child in acted_pids:
                    counts["reuses_of_acted_pids"] += 1
            allocated.add(child)
            if flags & CLONE_THREAD:
                owner[child] = owner.get(caller, (caller, -1.0))
            else:
                owner[child] = (child, ts)
                counts["processes_created"] += 1
            if owner[child][0] == daemon_pid:
                daemon_tids.add(child)
            continue
        if caller not in daemon_tids:
            continue
        args = [int(a, 16) for a in re.findall(r"\w+: (?:0x)?([0-9a-f]+)", rest)]
        if event == "sys_move_pages":
            target, nodes = args[0], args[3]
            if nodes == 0:
                continue  # a placement query (nodes NULL): reads, moves nothing
            kind = "move_pages"
        else:
            target, kind = args[0], "sched_setaffinity"
        if target == 0:
            continue  # itself
        tgid, start_s = owner.get(target, (target, -1.0))
        counts[kind] += 1
        acted_pids.add(tgid)
        start_ticks = int(start_s * TICKS_PER_S)
        if not any((tgid, s) in decided for s in (start_ticks - 1, start_ticks, start_ticks + 1)):
            wrong.append(f"{ts:.6f} {kind} on {target} (process {tgid} started at {start_s:.3f} s)")
    assert not wrong, f"{len(wrong)} action(s) on processes the daemon did not decide about:\n" + "\n".join(wrong[:20])
    return dict(counts)


def storm(stop_at: float, node0: list[int], node1: list[int], rng: random.Random, stats: dict) -> None:
    """Short-lived dd processes: touch 4 MiB on node 1, re-pinned to node 0 by their owner, some again to node 1."""
    live: list[tuple[subprocess.Popen, float, bool]] = []
    while time.monotonic() < stop_at:
        while len(live) < 6:
            # bs=4M: dd's buffer, first touched on node 1 where it starts.
            p = subprocess.Popen(["taskset", "-c", ",".join(map(str, node1)), "dd", "if=/dev/zero", "of=/dev/null",
                                  "bs=4M", f"count={rng.randint(300, 3000)}"], stderr=subprocess.DEVNULL)
            live.append((p, time.monotonic(), False))
            stats["dd"] += 1
        time.sleep(0.1)
        now = time.monotonic()
        keep = []
        for p, born, repinned in live:
            if p.poll() is not None:
                continue
            try:
                if not repinned and now - born > 0.5:
                    os.sched_setaffinity(p.pid, node0)  # the owner's pin: now its memory is remote
                    repinned = True
                elif repinned and rng.random() < 0.05:
                    os.sched_setaffinity(p.pid, node1)  # the owner changes its mind
                    stats["owner_repins"] += 1
            except OSError:
                pass
            if now - born > 6:
                p.kill()
            keep.append((p, born, repinned))
        live = keep
    for p, _, _ in live:
        p.kill()
        p.wait()


def test_pid_reuse_storm_no_action_on_a_process_not_decided_about(tmp_path, workloads):
    node0, node1 = _node_cpus(0), _node_cpus(1)
    pid_max = Path("/proc/sys/kernel/pid_max")
    old_pid_max = pid_max.read_text()
    cfg = tmp_path / "autonumad.toml"
    cfg.write_text(f"""
[daemon]
interval_s = 1.0
fast_recheck_s = 0.25
log_level = "debug"
runtime_dir = "{tmp_path}/run"
[balance]
min_rss_bytes = "2MiB"
min_cpu_fraction = 0.0
cooldown_s = 1.0
[kernel]
numa_balancing = "off"
[metrics]
listen = ""
[tiering]
enabled = false
""")
    os.chmod(cfg, 0o600)
    longs = [workload("--mib", "48", "--node", "1", "--cpunode", "0") for _ in range(2)]
    workloads.extend(longs)
    log = tmp_path / "daemon.log"
    tracer = Tracer()
    pid_max.write_text(str(PID_MAX))
    burner = threads = None
    try:
        with open(log, "w") as logf:
            daemon = subprocess.Popen([*AUTONUMAD, "run", "--config", str(cfg)], stderr=logf, cwd=REPO)
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "state.json").exists():
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        tracer.start()  # before the snapshot: a task created in between is in both, the trace wins
        initial = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                start = _start_ticks(int(d.name))
                for t in (d / "task").glob("*"):
                    if start is not None:
                        initial[int(t.name)] = (int(d.name), start / TICKS_PER_S)
        burner = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
        # Bursts of 100 threads, then a pause: pids 300-499 come round about twice a second
        # while leaving the daemon CPU to work with.
        threads = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                                    "while True:\n"
                                    "    for _ in range(100):\n"
                                    "        t = threading.Thread(target=int); t.start(); t.join()\n"
                                    "    time.sleep(0.2)\n"])
        rss = [_rss_kib(daemon.pid)]
        stats = defaultdict(int)
        t0 = time.monotonic()
        next_rss = t0 + 10
        rng = random.Random(10)
        while time.monotonic() - t0 < STORM_S:
            storm(min(t0 + STORM_S, time.monotonic() + 10), node0, node1, rng, stats)
            assert daemon.poll() is None, log.read_text()[-4000:]
            if time.monotonic() >= next_rss:
                rss.append(_rss_kib(daemon.pid))
                next_rss += 10
        for b in (burner, threads):
            b.kill()
            b.wait()
        burner = threads = None
        # The long-lived ones converge (the storm may have slowed them down).
        t1 = time.monotonic()
        while any(w.local_fraction(0) < 0.9 for w in longs):
            assert daemon.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() - t1 < 120, [w.local_fraction(0) for w in longs]
            time.sleep(1)
        rss.append(_rss_kib(daemon.pid))
        trace = tracer.stop()
    finally:
        pid_max.write_text(old_pid_max)
        for b in (burner, threads):
            if b is not None:
                b.kill()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text
    decided = {(int(p), int(s)) for p, s in re.findall(r"acting on pid (\d+) start_ticks (\d+)", text)}
    counts = check_trace(trace, initial, daemon.pid, decided)
    refused = text.count("pid reused")
    # RSS after warm-up may wobble by the allocator's arenas, not grow with the storm.
    assert rss[-1] <= max(rss[1:2] or rss) * 1.25 + 4096, rss
    print(f"\npid-reuse storm {STORM_S} s, pid_max {PID_MAX}: {stats['dd']} dd processes "
          f"({stats['owner_repins']} re-pinned again by their owner), {counts.get('processes_created', 0)} processes "
          f"and {counts.get('tasks_created', 0)} tasks created, {counts.get('pid_reuses', 0)} pid reuses, "
          f"{counts.get('reuses_of_acted_pids', 0)} reuses of a pid the daemon had acted on; daemon syscalls: "
          f"{counts.get('move_pages', 0)} move_pages, {counts.get('sched_setaffinity', 0)} sched_setaffinity, "
          f"{len(decided)} decisions, 0 on a process not decided about; {refused} actions refused as "
          f"'pid reused'; daemon RSS KiB {rss}", file=sys.stderr)
    assert counts.get("pid_reuses", 0) > 100 and counts.get("move_pages", 0) > 0
    # The point of the storm: numbers of processes the daemon acted on came round to new owners.
    assert counts.get("reuses_of_acted_pids", 0) > 0, counts
