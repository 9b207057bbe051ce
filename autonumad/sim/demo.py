"""A simulated two-socket + CXL host whose processes drift, for the demo.

`autonumad demo` writes this host as a fake tree, runs the real daemon on
it (the same snapshot -> decide -> executor code as on a real machine; the
fake host's actuators rewrite the tree), and between passes makes the
workloads drift the way real ones do: a thread wanders to the other socket,
a pinned database allocates on the wrong node. The live view shows each
process's locality converging pass by pass.

The host: two sockets of 8 CPUs and 32 GiB each (SLIT 10/21) and a 64 GiB
CPU-less CXL expander (distance 24) that the kernel puts in a slower
memory tier (memory_tier4 holds DRAM, abstract distance 576 >> 7 = 4, as
in mm/memory-tiers.c; the CXL tier id is what HMAT-derived distances gave
in the tiered VM).
"""

from __future__ import annotations

import random
from pathlib import Path

from autonumad.model import DEFAULT_PAGE_BYTES
from autonumad.sim.fakehost import (FakeHost, HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host,
                                numa_maps_line)

GiB = 2**30
MiB = 2**20
PAGE = DEFAULT_PAGE_BYTES

NODE0_CPUS = tuple(range(0, 8))
NODE1_CPUS = tuple(range(8, 16))


def _pages(n_bytes: int) -> int:
    return n_bytes // PAGE


def _threads(pid: int, cpus, n: int, busy_ticks: int = 5000) -> tuple[ThreadSpec, ...]:
    return tuple(ThreadSpec(pid + i, cpus[i % len(cpus)], utime_ticks=busy_ticks) for i in range(n))


def demo_spec() -> HostSpec:
    nodes = (
        NodeSpec(NODE0_CPUS, 32 * GiB, 20 * GiB, (10, 21, 24)),
        NodeSpec(NODE1_CPUS, 32 * GiB, 22 * GiB, (21, 10, 24)),
        NodeSpec((), 64 * GiB, 60 * GiB, (24, 24, 10)),
    )
    base = 0x7f0000000000
    procs = (
        # A database pinned by its owner to socket 0 whose buffer pool was
        # allocated while it still ran on socket 1: memory follows task.
        ProcessSpec(1001, "postgres", _threads(1001, NODE0_CPUS, 4), cpus_allowed=NODE0_CPUS,
                    cgroup="/system.slice/postgresql.service",
                    vmas=(VmaSpec(base, {0: _pages(1 * GiB), 1: _pages(2 * GiB)}),
                          VmaSpec(base + 8 * GiB, {0: _pages(64 * MiB)}, kind="heap"))),
        # An unpinned JVM whose heap sits on socket 0 while the scheduler put
        # its threads on socket 1: task follows memory.
        ProcessSpec(2001, "java", _threads(2001, NODE1_CPUS, 6), cgroup="/system.slice/app.service",
                    vmas=(VmaSpec(base, {0: _pages(3 * GiB), 1: _pages(128 * MiB)}),)),
        # Already local: nothing to do until it drifts.
        ProcessSpec(3001, "redis-server", _threads(3001, NODE0_CPUS[2:], 2), cgroup="/system.slice/redis.service",
                    vmas=(VmaSpec(base, {0: _pages(2 * GiB)}),)),
        # Interleaved on purpose (numactl --interleave): the owner's decision.
        ProcessSpec(4001, "mysqld", _threads(4001, NODE1_CPUS, 4), cgroup="/system.slice/mysql.service",
                    vmas=(VmaSpec(base, {0: _pages(1 * GiB), 1: _pages(1 * GiB)}, policy="interleave:0-1"),)),
        # Excluded by the demo config's exclude_comm.
        ProcessSpec(5001, "backup-agent", _threads(5001, NODE1_CPUS, 1), cgroup="/system.slice/backup.service",
                    vmas=(VmaSpec(base, {0: _pages(512 * MiB)}),)),
        # Too large for any one socket: left spread.
        ProcessSpec(6001, "spark-executor", _threads(6001, NODE0_CPUS + NODE1_CPUS, 8),
                    cgroup="/kubepods.slice/pod-spark", vmas=(VmaSpec(base, {0: _pages(12 * GiB), 1: _pages(10 * GiB),
                                                                             2: _pages(14 * GiB)}),)),
    )
    small = tuple(ProcessSpec(10000 + i, f"worker-{i}", _threads(10000 + i * 10, NODE0_CPUS, 1, 10),
                              vmas=(VmaSpec(base, {i % 2: _pages(8 * MiB)}),)) for i in range(40))
    kthreads = tuple(ProcessSpec(2 + i, f"kworker/{i}:0", (ThreadSpec(2 + i, i % 16),), kernel_thread=True)
                     for i in range(20))
    knobs = dict(HostSpec(nodes=()).knobs)
    # The recommended set-up: the daemon balances, the kernel's NUMA balancing is off.
    knobs["/proc/sys/kernel/numa_balancing"] = "0"
    return HostSpec(nodes=nodes, processes=procs + small + kthreads, tiers={4: (0, 1), 22: (2,)}, knobs=knobs,
                    cpu_busy_ticks={c: 20000 for c in NODE1_CPUS})


def build_demo_host(root: str | Path) -> FakeHost:
    return build_host(root, demo_spec())


DEMO_NAMES = {1001: "postgres", 2001: "java", 3001: "redis-server", 4001: "mysqld",
              5001: "backup-agent", 6001: "spark-executor"}


def drift(host: FakeHost, pass_number: int, rng: random.Random) -> list[str]:
    """Make the workloads drift the way real ones do; returns what happened."""
    events = []
    # The workloads are busy: their threads accumulate CPU time each pass
    # (the policy leaves idle processes alone, see balance.min_cpu_fraction).
    for pid in DEMO_NAMES:
        for tid in host.tids(pid):
            _add_cpu_ticks(host, pid, tid, 100)
    if pass_number == 4:
        # redis's threads wander to socket 1 (the scheduler balanced them away).
        for tid in host.tids(3001):
            _set_processor(host, 3001, tid, NODE1_CPUS[tid % len(NODE1_CPUS)])
        events.append("redis-server's threads moved to node 1 (scheduler load balancing)")
    if pass_number in (6, 9):
        # postgres (pinned to node 0) grows a new buffer that lands on node 1.
        _grow(host, 1001, 0x7f0000000000 + 16 * GiB * pass_number, {1: _pages(512 * MiB)})
        events.append("postgres allocated 512 MiB that landed on node 1")
    return events


def _add_cpu_ticks(host: FakeHost, pid: int, tid: int, ticks: int) -> None:
    from autonumad.sim.fakehost import _join_stat, _split_stat

    for p in (host.path(f"/proc/{pid}/task/{tid}/stat"),) + ((host.path(f"/proc/{pid}/stat"),) if tid == pid else ()):
        f = _split_stat(p.read_text())
        f[13] = str(int(f[13]) + ticks)  # utime, field 14 of proc(5)
        p.write_text(_join_stat(f))


def _set_processor(host: FakeHost, pid: int, tid: int, cpu: int) -> None:
    from autonumad.sim.fakehost import STAT_PROCESSOR, _join_stat, _split_stat

    p = host.path(f"/proc/{pid}/task/{tid}/stat")
    f = _split_stat(p.read_text())
    f[STAT_PROCESSOR] = str(cpu)
    p.write_text(_join_stat(f))


def _grow(host: FakeHost, pid: int, start: int, pages_by_node: dict[int, int]) -> None:
    v = VmaSpec(start, pages_by_node)
    nm = host.path(f"/proc/{pid}/numa_maps")
    nm.write_text(nm.read_text() + numa_maps_line(v) + "\n")
    mp = host.path(f"/proc/{pid}/maps")
    size = sum(pages_by_node.values()) * PAGE
    mp.write_text(mp.read_text() + f"{start:x}-{start + size:x} rw-p 00000000 00:00 0\n")
    for node, pages in pages_by_node.items():
        host._adjust_node_free(node, -pages * PAGE)
    # Resident memory grows too.
    st = host.path(f"/proc/{pid}/status")
    import re

    text = st.read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    if m:
        new_kb = int(m.group(1)) + size // 1024
        st.write_text(text.replace(m.group(0), f"VmRSS:\t{new_kb} kB"))


def demo_config(runtime_dir: Path, interval_s: float):
    """The daemon's defaults, with the demo's exclusions and a quick pace, compiled as a file would be."""
    from autonumad.service.config import compile_config

    return compile_config({
        "daemon": {"interval_s": interval_s, "runtime_dir": str(runtime_dir)},
        "balance": {"exclude_comm": ["^backup"], "cooldown_s": interval_s * 2.5, "min_rss_bytes": 64 * MiB,
                    # A quick pace: the simulated postgres (2 GiB remote) moves in one pass.
                    "migrate_rate_mib_s": 2048.0, "pass_budget_mib": 4096},
    })
