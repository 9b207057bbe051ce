"""The balancing daemon on a real two-node kernel (issue 4's "done when").

With the daemon running and kernel balancing off (the daemon's config sets
numa_balancing = "off" and restores it at exit):
- a misplaced pinned process reaches 95 % local;
- processes under `numactl --membind` / `--interleave` and one matching
  exclude_comm are left exactly as they were;
- `explain` names the rule for each;
- `--dry-run` changes nothing and logs the same decisions as a real pass.
Page placement is counted with move_pages(2)'s status query over each
workload's buffer, independent of the numa_maps parsing under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from autonumad.act.syscalls import page_nodes
from autonumad.readers.lists import format_list
from hardware.workload import drop_caches, node_cpus, node_meminfo_bytes

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = REPO / "tests" / "hardware" / "workload.py"
AUTONUMAD = [sys.executable, "-m", "autonumad"]
PAGE = 4096

pytestmark = pytest.mark.topology("2node")


class Workload:
    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=REPO)
        line = self.proc.stdout.readline()
        assert line, f"workload did not start: {argv}"
        self.info = json.loads(line)
        self.pid = self.info["pid"]

    def nodes(self) -> Counter:
        addrs = [self.info["address"] + i * PAGE for i in range(self.info["touched_bytes"] // PAGE)]
        return Counter(page_nodes(self.pid, addrs))

    def local_fraction(self, node: int) -> float:
        c = self.nodes()
        return c.get(node, 0) / max(1, sum(c.values()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the workload exits at stdin EOF, cleanly
            try:
                self.proc.wait(10)
                return
            except subprocess.TimeoutExpired:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def workload(*args: str, prefix: tuple[str, ...] = (), python: str = sys.executable, env=None) -> Workload:
    return Workload([*prefix, python, str(WORKLOAD), *args], env=env)


@pytest.fixture(autouse=True)
def kernel_not_balancing():
    """Keep the kernel's own NUMA balancing from moving the workloads.

    Mode 2 (memory tiering only) does not scan top-tier memory
    (mm/mprotect.c), and on this topology every node is top tier; it also
    differs from the 0 the daemon's config asks for, so restore is visible.
    """
    path = Path("/proc/sys/kernel/numa_balancing")
    before = path.read_text()
    try:
        path.write_text("2")
    except OSError:  # before 5.18 (the 5.10 guest) only 0 and 1 exist
        path.write_text("0")
    yield
    path.write_text(before)


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "autonumad.toml"
    path.write_text(f"""
[daemon]
interval_s = 1.0
runtime_dir = "{tmp_path}/run"
[balance]
min_rss_bytes = "16MiB"
cooldown_s = 2.0
exclude_comm = ["^excluded-wl$"]
[kernel]
numa_balancing = "off"
[metrics]
listen = ""
""")
    os.chmod(path, 0o600)
    return path


def explain(pid: int, cfg: Path) -> dict:
    out = subprocess.run([*AUTONUMAD, "explain", str(pid), "--json", "--config", str(cfg)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def knob(name: str = "/proc/sys/kernel/numa_balancing") -> str:
    return Path(name).read_text().strip()


def excluded_python(tmp_path: Path) -> tuple[str, dict]:
    """A python whose comm is "excluded-wl" (the kernel names a task after the exec'd file)."""
    link = tmp_path / "excluded-wl"
    link.symlink_to(os.path.realpath(sys.executable))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return str(link), env


@pytest.mark.every_guest  # also in the no-cgroup and 6.1-kernel guests
def test_daemon_converges_a_pinned_process_and_leaves_placed_ones_alone(tmp_path, cfg, workloads):
    original = knob()
    misplaced = workload("--mib", "64", "--node", "1", "--cpunode", "0", "--threads", "2")
    bound = workload("--mib", "32", "--cpunode", "0", prefix=("numactl", "--membind=1"))
    interleaved = workload("--mib", "32", "--cpunode", "0", prefix=("numactl", "--interleave=0,1"))
    exe, env = excluded_python(tmp_path)
    excluded = workload("--mib", "32", "--node", "1", "--cpunode", "0", python=exe, env=env)
    workloads += [misplaced, bound, interleaved, excluded]
    before = {w.pid: w.nodes() for w in (bound, interleaved, excluded)}
    assert misplaced.local_fraction(0) < 0.05

    # explain with the kernel's balancing off, as the daemon will run (with it
    # on, the daemon defers page moves to the kernel for a few passes).
    sysctl = [*AUTONUMAD, "sysctl"]
    subprocess.run([*sysctl, "apply", "--config", str(cfg)], check=True, cwd=REPO, capture_output=True)
    try:
        rules = {w.pid: explain(w.pid, cfg)["rule"] for w in (misplaced, bound, interleaved, excluded)}
    finally:
        subprocess.run([*sysctl, "restore", "--config", str(cfg)], check=True, cwd=REPO, capture_output=True)
    assert knob() == original
    assert rules == {misplaced.pid: "memory-follows-task", bound.pid: "explicit-memory-policy",
                     interleaved.pid: "explicit-memory-policy", excluded.pid: "excluded-comm"}

    log = tmp_path / "daemon.log"
    with open(log, "w") as logf:
        daemon = subprocess.Popen([*AUTONUMAD, "run", "--config", str(cfg)], stderr=logf, cwd=REPO)
    try:
        t0 = time.monotonic()
        while misplaced.local_fraction(0) < 0.95:
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 120, log.read_text()
            time.sleep(0.5)
        converged_s = time.monotonic() - t0
        assert knob() == "0"  # the config's numa_balancing = "off", held while running
        time.sleep(3)  # a few more passes: nothing else may move
        for w in (bound, interleaved, excluded):
            assert w.nodes() == before[w.pid], (w.info, log.read_text())
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, log.read_text()
    assert knob() == original  # restored on SIGTERM
    text = log.read_text()
    assert f"migrate pid {misplaced.pid}" in text and "its home by its CPU affinity" in text
    print(f"converged to 95% local in {converged_s:.1f} s (including daemon start)")


@pytest.mark.every_guest  # also in the no-cgroup and 6.1-kernel guests
def test_dry_run_changes_nothing_and_logs_the_same_decisions(tmp_path, cfg, workloads):
    w = workload("--mib", "48", "--node", "1", "--cpunode", "0")
    workloads.append(w)
    before = w.nodes()

    def once(*extra: str) -> str:
        out = subprocess.run([*AUTONUMAD, "run", "--once", "--config", str(cfg), *extra], capture_output=True,
                             text=True, cwd=REPO, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stderr

    dry = once("--dry-run")
    assert w.nodes() == before
    real = once()
    assert w.local_fraction(0) >= 0.95

    def decisions(text: str) -> list[str]:
        lines = [ln for ln in text.splitlines() if f"migrate pid {w.pid}" in ln]
        return [ln[ln.index("migrate pid"):].replace(" [dry run]", "") for ln in lines]

    assert decisions(dry) and decisions(dry) == decisions(real)


def test_explain_agrees_with_the_running_daemon_on_every_process(tmp_path, cfg, workloads):
    """Issue 11: for every process the running daemon detailed, `explain PID` (finding the daemon's
    configuration through its state file) gives the rule the daemon's last pass gave it.

    The daemon runs with --dry-run so the placement it plans on stays as it is while explain reads
    it; a process whose rule changed between the two state reads around one explain is read again.
    """
    exe, env = excluded_python(tmp_path)
    shapes = {
        "misplaced-pinned": workload("--mib", "48", "--node", "1", "--cpunode", "0", "--threads", "2"),
        "membind": workload("--mib", "32", "--cpunode", "0", prefix=("numactl", "--membind=1")),
        "interleave": workload("--mib", "32", prefix=("numactl", "--interleave=0,1")),
        "excluded": workload("--mib", "32", "--node", "1", "--cpunode", "0", python=exe, env=env),
        # Touching its 48 MiB every 5 s: clearly idle. (Touching every 0.2 s put it at 0.05-0.1 of a
        # CPU, on balance.min_cpu_fraction's edge: the daemon's pass and explain's own one-second
        # sample then fell on different sides of it, "idle" against "task-and-memory", in a CI run.)
        "unpinned-spread": workload("--mib", "48", "--node", "0", "--threads", "2", "--touch-interval-s", "5"),
        "local-pinned": workload("--mib", "32", "--node", "1", "--cpunode", "1"),
    }
    workloads += list(shapes.values())
    # This test's own process is excluded for the same reason: its CPU use and where its threads
    # run change with what it is doing (explain, reading state), so its rule has no edge to hold.
    cfg.write_text(cfg.read_text().replace("exclude_comm", f"exclude_pids = [{os.getpid()}]\nexclude_comm"))
    state_path = tmp_path / "run" / "state.json"
    log = tmp_path / "daemon.log"
    with open(log, "w") as logf:
        daemon = subprocess.Popen([*AUTONUMAD, "run", "--dry-run", "--config", str(cfg)], stderr=logf, cwd=REPO)

    def state() -> dict:
        return json.loads(state_path.read_text())

    try:
        t0 = time.monotonic()
        while not state_path.exists() or state()["passes"] < 3:
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 120, log.read_text()
            time.sleep(0.5)
        pids = list(state()["verdicts"])
        assert {str(w.pid) for w in shapes.values()} <= set(pids), (pids, log.read_text())
        def rule_of(pid: str) -> tuple[int, str] | None:
            # The rule and the process identity only: a verdict's reason quotes CPU use and page
            # counts that change every pass of a busy process, and a change of wording is not a
            # change of decision (the CI run of session 4 failed on exactly that).
            v = state()["verdicts"].get(pid)
            return None if v is None else (v["start_ticks"], v["rule"])

        compared: dict[str, tuple[str, str]] = {}
        seen: dict[str, list] = {}
        for pid in pids:
            for _ in range(5):
                before = rule_of(pid)
                seen.setdefault(pid, []).append(before)
                if before is None:
                    break  # gone, or no longer detailed
                out = subprocess.run([*AUTONUMAD, "explain", pid, "--json", "--runtime-dir", str(tmp_path / "run")],
                                     capture_output=True, text=True, cwd=REPO, timeout=120)
                if out.returncode != 0:
                    assert not Path(f"/proc/{pid}").exists(), out.stderr
                    break  # the process ended
                doc = json.loads(out.stdout)
                assert doc["config"]["source"] == f"the running daemon (pid {daemon.pid})", doc["config"]
                after = rule_of(pid)
                seen[pid].append(after)
                if after == before:
                    compared[pid] = (before[1], doc["rule"])
                    break
        print({pid: rules for pid, rules in compared.items()})
        unsettled = {name: seen.get(str(w.pid)) for name, w in shapes.items() if str(w.pid) not in compared}
        assert not unsettled, f"a workload's rule never held still across one explain: {unsettled}\n{log.read_text()}"
        disagree = {pid: r for pid, r in compared.items() if r[0] != r[1]}
        assert not disagree, f"(daemon, explain) rules differ: {disagree}\n{log.read_text()}"
        rules = {name: compared[str(w.pid)][0] for name, w in shapes.items()}
        # The shapes do reach different rules (a check that every process says "in-place" proves little).
        assert rules["membind"] == rules["interleave"] == "explicit-memory-policy", rules
        assert rules["excluded"] == "excluded-comm" and rules["misplaced-pinned"] == "memory-follows-task", rules
        assert rules["unpinned-spread"] == "idle", rules
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()


# -- workload shapes the project's own benchmarks do not make -----------------------------------

def node_meminfo_mib(node: int, field: str) -> float:
    return node_meminfo_bytes(node, field) / 2**20


def oom_kills() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def run_daemon(cfg: Path, log: Path, cpus: set[int] | None = None) -> subprocess.Popen:
    """`autonumad run --config CFG`, its log in LOG; on `cpus` only when given."""
    with open(log, "w") as logf:
        return subprocess.Popen([*AUTONUMAD, "run", "--config", str(cfg)], stderr=logf, cwd=REPO,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def stop_daemon(daemon: subprocess.Popen, log: Path) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, log.read_text()


def converge_and_read(cfg: Path, log: Path, w: Workload, node: int, read):
    """Run the daemon until `w` is 95 % local on `node` (within 120 s), let it run a few more passes
    (interval_s = 1), return `read()` taken while it still runs, and stop it (exit status 0)."""
    daemon = run_daemon(cfg, log)
    try:
        t0 = time.monotonic()
        while w.local_fraction(node) < 0.95:
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 120, log.read_text()
            time.sleep(0.5)
        time.sleep(4)
        return read()
    finally:
        stop_daemon(daemon, log)


def test_a_process_larger_than_a_node_is_left_spread_and_the_pass_goes_on(tmp_path, cfg, workloads):
    """A process larger than any node, its memory over both, running on node 0 (its owner's pin),
    beside a small misplaced one. Chasing the big one's memory into node 0 cannot succeed and would
    push node 0 into reclaim: the daemon leaves it spread (rule too-large: no page moved, no pin, no
    OOM kill) and converges the small one in the same passes."""
    small = workload("--mib", "48", "--node", "0", "--cpunode", "1")
    workloads.append(small)
    drop_caches()
    big_mib = int(node_meminfo_mib(0, "MemTotal") * 1.02)
    big = workload("--mib", str(big_mib), "--cpunode", "0", "--touch-interval-s", "2", "--no-thp")
    workloads.append(big)
    spread = big.nodes()
    assert spread.get(1, 0) > 0 and spread.get(0, 0) > 0, spread  # the first touch spilled over
    ooms, log = oom_kills(), tmp_path / "daemon.log"
    after = converge_and_read(cfg, log, small, 1, big.nodes)
    text = log.read_text()
    assert big.proc.poll() is None and oom_kills() == ooms, text
    # No page of it moved (pages never move on their own here: the kernel's balancing is off).
    assert after == spread, (spread, after, text[-3000:])
    assert f"pid {big.pid} (python) left alone: too-large" in text, text[-3000:]
    assert f"migrate pid {big.pid} " not in text and f"set affinity pid {big.pid} " not in text, text[-3000:]


def test_a_misplaced_process_whose_home_is_nearly_full_moves_only_down_to_the_headroom(tmp_path, cfg, workloads):
    """Node 0 nearly full (another process's memory, bound there by its owner), and a 256 MiB
    process on node 1 running on node 0. The daemon moves what fits above node 0's headroom
    (balance.node_headroom_fraction, 5 %) and stops there, saying so; node 0 never runs dry.
    (The daemon runs on node 1's CPUs, so its own memory does not land on node 0.)"""
    drop_caches()
    headroom_mib = node_meminfo_mib(0, "MemTotal") * 0.05
    room_mib = 128  # above the headroom, once the filler is in
    fill_mib = int(node_meminfo_mib(0, "MemFree") - headroom_mib - room_mib)
    filler = workload("--mib", str(fill_mib), "--node", "0", "--keep-policy", "--touch-interval-s", "5")
    workloads.append(filler)
    misplaced = workload("--mib", "256", "--node", "1", "--cpunode", "0", "--touch-interval-s", "1")
    workloads.append(misplaced)
    ooms, log = oom_kills(), tmp_path / "daemon.log"
    lowest_free = node_meminfo_mib(0, "MemFree")
    daemon = run_daemon(cfg, log, cpus=node_cpus(1))
    try:
        t0, limited_at = time.monotonic(), None
        while limited_at is None or time.monotonic() - limited_at < 8:  # a few passes after the first move
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 120, log.read_text()
            lowest_free = min(lowest_free, node_meminfo_mib(0, "MemFree"))
            if limited_at is None and "limited by node 0's headroom" in log.read_text():
                limited_at = time.monotonic()
            time.sleep(0.25)
        local = misplaced.local_fraction(0)
    finally:
        stop_daemon(daemon, log)
    text = log.read_text()
    assert filler.proc.poll() is None and misplaced.proc.poll() is None and oom_kills() == ooms, text
    assert f"migrate pid {misplaced.pid} " in text, text[-3000:]
    # It moved some, not all: the rest did not fit above the headroom.
    assert 0.05 < local < 0.9, (local, text[-3000:])
    # Never below half the headroom (the kernel's own reclaim and the test's reads take some of it).
    assert lowest_free > headroom_mib / 2, (lowest_free, headroom_mib, text[-3000:])
    print(f"moved {local:.0%} of 256 MiB; node 0 free never below {lowest_free:.0f} MiB "
          f"(headroom {headroom_mib:.0f} MiB); target-full said: {'target-full' in text}")


class Cpuset:
    """A cpuset cgroup in whichever hierarchy the guest mounted: v2 (/sys/fs/cgroup, the cpuset
    controller enabled for the root's children) or v1 (/sys/fs/cgroup/cpuset). Processes are put
    back in the root cgroup and the group removed at exit."""

    V1 = Path("/sys/fs/cgroup/cpuset")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self, name: str, cpus: set[int], mems: set[int]):
        self.name, self.cpus, self.mems = name, cpus, mems
        if (self.V2 / "cgroup.controllers").exists():
            if "cpuset" not in (self.V2 / "cgroup.controllers").read_text().split():
                pytest.skip("cgroup v2 without the cpuset controller")
            self.root = self.V2
        elif (self.V1 / "cpuset.cpus").exists():
            self.root = self.V1
        else:
            pytest.skip("no cpuset hierarchy mounted")
        self.path = self.root / name
        self.enabled = False

    def __enter__(self) -> "Cpuset":
        if self.root == self.V2 and "cpuset" not in (self.root / "cgroup.subtree_control").read_text().split():
            (self.root / "cgroup.subtree_control").write_text("+cpuset")
            self.enabled = True
        self.path.mkdir()
        (self.path / "cpuset.cpus").write_text(",".join(map(str, sorted(self.cpus))))
        (self.path / "cpuset.mems").write_text(",".join(map(str, sorted(self.mems))))
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc) -> None:
        if self.path.exists():
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    (self.root / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # already exited
            self.path.rmdir()
        if self.enabled:
            (self.root / "cgroup.subtree_control").write_text("-cpuset")


@pytest.mark.every_guest  # the cgroup v1 guest is the one that matters here
def test_processes_in_cpusets_are_balanced_inside_them(tmp_path, cfg, workloads):
    """Two processes with their memory on node 0, each put in a cpuset that runs it on node 1:
    one whose cpuset allows both nodes' memory (its memory follows it to node 1), one whose cpuset
    allows only node 0's memory (the daemon says so and moves nothing). The daemon reads the
    cpuset from /proc/PID/cgroup and the hierarchy the host mounted, v1 or v2 (act/affinity.py
    `cpuset_cpus`), and the memory it may use from Mems_allowed_list."""
    node1 = node_cpus(1)
    with Cpuset("autonumad-both", node1, {0, 1}) as both, Cpuset("autonumad-mem0", node1, {0}) as mem0:
        free = workload("--mib", "48", "--node", "0")
        held = workload("--mib", "48", "--node", "0")
        workloads += [free, held]
        both.add(free.pid)
        mem0.add(held.pid)
        for w in (free, held):
            allowed = Path(f"/proc/{w.pid}/status").read_text()
            assert f"Cpus_allowed_list:\t{format_list(node1)}" in allowed, allowed
        before = held.nodes()
        assert free.local_fraction(1) < 0.05 and before.get(0, 0) == sum(before.values())
        log = tmp_path / "daemon.log"
        after = converge_and_read(cfg, log, free, 1, held.nodes)
    text = log.read_text()
    assert f"migrate pid {free.pid} " in text, text[-3000:]
    assert after == before, (before, after, text[-3000:])
    assert f"pid {held.pid} (python) left alone: home-not-allowed" in text, text[-3000:]
    assert f"migrate pid {held.pid} " not in text and f"set affinity pid {held.pid} " not in text, text[-3000:]

