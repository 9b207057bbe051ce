"""Property tests for a whole pass: snapshot -> decide -> executor on generated fake hosts (issue 10).

Hypothesis builds hosts the project was not developed on: 2 to 4 nodes
with sparse ids (0, 3, 7, ...), memory-only nodes (CXL-like, no CPUs), and
processes whose files are malformed, truncated, or gone between listing
and reading. For every such host one daemon pass must:

* raise nothing (a bad process is a skipped process, never a failed pass);
* act only on processes of its own snapshot, by pid *and* start time;
* move no more than each action's own byte budget, and in all no more
  than the token bucket allows over the pass (rate x pass window + burst).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from autonumad.readers.lists import format_list, parse_list
from autonumad.service.daemon import Daemon
from autonumad.sim.demo import demo_config
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

MiB = 2**20
PAGE = 4096
CORRUPTIONS = ("none", "none", "none", "gone-numa_maps", "gone-stat", "gone-status", "gone-dir",
               "garbage-numa_maps", "truncated-numa_maps", "garbage-stat", "numa_maps-dir", "empty-cgroup",
               "huge-count")


@st.composite
def hosts(draw):
    n = draw(st.integers(2, 4))
    ids = sorted(draw(st.sets(st.integers(0, 9), min_size=n, max_size=n)))
    # At least one node with CPUs; the others may be memory-only.
    with_cpus = [True] + [draw(st.booleans()) for _ in range(n - 1)]
    nodes, cpu = [], 0
    for i in range(n):
        ncpu = 2 if with_cpus[i] else 0
        cpus = tuple(range(cpu, cpu + ncpu))
        cpu += ncpu
        total = draw(st.integers(256, 2048)) * MiB
        free = total * draw(st.integers(5, 90)) // 100
        nodes.append(NodeSpec(cpus, total, free, tuple(10 if j == i else 20 + 5 * abs(i - j) for j in range(n))))
    all_cpus = [c for nd in nodes for c in nd.cpus]
    procs, corruptions = [], {}
    for k in range(draw(st.integers(1, 6))):
        pid = 1000 + 10 * k
        vmas = tuple(VmaSpec(0x7f0000000000 + v * 2**30, {i: draw(st.integers(0, 4096)) for i in range(n)
                                                             if draw(st.booleans())} or {0: 1})
                     for v in range(draw(st.integers(1, 3))))
        pinned = draw(st.booleans())
        cpus = tuple(nodes[draw(st.sampled_from([i for i in range(n) if nodes[i].cpus]))].cpus) if pinned else None
        threads = tuple(ThreadSpec(pid + t, draw(st.sampled_from((cpus or all_cpus))), 1000, 100)
                        for t in range(draw(st.integers(1, 3))))
        procs.append(ProcessSpec(pid, f"app{k}", threads, vmas, cpus_allowed=cpus))
        corruptions[pid] = draw(st.sampled_from(CORRUPTIONS))
    return HostSpec(nodes=tuple(nodes), processes=tuple(procs)), ids, corruptions


def renumber(root: Path, ids: list[int]) -> None:
    """Give the nodes 0..n-1 of a built tree the sparse ids `ids` (an ascending list), everywhere they appear."""
    m = dict(enumerate(ids))
    nd = root / "sys/devices/system/node"
    for name in ("online", "possible", "has_cpu", "has_memory", "has_normal_memory"):
        p = nd / name
        p.write_text(format_list(m[i] for i in parse_list(p.read_text())) + "\n")
    for i in sorted(m, reverse=True):
        (nd / f"node{i}").rename(nd / f"node{m[i]}.new")
    for i in m:
        d = nd / f"node{m[i]}"
        (nd / f"node{m[i]}.new").rename(d)
        (d / "meminfo").write_text(re.sub(r"^Node \d+", f"Node {m[i]}", (d / "meminfo").read_text(), flags=re.M))
    zi = root / "proc/zoneinfo"
    zi.write_text(re.sub(r"^Node (\d+),", lambda x: f"Node {m[int(x.group(1))]},", zi.read_text(), flags=re.M))
    for p in (root / "proc").glob("[0-9]*/numa_maps"):
        p.write_text(re.sub(r"\bN(\d+)=", lambda x: f"N{m[int(x.group(1))]}=", p.read_text()))
    for p in list((root / "proc").glob("[0-9]*/status")) + list((root / "proc").glob("[0-9]*/task/*/status")):
        p.write_text(re.sub(r"^(Mems_allowed_list:\s*)(\S*)",
                            lambda x: x.group(1) + format_list(m[i] for i in parse_list(x.group(2))),
                            p.read_text(), flags=re.M))


def corrupt(root: Path, pid: int, how: str) -> None:
    d = root / f"proc/{pid}"
    if how == "none":
        return
    if how == "gone-dir":
        shutil.rmtree(d)
    elif how.startswith("gone-"):
        (d / how[5:]).unlink()
    elif how == "garbage-numa_maps":
        (d / "numa_maps").write_text("zzz not numa_maps\n")
    elif how == "truncated-numa_maps":
        text = (d / "numa_maps").read_text()
        (d / "numa_maps").write_text(text[: len(text) // 2])
    elif how == "garbage-stat":
        for p in [d / "stat", *d.glob("task/*/stat")]:
            p.write_text("1 (x) R garbage\n")
    elif how == "numa_maps-dir":
        (d / "numa_maps").unlink()
        (d / "numa_maps").mkdir()
    elif how == "empty-cgroup":
        (d / "cgroup").write_text("")
    elif how == "huge-count":
        (d / "numa_maps").write_text(re.sub(r"N(\d+)=\d+", r"N\1=" + "9" * 300, (d / "numa_maps").read_text(), 1))


@settings(max_examples=40)
@given(hosts())
def test_a_pass_on_any_generated_host(generated):
    spec, ids, corruptions = generated
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "host"
        host = build_host(root, spec)
        renumber(root, ids)
        for pid, how in corruptions.items():
            corrupt(root, pid, how)
        c = demo_config(Path(tmp) / "run", 1.0)
        c = replace(c, balance=replace(c.balance, min_rss_bytes=0, min_cpu_fraction=0.0, cooldown_s=0.0))
        d = Daemon(host, c, manage_knobs=False)
        report = d.run_pass()  # no exception escapes
        event(f"actions: {'some' if report.outcomes else 'none'}; skipped: {len(report.snapshot.skipped) > 0}")
        seen = {(p.pid, p.start_ticks) for p in report.snapshot.processes}
        for o in report.outcomes + report.tiering_outcomes:
            a = o.action
            assert (a.pid, a.start_ticks) in seen, (a, seen)
            if a.kind == "migrate":
                assert o.moved_bytes <= a.bytes + 2 * MiB, (o.moved_bytes, a.bytes)  # one THP of slack
        rate = c.balance.migrate_rate_mib_s * MiB
        window_s = max(0.5, d.interval_s * 0.8)
        moved = sum(o.moved_bytes for o in report.outcomes + report.tiering_outcomes)
        assert moved <= rate * window_s + rate, moved
        # Processes that vanished or were malformed are skipped, the others read.
        for pid, how in corruptions.items():
            if how in ("gone-dir", "gone-status", "garbage-numa_maps", "numa_maps-dir", "huge-count",
                       "garbage-stat"):
                assert report.snapshot.process(pid) is None, (pid, how)
            elif how in ("none", "empty-cgroup"):
                assert report.snapshot.process(pid) is not None, (pid, how, report.snapshot.skipped)
