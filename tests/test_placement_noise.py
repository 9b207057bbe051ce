"""Placement under background noise (issue 12's flake in the 2x2 guest): the
daemon, pass after pass on a fake 2x2 host whose threads and /proc/stat
advance with a clock, with the two numa01 processes and the kind of load the
hardware test's guest has beside them: a light, unpinned sampler whose CPU
use comes and goes (the test's own move_pages queries), and bursts of CPU
time no scanned process explains (the daemon's own pass, kworkers).

Before the fix, the sampler's thread counted as a whole CPU on whichever
node it last ran on, so neither numa01 process could gather on a node
(`spread-by-capacity`), and a one-pass burst on the node holding the
daemon's own pin undid it (`undo-crammed`)."""

from __future__ import annotations

from pathlib import Path

from autonumad.act.sysctl import KnobManager
from autonumad.service.config import compile_config
from autonumad.service.daemon import Daemon
from autonumad.sim.fakehost import STAT_PROCESSOR, _join_stat, _split_stat, build_host

from test_placement import SIXTY_FOUR, host2x2, proc

TICKS_PER_S = 100  # USER_HZ
CPUS = (0, 1, 2, 3)


class Clocked:
    """Advances the fake tree by one second per `tick`: each thread's utime by its use, and
    /proc/stat's per-CPU busy and idle ticks by what ran there plus any unexplained burst."""

    def __init__(self, root: Path):
        self.root = root
        self.now = 100.0
        self.busy = {c: 0 for c in CPUS}
        self.total = {c: 100000 for c in CPUS}

    def _threads(self):
        for stat in sorted(self.root.glob("proc/[0-9]*/task/*/stat")):
            yield stat, _split_stat(stat.read_text())

    @staticmethod
    def _allowed(status: Path) -> set[int]:
        text = status.read_text().split("Cpus_allowed_list:\t")[1].split()[0]
        out: set[int] = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        return out

    def tick(self, use_by_pid: dict[int, float], burst_by_cpu: dict[int, float] | None = None) -> None:
        ran = {c: 0 for c in CPUS}
        per_pid: dict[int, int] = {}
        taken: dict[tuple[int, int], int] = {}
        for stat, f in self._threads():
            pid = int(stat.parent.parent.parent.name)
            add = int(use_by_pid.get(pid, 0.0) * TICKS_PER_S)
            # The fake's affinity change puts every thread on the set's first
            # CPU; spread a process's threads over its allowed CPUs, as the
            # scheduler would.
            allowed = sorted(self._allowed(stat.parent / "status"))
            cpu = int(f[STAT_PROCESSOR])
            if (pid, cpu) in taken:
                free = [c for c in allowed if (pid, c) not in taken]
                cpu = free[0] if free else cpu
                f[STAT_PROCESSOR] = str(cpu)
            taken[(pid, cpu)] = 1
            f[13] = str(int(f[13]) + add)
            stat.write_text(_join_stat(f))
            ran[int(f[STAT_PROCESSOR])] += add
            per_pid[pid] = per_pid.get(pid, 0) + add
        for pid, add in per_pid.items():
            p = self.root / f"proc/{pid}/stat"
            f = _split_stat(p.read_text())
            f[13] = str(int(f[13]) + add)
            p.write_text(_join_stat(f))
        for c in CPUS:
            b = min(TICKS_PER_S, ran[c] + int((burst_by_cpu or {}).get(c, 0.0) * TICKS_PER_S))
            self.busy[c] += b
            self.total[c] += TICKS_PER_S
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
        lines += [f"cpu{c} {self.busy[c]} 0 0 {self.total[c] - self.busy[c]} 0 0 0 0 0 0" for c in CPUS]
        lines += ["intr 0", "ctxt 0", "btime 0", "processes 0", "procs_running 1", "procs_blocked 0"]
        (self.root / "proc/stat").write_text("\n".join(lines) + "\n")
        self.now += 1.0


def numa01_with_a_sampler(tmp_path, sampler=True):
    # A and B: two busy threads each, spread over both nodes, 64 MiB each on
    # node 0. S: the test's sampler, one unpinned thread, 32 MiB, excluded
    # from balancing like the hardware test's own pid, but booked (it uses CPU).
    procs = [proc(100, (0, 2), {0: SIXTY_FOUR}), proc(200, (1, 3), {0: SIXTY_FOUR}),
             proc(300, (0,), {0: SIXTY_FOUR // 2}, busy=sampler)]
    root = tmp_path / "root"
    host = build_host(root, host2x2(procs))
    cfg = compile_config({"daemon": {"runtime_dir": str(tmp_path / "run"), "interval_s": 1.0},
                          "metrics": {"listen": ""}, "kernel": {"numa_balancing": "off"},
                          "balance": {"min_rss_bytes": "16MiB", "exclude_pids": [300], "min_cpu_fraction": 0,
                                      "kernel_assist": False}})
    clock = Clocked(root)
    d = Daemon(host, cfg, clock=lambda: clock.now)
    d.knobs = KnobManager(host, tmp_path / "run")
    d._apply_knobs()
    return d, clock, root


def allowed_node(root: Path, pid: int) -> set[int]:
    """The nodes (2 CPUs each) whose CPUs the process may run on."""
    return {c // 2 for c in Clocked._allowed(root / f"proc/{pid}/status")}


def test_numa01_splits_beside_a_fluctuating_sampler_and_a_burst_does_not_undo_the_pin(tmp_path):
    d, clock, root = numa01_with_a_sampler(tmp_path)
    # The sampler's use fluctuates around the busy-thread threshold, pass by pass.
    sampler = [0.6, 0.2, 0.7, 0.4, 0.9, 0.3, 0.6, 0.5, 0.8, 0.2]
    rules: list[dict[int, str]] = []
    for i, s in enumerate(sampler):
        # Pass 5: a one-pass burst nobody explains, a CPU's worth on node 1
        # (where B is pinned by then) -- the daemon's own pass under TCG.
        burst = {2: 0.5, 3: 0.5} if i == 5 else None
        report = d.run_pass()
        rules.append({pid: v.rule for pid, v in report.decision.verdicts.items()})
        clock.tick({100: 1.0, 200: 1.0, 300: s}, burst)
    assert not any("undo-crammed" in r.values() for r in rules), rules
    assert not any("spread-by-capacity" in r.values() for r in rules), rules
    assert sorted([min(allowed_node(root, 100)), min(allowed_node(root, 200))]) == [0, 1], rules
    assert all(len(allowed_node(root, pid)) == 1 for pid in (100, 200)), rules


def test_a_short_burst_on_the_node_of_our_pin_does_not_undo_it(tmp_path):
    # No sampler: numa01 splits on the first pass. Then, for two passes, a
    # CPU's worth of time nobody explains lands on node 1, where B is pinned,
    # and B's two threads get half a CPU each beside it. (Two: a settled
    # process's undo waits one pass for a fresh read, rule re-reading.)
    d, clock, root = numa01_with_a_sampler(tmp_path, sampler=False)
    rules = []
    for i in range(6):
        report = d.run_pass()
        rules.append({pid: v.rule for pid, v in report.decision.verdicts.items()})
        burst = i in (2, 3)
        clock.tick({100: 1.0, 200: 0.5 if burst else 1.0}, {2: 0.5, 3: 0.5} if burst else None)
    assert {rules[0][100], rules[0][200]} == {"task-follows-memory", "task-and-memory"}, rules
    assert not any("undo-crammed" in r.values() for r in rules), rules
    assert sorted([min(allowed_node(root, 100)), min(allowed_node(root, 200))]) == [0, 1], rules
