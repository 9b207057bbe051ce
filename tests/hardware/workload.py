"""A test workload: N MiB first-touched on a chosen node, kept warm, until told to stop.

Launched by the hardware tests and the benchmarks as a separate process:

    python tests/hardware/workload.py --mib 64 --node 1 --threads 3

It maps one anonymous buffer, binds its own memory policy to `--node`
(set_mempolicy(MPOL_BIND), so the first touch lands there and nowhere
else) and/or its CPUs to `--cpunode`'s CPUs, writes every page, drops the
policy back to MPOL_DEFAULT (unless --keep-policy: a process that was
*placed* there, not one that merely *landed* there), starts the extra
threads, and prints one JSON line on stdout when ready:

    {"pid": 1234, "address": 140..., "size_bytes": 67108864, "page_size": 4096,
     "touched_bytes": ..., "zero_bytes": ..., "node": 1, "tids": [...],
     "worker_tids": [...], "child_pid": null, "touch_s": 0.03}

Layout of the buffer, in this order: `--touched-mib` written pages (default
all), `--zero-mib` pages only read (mapped to the shared zero page, which
move_pages(2) reports as -EFAULT), and the rest never touched (-ENOENT).
Every thread (the main one when --threads 0) keeps writing one byte per
page of its share of the written part every `--touch-interval-s`.

Options for the kernel's special cases: `--thp` (2 MiB-aligned buffer with
MADV_HUGEPAGE), `--no-thp` (MADV_NOHUGEPAGE), `--hugetlb` (MAP_HUGETLB; needs vm.nr_hugepages), and
`--shared-child` (MAP_SHARED, plus a forked child holding the mapping, so
the pages are mapped by two processes and move_pages(2) without
MPOL_MF_MOVE_ALL answers -EACCES for them).

SIGUSR1 starts one more touching thread and prints {"event": "thread",
"tid": N} when it runs (to check that new threads inherit an affinity).

It exits on SIGTERM/SIGINT, or when stdin reaches end of file (so a test
that dies takes its workload with it); pass --no-stdin when stdin is not
a pipe the caller holds.

Tests start it with `Workload(*args)` (below), which waits for the ready
line and keeps stdin as that pipe.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# The checkout, so the helper runs from any directory with the venv's python.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autonumad.readers.lists import parse_list  # noqa: E402
from autonumad.act.syscalls import MPOL_BIND, MPOL_DEFAULT, set_mempolicy  # noqa: E402

MIB = 1 << 20
THP_BYTES = 2 * MIB
BASE_PAGE = 4096

# <sys/mman.h>, x86_64 and asm-generic agree on these values.
PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
MAP_NORESERVE, MAP_HUGETLB = 0x4000, 0x40000
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15
PR_SET_PDEATHSIG = 1
MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class Workload:
    """A running workload child (launched with this interpreter) and its ready line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"workload {args} exited with status {self.proc.wait()}")
        self.info = json.loads(line)
        self.pid: int = self.info["pid"]
        self.address: int = self.info["address"]
        self.size: int = self.info["size_bytes"]
        self.end: int = self.address + self.size
        self.page_size: int = self.info["page_size"]

    def pages(self, offset: int = 0, length: int | None = None) -> list[int]:
        """Addresses of the buffer's pages in [offset, offset + length)."""
        stop = self.size if length is None else offset + length
        return list(range(self.address + offset, self.address + stop, self.page_size))

    def next_event(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


# --- helpers the hardware tests share ---------------------------------------------

def write_config(path: Path, text: str) -> Path:
    """An autonumad config file the daemon accepts (root-owned, not writable by others)."""
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def start_daemon(cfg: Path, log: Path) -> subprocess.Popen:
    """`autonumad run --config CFG` (stderr appended to LOG), once its first pass wrote state.json.

    The config's runtime_dir must be CFG's directory + "/run".
    """
    state = cfg.parent / "run" / "state.json"
    state.unlink(missing_ok=True)
    with open(log, "a") as f:
        p = subprocess.Popen([sys.executable, "-m", "autonumad", "run", "--config", str(cfg)], stderr=f,
                             cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    while not state.exists():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return p


def node_meminfo_bytes(node: int, field: str) -> int:
    """`Node N <field>:` of /sys/devices/system/node/nodeN/meminfo (kB there), in bytes."""
    for line in Path(f"/sys/devices/system/node/node{node}/meminfo").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == f"{field}:":
            return int(parts[3]) * 1024
    raise AssertionError(f"no {field} for node {node}")


def drop_caches() -> None:
    """Free the page cache and reclaimable slab before sizing anything against MemFree.

    MemFree leaves them out, yet a migration's allocations reclaim them
    (Documentation/admin-guide/sysctl/vm.rst, drop_caches): a node that looks
    full by MemFree may take much more.
    """
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def memory_nodes() -> tuple[int, ...]:
    """Nodes with memory, from /sys/devices/system/node/has_memory."""
    p = Path("/sys/devices/system/node/has_memory")
    return parse_list(p.read_text()) if p.exists() else ()


class numa_balancing:
    """Context manager: set kernel.numa_balancing, restore it on exit.

    The hardware tests turn the kernel's balancer off so that pages move
    only when the test moves them.
    """

    PATH = Path("/proc/sys/kernel/numa_balancing")

    def __init__(self, value: int):
        self.value = value
        self.saved: str | None = None

    def __enter__(self):
        if self.PATH.exists():
            self.saved = self.PATH.read_text().strip()
            self.PATH.write_text(str(self.value))
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            self.PATH.write_text(self.saved)


def thread_cpus(pid: int) -> dict[int, str]:
    """Cpus_allowed_list of every thread of `pid`, read from /proc directly."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[int(tid)] = line.split(":", 1)[1].strip()
    return out


def thread_last_cpu(pid: int) -> dict[int, int]:
    """The CPU each thread last ran on: field 39 of /proc/<pid>/task/<tid>/stat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[int(tid)] = int(fields[39 - 3])  # fields after "pid (comm)" start at 3
    return out


def anon_huge_kib(pid: int, address: int) -> int:
    """AnonHugePages of the mapping starting at `address` (/proc/<pid>/smaps)."""
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            current = int(head.split("-")[0], 16)
        elif line.startswith("AnonHugePages:") and current == address:
            return int(line.split()[1])
    return 0


def _check(ok: bool, what: str) -> None:
    if not ok:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def map_buffer(size: int, *, thp: bool, hugetlb: bool, shared: bool, no_thp: bool = False) -> int:
    """mmap an anonymous buffer; returns its address (THP-aligned with --thp)."""
    flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS | MAP_NORESERVE
    if hugetlb:
        flags |= MAP_HUGETLB
    span = size + (THP_BYTES if thp else 0)
    addr = _libc.mmap(None, span, PROT_READ | PROT_WRITE, flags, -1, 0)
    _check(addr not in (None, MAP_FAILED), "mmap")
    if thp:
        # Trim to a 2 MiB-aligned start so every 2 MiB of the buffer can be a THP.
        aligned = (addr + THP_BYTES - 1) & ~(THP_BYTES - 1)
        if aligned > addr:
            _libc.munmap(addr, aligned - addr)
        tail = addr + span - (aligned + size)
        if tail:
            _libc.munmap(aligned + size, tail)
        addr = aligned
        _check(_libc.madvise(addr, size, MADV_HUGEPAGE) == 0, "madvise(MADV_HUGEPAGE)")
    elif no_thp and not hugetlb:
        _check(_libc.madvise(addr, size, MADV_NOHUGEPAGE) == 0, "madvise(MADV_NOHUGEPAGE)")
    return addr


def node_cpus(node: int) -> set[int]:
    return set(parse_list(Path(f"/sys/devices/system/node/node{node}/cpulist").read_text()))


def touch(view: memoryview, page_size: int, value: int) -> None:
    """Write one byte in every page of `view` (a strided write: one C loop)."""
    npages = (len(view) + page_size - 1) // page_size
    view[::page_size] = bytes([value]) * npages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, required=True, help="buffer size in MiB")
    ap.add_argument("--touched-mib", type=int, default=None, help="MiB written (default: all)")
    ap.add_argument("--zero-mib", type=int, default=0, help="MiB only read, after the written part")
    ap.add_argument("--node", type=int, default=None, help="bind the first touch to this node")
    ap.add_argument("--cpunode", type=int, default=None, help="run on this node's CPUs")
    ap.add_argument("--keep-policy", action="store_true", help="keep MPOL_BIND after the first touch")
    ap.add_argument("--threads", type=int, default=0, help="extra threads that keep touching")
    ap.add_argument("--touch-interval-s", type=float, default=0.2,
                    help="seconds between touch sweeps (0: as fast as possible)")
    ap.add_argument("--thp", action="store_true", help="2 MiB-aligned with MADV_HUGEPAGE")
    ap.add_argument("--no-thp", action="store_true",
                    help="MADV_NOHUGEPAGE: base pages only, even where THP is 'always'")
    ap.add_argument("--hugetlb", action="store_true", help="MAP_HUGETLB (2 MiB pages)")
    ap.add_argument("--shared-child", action="store_true",
                    help="MAP_SHARED and fork a child that maps it too")
    ap.add_argument("--no-stdin", action="store_true", help="do not exit on stdin EOF")
    a = ap.parse_args(argv)

    size = a.mib * MIB
    touched = size if a.touched_mib is None else min(size, a.touched_mib * MIB)
    zero = min(size - touched, a.zero_mib * MIB)
    page_size = THP_BYTES if a.hugetlb else BASE_PAGE

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if a.cpunode is not None:
        os.sched_setaffinity(0, node_cpus(a.cpunode))
    if a.node is not None:
        set_mempolicy(MPOL_BIND, [a.node])

    addr = map_buffer(size, thp=a.thp, hugetlb=a.hugetlb, shared=a.shared_child, no_thp=a.no_thp)
    buf = (ctypes.c_char * size).from_address(addr)
    view = memoryview(buf).cast("B")
    t0 = time.perf_counter()
    touch(view[:touched], page_size, 1)
    if zero:
        # Reading an untouched private page maps the shared zero page.
        bytes(view[touched:touched + zero:page_size])
    touch_s = time.perf_counter() - t0
    if a.node is not None and not a.keep_policy:
        set_mempolicy(MPOL_DEFAULT)

    child_pid = None
    if a.shared_child:
        # fork() copies no page-table entries for a MAP_SHARED mapping (the
        # child would fault them in later), so the child reads every page
        # itself: only then is each page mapped twice. It reports over a
        # pipe when done, holds the mapping, and dies with its parent.
        ready_r, ready_w = os.pipe()
        child_pid = os.fork()
        if child_pid == 0:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            bytes(view[:touched:page_size])
            os.write(ready_w, b"1")
            while True:
                signal.pause()
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)

    workers = max(1, a.threads)
    shares = [view[touched * i // workers // page_size * page_size:
                   touched * (i + 1) // workers // page_size * page_size] for i in range(workers)]

    def keep_touching(share: memoryview) -> None:
        value = 2
        while not stop.is_set():
            touch(share, page_size, value)
            value = value % 250 + 2
            if a.touch_interval_s:
                stop.wait(a.touch_interval_s)

    worker_tids: list[int] = []
    workers_started = threading.Barrier(a.threads + 1) if a.threads else None

    def worker(share: memoryview) -> None:
        worker_tids.append(threading.get_native_id())
        workers_started.wait()
        keep_touching(share)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True)
               for s in (shares if a.threads else [])]
    for t in threads:
        t.start()
    if workers_started:
        workers_started.wait()

    def spawn_thread() -> None:
        started = threading.Event()
        tid: list[int] = []

        def run() -> None:
            tid.append(threading.get_native_id())
            started.set()
            keep_touching(shares[0])

        threading.Thread(target=run, daemon=True).start()
        started.wait()
        print(json.dumps({"event": "thread", "tid": tid[0]}), flush=True)

    # The handler runs in the main thread between bytecodes; spawning from
    # there is fine for a test helper (the main thread only waits).
    signal.signal(signal.SIGUSR1, lambda *_: spawn_thread())
    if not a.no_stdin:
        def watch_stdin() -> None:
            sys.stdin.buffer.read()
            stop.set()
        threading.Thread(target=watch_stdin, daemon=True).start()

    ready = {
        "pid": os.getpid(), "address": addr, "size_bytes": size, "page_size": page_size,
        "touched_bytes": touched, "zero_bytes": zero, "node": a.node,
        "tids": sorted(int(t) for t in os.listdir("/proc/self/task")),
        # The threads that keep touching memory (the main one with --threads 0).
        "worker_tids": sorted(worker_tids) if a.threads else [threading.get_native_id()],
        "child_pid": child_pid, "touch_s": round(touch_s, 4),
    }
    print(json.dumps(ready), flush=True)

    if a.threads:
        stop.wait()
    else:
        keep_touching(shares[0])
    if child_pid:
        os.kill(child_pid, signal.SIGKILL)
        os.waitpid(child_pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
