"""Fake hosts: directory trees with the layout of /proc and /sys.

Two halves:

* `FakeHost`, the Host whose actuators rewrite the tree consistently, so the
  shared readers see the effect of each action on the next pass: a page move
  changes the `N<node>=` counts on that VMA's numa_maps line and the free
  memory of both nodes; an affinity change rewrites the thread's
  `Cpus_allowed_list` and moves its `processor` field onto an allowed CPU
  (a stand-in for the scheduler); a knob write is a file write.

* `build_host()` and the `*Spec` dataclasses, which write a tree from a
  short description. Tests use it for small inline cases, the demo for the
  simulated two-socket + CXL host, and scripts/bench-scan for a host of
  thousands of processes. Trees captured from real kernels by
  scripts/capture-host (tests/data/hosts/) are read by the same FakeHost.

Only what the readers consume is written, in the kernel's own formats
(see each reader module for the format and its kernel source).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from autonumad.errors import ProcessGone
from autonumad.host import Host
from autonumad.model import DEFAULT_PAGE_BYTES, MoveResult
from autonumad.readers.proc_maps import parse_maps
from autonumad.readers.lists import format_list, parse_list

BASE_PAGE_BYTES = DEFAULT_PAGE_BYTES
# A process's virtual size is its resident memory plus this much mapped but untouched.
_MAPPED_NOT_RESIDENT_KB = 4 * 1024
_NODE_TOKEN = re.compile(r"^N(\d+)=(\d+)$")


class FakeHost(Host):
    """A host tree on disk whose actuators rewrite the tree."""

    def __repr__(self) -> str:
        return f"fake host {self.root}"

    # Nothing is read or written outside the tree through a symlink (issue 10;
    # service/runtime.py inside_root). Every read and actuator builds its path here.
    def path(self, host_path: str) -> Path:
        from autonumad.service.runtime import inside_root

        return Path(inside_root(self._root_real, str(super().path(host_path))))

    def _fs_path(self, host_path: str) -> str:
        from autonumad.service.runtime import inside_root

        return inside_root(self._root_real, super()._fs_path(host_path))

    @property
    def _root_real(self) -> str:
        cached = self.__dict__.get("_root_real_cache")
        if cached is None:
            cached = self.__dict__["_root_real_cache"] = os.path.realpath(self.root)
        return cached

    def exists(self, host_path: str) -> bool:
        try:
            return super().exists(host_path)
        except PermissionError:
            return False

    def listdir(self, host_path: str) -> list[str]:
        try:
            return super().listdir(host_path)
        except PermissionError:
            return []

    # -- knobs -----------------------------------------------------------------
    def write_text(self, host_path: str, value: str) -> None:
        p = self.path(host_path)
        if not p.exists():
            # Writing a knob the kernel does not have fails like the real one.
            raise FileNotFoundError(errno.ENOENT, "no such knob", str(host_path))
        p.write_text(value if value.endswith("\n") else value + "\n")

    # -- affinity --------------------------------------------------------------
    def _task_dir(self, tid: int) -> Path:
        # Linux resolves /proc/<tid> for any thread id; in a fake tree a thread
        # lives only under its process's task/ directory.
        direct = self.path(f"/proc/{tid}/task/{tid}")
        if direct.is_dir():
            return direct
        for pid in self.pids():
            d = self.path(f"/proc/{pid}/task/{tid}")
            if d.is_dir():
                return d
        raise ProcessGone(tid, f"/proc/{tid}")

    def thread_affinity(self, tid: int) -> frozenset[int]:
        text = (self._task_dir(tid) / "status").read_text()
        m = re.search(r"^Cpus_allowed_list:\s*(\S*)", text, re.M)
        return frozenset(parse_list(m.group(1) if m else ""))

    def set_thread_affinity(self, tid: int, cpus: Iterable[int]) -> None:
        cpus = sorted(set(cpus))
        if not cpus:
            raise OSError(errno.EINVAL, "empty CPU set")
        d = self._task_dir(tid)
        _set_status_field(d / "status", "Cpus_allowed_list", format_list(cpus))
        stat_path = d / "stat"
        fields = _split_stat(stat_path.read_text())
        if int(fields[STAT_PROCESSOR]) not in cpus:
            fields[STAT_PROCESSOR] = str(cpus[0])
            stat_path.write_text(_join_stat(fields))
        # The thread-group leader's /proc/<pid>/status mirrors its main thread.
        pid = int(d.parent.parent.name)
        if pid == tid:
            _set_status_field(d.parent.parent / "status", "Cpus_allowed_list", format_list(cpus))

    # -- page moves ------------------------------------------------------------
    def move_pages(self, pid: int, start: int, end: int, page_size: int,
                   target_node: int, max_pages: int | None = None) -> MoveResult:
        """Move up to (end - start) / page_size pages of the VMA at `start`.

        numa_maps knows counts per VMA, not addresses, so a range move takes
        pages from the other nodes in node order. The target's free memory
        bounds the move: what does not fit fails with ENOMEM, as
        move_pages(2) reports for a full node.
        """
        maps_path = self.path(f"/proc/{pid}/numa_maps")
        try:
            lines = maps_path.read_text().splitlines()
        except FileNotFoundError:
            return MoveResult(page_size=page_size, gone=True)
        free_bytes = self._node_free_bytes(target_node)
        if free_bytes is None:
            raise OSError(errno.ENODEV, "no such node", str(target_node))
        room_pages = free_bytes // page_size
        want = max(0, (end - start) // page_size)
        if max_pages is not None:
            want = min(want, max_pages)
        moved_from: dict[int, int] = {}
        already = failed_nomem = 0
        # The VMA containing `start`: the line with the greatest start <= it.
        starts = [(int(line.split(maxsplit=1)[0], 16), i) for i, line in enumerate(lines) if line.strip()]
        owner = max(((s, i) for s, i in starts if s <= start), default=None)
        for i, line in enumerate(lines):
            tokens = line.split()
            if owner is None or i != owner[1]:
                continue
            counts = {int(m.group(1)): int(m.group(2)) for t in tokens if (m := _NODE_TOKEN.match(t))}
            already = counts.get(target_node, 0)
            for node in sorted(counts):
                if node == target_node or want <= 0:
                    continue
                take = min(counts[node], want)
                fit = min(take, room_pages)
                failed_nomem += take - fit
                if fit:
                    counts[node] -= fit
                    counts[target_node] = counts.get(target_node, 0) + fit
                    moved_from[node] = fit
                    room_pages -= fit
                want -= take
            kept = [t for t in tokens if not _NODE_TOKEN.match(t)]
            node_tokens = [f"N{n}={c}" for n, c in sorted(counts.items()) if c]
            # numa_maps prints N<node>= before kernelpagesize_kB.
            ksz = [t for t in kept if t.startswith("kernelpagesize_kB=")]
            rest = [t for t in kept if not t.startswith("kernelpagesize_kB=")]
            lines[i] = " ".join(rest + node_tokens + ksz)
            break
        moved = sum(moved_from.values())
        if moved:
            maps_path.write_text("\n".join(lines) + "\n")
            for node, pages in moved_from.items():
                self._adjust_node_free(node, pages * page_size)
            self._adjust_node_free(target_node, -moved * page_size)
        failed = {"ENOMEM": failed_nomem} if failed_nomem else {}
        return MoveResult(requested=moved + failed_nomem, moved=moved, already=already,
                          failed=failed, moved_from=moved_from, page_size=page_size)

    def range_nodes(self, pid: int, ranges: list[tuple[int, int]], max_pages: int) -> list[dict[int, int]]:
        """Bytes per node of each range, the tree's model of move_pages(2)'s query.

        numa_maps gives each VMA's pages per node and /proc/<pid>/maps its
        end; the fake's pages lie evenly over their VMA, so a range holds
        each node's share of the VMAs it overlaps. `max_pages` does not
        apply: the answer costs no per-page work here.
        """
        nm = self.read_proc_text(pid, "numa_maps").splitlines()
        maps = self.read_text_or_none(f"/proc/{pid}/maps")  # a captured tree may lack it
        ends = {m.start: m.end for m in parse_maps(maps)} if maps else {}
        vmas = []
        for line in nm:
            tokens = line.split()
            if not tokens:
                continue
            start = int(tokens[0], 16)
            psz = next((int(t.split("=")[1]) * 1024 for t in tokens if t.startswith("kernelpagesize_kB=")),
                       self.page_size_bytes)
            counts = {int(m.group(1)): int(m.group(2)) * psz for t in tokens if (m := _NODE_TOKEN.match(t))}
            vmas.append((start, ends.get(start, start + max(psz, sum(counts.values()))), counts))
        # Without maps, a VMA ends at the next one's start at the latest.
        vmas = [(v0, min(v1, vmas[i + 1][0]) if i + 1 < len(vmas) and v0 not in ends else v1, c)
                for i, (v0, v1, c) in enumerate(vmas)]
        out = []
        for r0, r1 in ranges:
            by_node: dict[int, int] = {}
            for v0, v1, counts in vmas:
                overlap = min(r1, v1) - max(r0, v0)
                if overlap <= 0 or v1 <= v0:
                    continue
                for node, b in counts.items():
                    by_node[node] = by_node.get(node, 0) + b * overlap // (v1 - v0)
            out.append({n: b for n, b in by_node.items() if b})
        return out

    def _meminfo_path(self, node: int) -> Path:
        return self.path(f"/sys/devices/system/node/node{node}/meminfo")

    def _node_free_bytes(self, node: int) -> int | None:
        p = self._meminfo_path(node)
        if not p.exists():
            return None
        m = re.search(r"MemFree:\s+(\d+) kB", p.read_text())
        return int(m.group(1)) * 1024 if m else 0

    def _adjust_node_free(self, node: int, delta_bytes: int) -> None:
        p = self._meminfo_path(node)
        text = p.read_text()

        def repl(field_name: str, sign: int):
            def f(m: re.Match[str]) -> str:
                kb = max(0, int(m.group(2)) + sign * delta_bytes // 1024)
                return f"{m.group(1)}{kb:>8} kB"
            return re.compile(rf"^(Node {node} {field_name}:\s+?)\s*(\d+) kB", re.M), f

        for name, sign in (("MemFree", 1), ("MemUsed", -1)):
            pat, f = repl(name, sign)
            text = pat.sub(f, text)
        p.write_text(text)


# ---------------------------------------------------------------------------
# /proc/<pid>/stat helpers (proc(5)): fields after the comm in parentheses.
STAT_PROCESSOR = 38  # 0-based index of field 39, "processor"


def _split_stat(text: str) -> list[str]:
    head, _, tail = text.rstrip("\n").rpartition(")")
    pid, _, comm = head.partition(" (")
    return [pid, comm] + tail.split()


def _join_stat(fields: Sequence[str]) -> str:
    return f"{fields[0]} ({fields[1]}) " + " ".join(fields[2:]) + "\n"


def _set_status_field(path: Path, name: str, value: str) -> None:
    text = path.read_text()
    new, n = re.subn(rf"^{name}:.*$", f"{name}:\t{value}", text, flags=re.M)
    if n == 0:
        new = text.rstrip("\n") + f"\n{name}:\t{value}\n"
    path.write_text(new)


# ---------------------------------------------------------------------------
# Building trees


@dataclass(frozen=True)
class NodeSpec:
    cpus: tuple[int, ...]
    memory_total_bytes: int
    memory_free_bytes: int
    distances: tuple[int, ...]  # SLIT row, one entry per node in order


@dataclass(frozen=True)
class VmaSpec:
    start: int
    pages_by_node: Mapping[int, int]  # in this VMA's page units
    size_bytes: int | None = None  # default: exactly the resident pages
    policy: str = "default"  # numa_maps policy text, e.g. "bind:1", "interleave:0-1"
    page_size_bytes: int = BASE_PAGE_BYTES
    kind: str = "anon"  # "anon", "heap", "stack" or a file path
    huge: bool = False  # hugetlbfs mapping


@dataclass(frozen=True)
class ThreadSpec:
    tid: int
    cpu: int  # the CPU it last ran on (stat field 39)
    utime_ticks: int = 0
    stime_ticks: int = 0


@dataclass(frozen=True)
class ProcessSpec:
    pid: int
    comm: str
    threads: tuple[ThreadSpec, ...]
    vmas: tuple[VmaSpec, ...] = ()
    cpus_allowed: tuple[int, ...] | None = None  # default: every CPU
    mems_allowed: tuple[int, ...] | None = None  # default: every node
    cgroup: str = "/user.slice"
    uid: int = 0
    kernel_thread: bool = False

    def rss_bytes(self) -> int:
        return sum(sum(v.pages_by_node.values()) * v.page_size_bytes for v in self.vmas if not v.huge)


@dataclass(frozen=True)
class HostSpec:
    nodes: tuple[NodeSpec, ...]
    processes: tuple[ProcessSpec, ...] = ()
    # memory_tierN id -> nodes; None = no memory_tiering directory (old kernel).
    tiers: Mapping[int, tuple[int, ...]] | None = None
    knobs: Mapping[str, str] = field(default_factory=lambda: {
        "/proc/sys/kernel/numa_balancing": "1",
        "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps": "65536",
        "/sys/kernel/mm/numa/demotion_enabled": "false",
        "/proc/sys/vm/watermark_scale_factor": "10",
        "/proc/sys/vm/zone_reclaim_mode": "0",
        "/sys/kernel/debug/sched/numa_balancing/scan_delay_ms": "1000",
        "/sys/kernel/debug/sched/numa_balancing/scan_period_min_ms": "1000",
        "/sys/kernel/debug/sched/numa_balancing/scan_period_max_ms": "60000",
        "/sys/kernel/debug/sched/numa_balancing/scan_size_mb": "256",
    })
    vmstat: Mapping[str, int] = field(default_factory=dict)
    cpu_busy_ticks: Mapping[int, int] = field(default_factory=dict)


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def build_host(root: str | os.PathLike[str], spec: HostSpec) -> FakeHost:
    """Write `spec` as a host tree under `root` and return a FakeHost on it."""
    root = Path(root)
    n_nodes = len(spec.nodes)
    all_nodes = tuple(range(n_nodes))
    all_cpus = tuple(sorted(c for n in spec.nodes for c in n.cpus))
    nd = "/sys/devices/system/node"
    _write(root, f"{nd}/online", format_list(all_nodes) + "\n")
    _write(root, f"{nd}/possible", format_list(all_nodes) + "\n")
    _write(root, f"{nd}/has_cpu", format_list(i for i, n in enumerate(spec.nodes) if n.cpus) + "\n")
    _write(root, f"{nd}/has_memory", format_list(i for i, n in enumerate(spec.nodes) if n.memory_total_bytes) + "\n")
    _write(root, f"{nd}/has_normal_memory", format_list(i for i, n in enumerate(spec.nodes) if n.memory_total_bytes) + "\n")
    for i, n in enumerate(spec.nodes):
        _write(root, f"{nd}/node{i}/cpulist", format_list(n.cpus) + "\n")
        _write(root, f"{nd}/node{i}/distance", " ".join(map(str, n.distances)) + "\n")
        _write(root, f"{nd}/node{i}/meminfo", _node_meminfo(i, n))
        _write(root, f"{nd}/node{i}/numastat", "".join(
            f"{k} 0\n" for k in ("numa_hit", "numa_miss", "numa_foreign", "interleave_hit", "local_node", "other_node")))
        _write(root, f"{nd}/node{i}/vmstat", "".join(f"{k} {v}\n" for k, v in _node_vmstat(n).items()))
    if spec.tiers is not None:
        for tid, nodes in spec.tiers.items():
            _write(root, f"/sys/devices/virtual/memory_tiering/memory_tier{tid}/nodelist", format_list(nodes) + "\n")
    for path, value in spec.knobs.items():
        _write(root, path, value + "\n")
    vm = {"nr_free_pages": sum(n.memory_free_bytes for n in spec.nodes) // BASE_PAGE_BYTES,
          "numa_hit": 0, "numa_miss": 0, "numa_local": 0, "numa_other": 0,
          "numa_pte_updates": 0, "numa_hint_faults": 0, "numa_hint_faults_local": 0,
          "numa_pages_migrated": 0, "pgpromote_success": 0, "pgpromote_candidate": 0,
          "pgdemote_kswapd": 0, "pgdemote_direct": 0, "pgmigrate_success": 0, "pgmigrate_fail": 0}
    vm.update(spec.vmstat)
    _write(root, "/proc/vmstat", "".join(f"{k} {v}\n" for k, v in vm.items()))
    total = sum(n.memory_total_bytes for n in spec.nodes) // 1024
    free = sum(n.memory_free_bytes for n in spec.nodes) // 1024
    _write(root, "/proc/meminfo", f"MemTotal:       {total} kB\nMemFree:        {free} kB\nMemAvailable:   {free} kB\n")
    _write(root, "/proc/zoneinfo", "".join(_zoneinfo_block(i, n) for i, n in enumerate(spec.nodes)))
    _write(root, "/proc/stat", _proc_stat(all_cpus, spec.cpu_busy_ticks))
    for p in spec.processes:
        write_process(root, p, all_cpus=all_cpus, all_nodes=all_nodes)
    return FakeHost(root)


def _node_meminfo(i: int, n: NodeSpec) -> str:
    total_kb = n.memory_total_bytes // 1024
    free_kb = n.memory_free_bytes // 1024
    rows = [("MemTotal", total_kb), ("MemFree", free_kb), ("MemUsed", total_kb - free_kb),
            ("Active", 0), ("Inactive", 0), ("FilePages", 0), ("AnonPages", total_kb - free_kb)]
    out = [f"Node {i} {k + ':':<15} {v:>8} kB" for k, v in rows]
    out += [f"Node {i} HugePages_Total:     0", f"Node {i} HugePages_Free:      0", f"Node {i} HugePages_Surp:      0"]
    return "\n".join(out) + "\n"


def _node_vmstat(n: NodeSpec) -> dict[str, int]:
    return {"nr_free_pages": n.memory_free_bytes // BASE_PAGE_BYTES, "numa_hit": 0, "numa_miss": 0,
            "numa_pages_migrated": 0, "pgpromote_success": 0, "pgpromote_candidate": 0,
            "pgdemote_kswapd": 0, "pgdemote_direct": 0, "pgmigrate_success": 0, "pgmigrate_fail": 0}


def _zoneinfo_block(i: int, n: NodeSpec) -> str:
    managed = n.memory_total_bytes // BASE_PAGE_BYTES
    free = n.memory_free_bytes // BASE_PAGE_BYTES
    # Watermarks as __setup_per_zone_wmarks sizes them with the default
    # watermark_scale_factor of 10 (0.1 %): gap = managed * 10 / 10000.
    gap = max(1, managed * 10 // 10000)
    wmin = max(32, managed // 1000)
    return (f"Node {i}, zone   Normal\n"
            f"  pages free     {free}\n"
            f"        boost    0\n"
            f"        min      {wmin}\n"
            f"        low      {wmin + gap}\n"
            f"        high     {wmin + 2 * gap}\n"
            f"        promo    {wmin + 3 * gap}\n"
            f"        spanned  {managed}\n"
            f"        present  {managed}\n"
            f"        managed  {managed}\n"
            f"        cma      0\n"
            f"        protection: (0, 0, 0, 0, 0)\n"
            f"      nr_free_pages {free}\n")


def _proc_stat(cpus: Sequence[int], busy: Mapping[int, int]) -> str:
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for c in cpus:
        b = busy.get(c, 0)
        lines.append(f"cpu{c} {b} 0 0 {100000 - b} 0 0 0 0 0 0")
    lines += ["intr 0", "ctxt 0", "btime 0", "processes 0", "procs_running 1", "procs_blocked 0"]
    return "\n".join(lines) + "\n"


def numa_maps_line(v: VmaSpec) -> str:
    """One numa_maps line in show_numa_map()'s token order (fs/proc/task_mmu.c)."""
    toks = [f"{v.start:x}", v.policy]
    if v.kind == "heap":
        toks.append("heap")
    elif v.kind == "stack":
        toks.append("stack")
    elif v.kind != "anon":
        toks.append(f"file={v.kind}")
    if v.huge:
        toks.append("huge")
    pages = sum(v.pages_by_node.values())
    if v.kind in ("anon", "heap", "stack") and pages:
        toks.append(f"anon={pages}")
    if pages:
        toks.append(f"dirty={pages}")
    toks += [f"N{n}={c}" for n, c in sorted(v.pages_by_node.items()) if c]
    toks.append(f"kernelpagesize_kB={v.page_size_bytes // 1024}")
    return " ".join(toks)


def write_process(root: Path, p: ProcessSpec, *, all_cpus: Sequence[int], all_nodes: Sequence[int]) -> None:
    """Write /proc/<pid>/{status,statm,stat,numa_maps,maps,cgroup,task/*} for one process."""
    cpus = p.cpus_allowed if p.cpus_allowed is not None else tuple(all_cpus)
    mems = p.mems_allowed if p.mems_allowed is not None else tuple(all_nodes)
    base = f"/proc/{p.pid}"
    rss_kb = p.rss_bytes() // 1024
    threads = p.threads or (ThreadSpec(p.pid, cpus[0] if cpus else 0),)
    vm_lines = "" if p.kernel_thread else (
        f"VmPeak:\t{rss_kb + _MAPPED_NOT_RESIDENT_KB} kB\nVmSize:\t{rss_kb + _MAPPED_NOT_RESIDENT_KB} kB\nVmRSS:\t{rss_kb} kB\n"
        f"RssAnon:\t{rss_kb} kB\nRssFile:\t0 kB\n")

    def status(tid_cpus: Sequence[int]) -> str:
        return (f"Name:\t{p.comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{p.pid}\nNgid:\t0\n"
                f"Pid:\t{p.pid}\nPPid:\t1\nTracerPid:\t0\n"
                f"Uid:\t{p.uid}\t{p.uid}\t{p.uid}\t{p.uid}\nGid:\t0\t0\t0\t0\n"
                f"{vm_lines}Threads:\t{len(threads)}\n"
                f"Cpus_allowed_list:\t{format_list(tid_cpus)}\n"
                f"Mems_allowed_list:\t{format_list(mems)}\n")

    def stat(tid: int, t: ThreadSpec) -> str:
        # Fields 1-52 of proc(5); only pid, comm, state, ppid, utime, stime,
        # num_threads, starttime and processor carry meaning here.
        f = ["0"] * 52
        f[0], f[1], f[2], f[3] = str(tid), p.comm, "S", "1"
        f[13], f[14] = str(t.utime_ticks), str(t.stime_ticks)
        f[19] = str(len(threads))
        f[21] = "100"
        f[STAT_PROCESSOR] = str(t.cpu)
        return _join_stat(f)

    _write(root, f"{base}/status", status(cpus))
    _write(root, f"{base}/statm", _statm(p, rss_kb))
    total = ThreadSpec(p.pid, threads[0].cpu, sum(t.utime_ticks for t in threads), sum(t.stime_ticks for t in threads))
    _write(root, f"{base}/stat", stat(p.pid, total))
    _write(root, f"{base}/cgroup", f"0::{p.cgroup}\n")
    _write(root, f"{base}/comm", p.comm + "\n")
    if p.kernel_thread:
        _write(root, f"{base}/numa_maps", "")
        _write(root, f"{base}/maps", "")
    else:
        _write(root, f"{base}/numa_maps", "".join(numa_maps_line(v) + "\n" for v in p.vmas))
        _write(root, f"{base}/maps", "".join(_maps_line(v) + "\n" for v in p.vmas))
    for t in threads:
        _write(root, f"{base}/task/{t.tid}/stat", stat(t.tid, t))
        _write(root, f"{base}/task/{t.tid}/status", status(cpus))


def _statm(p: ProcessSpec, rss_kb: int) -> str:
    """/proc/<pid>/statm in base pages, consistent with the VmSize/VmRSS written to status."""
    if p.kernel_thread:
        return "0 0 0 0 0 0 0\n"  # no mm: the kernel prints zeros
    pages = BASE_PAGE_BYTES // 1024
    size, resident = (rss_kb + _MAPPED_NOT_RESIDENT_KB) // pages, rss_kb // pages
    # size resident shared text lib data dt: anonymous memory only, so no
    # shared (file) pages; lib and dt are always 0.
    return f"{size} {resident} 0 1 0 {resident} 0\n"


def _maps_line(v: VmaSpec) -> str:
    size = v.size_bytes if v.size_bytes is not None else max(1, sum(v.pages_by_node.values())) * v.page_size_bytes
    path = {"anon": "", "heap": "[heap]", "stack": "[stack]"}.get(v.kind, v.kind)
    return f"{v.start:x}-{v.start + size:x} rw-p 00000000 00:00 0 {path}".rstrip()
