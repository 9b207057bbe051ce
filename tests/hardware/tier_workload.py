"""A tiering workload: one process with a hot mapping and a cold mapping, first-touched on a chosen node.

    python tests/hardware/tier_workload.py --hot-mib 64 --cold-mib 192 --node 2 --cpunode 0

Maps two anonymous buffers with VMA flags of their own (hot: MAP_NORESERVE
and MADV_DONTDUMP, cold: MADV_DONTFORK), so that the kernel keeps each one
VMA: adjacent anonymous mappings with equal flags merge. First-touches both under MPOL_BIND to `--node`, drops
the policy back to MPOL_DEFAULT (the pages *landed* there; nobody placed
them), pins itself to `--cpunode`'s CPUs, prints one JSON line

    {"pid": 1234, "hot": [address, size_bytes], "cold": [address, size_bytes]}

and then keeps writing one byte per page of the hot buffer, continuously.
The cold buffer is never touched again. Exits on SIGTERM or stdin EOF.

`--flush-tlb-ms N` (default 1): a thread write-protects and unprotects a
private 1 MiB scratch mapping every N ms. Each round is a TLB flush of the
whole mm (256 pages is above x86's tlb_single_page_flush_ceiling of 33).
Why: DAMON and the kernel's hint-fault-free access checks read the PTE
accessed bit after clearing it *without* a TLB flush (x86
ptep_test_and_clear_young). Real CPUs evict TLB entries within
microseconds, so the bit is set again on the next access; QEMU's TCG keeps
a software TLB of up to a million entries that nothing evicts, so a
hammered buffer reads as never accessed (measured: 64 MiB at nr_accesses 0
while the task ran at 100 % CPU). The flushes give TCG the eviction a real
CPU has; on hardware they are merely unnecessary. 0 disables them.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autonumad.readers.lists import parse_list  # noqa: E402
from autonumad.act.syscalls import MPOL_BIND, MPOL_DEFAULT, set_mempolicy  # noqa: E402

MIB = 1 << 20
PAGE = 4096
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x02, 0x20, 0x4000
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTFORK, MADV_NOHUGEPAGE, MADV_DONTDUMP = 10, 15, 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]



class TierWorkload:
    """Launch this script as a separate process, for the hardware tests.

    `hot` and `cold` are the (start, end) address ranges of its two mappings.
    """

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())
        self.pid = self.info["pid"]
        self.hot = (self.info["hot"][0], self.info["hot"][0] + self.info["hot"][1])
        self.cold = (self.info["cold"][0], self.info["cold"][0] + self.info["cold"][1])

    def nodes(self, mapping: tuple[int, int]) -> dict[int, int]:
        """Pages per node of `mapping` (numa_maps); it must be a VMA of its own."""
        from autonumad.host import LinuxHost
        from autonumad.readers.numa_maps import read_numa_maps

        vmas = read_numa_maps(LinuxHost(), self.pid).vmas
        for v in vmas:
            if v.start == mapping[0]:
                return dict(v.pages_by_node)
        raise AssertionError(f"no VMA starts at {mapping[0]:#x} in pid {self.pid} (merged with a neighbour?): "
                             + " ".join(f"{v.start:#x}" for v in vmas))

    def range_nodes(self, mapping: tuple[int, int]) -> dict[int, int]:
        """Pages per node of [start, end), from the kernel (move_pages(2) query): works inside a merged VMA."""
        from autonumad.act.syscalls import range_nodes

        (by_node,) = range_nodes(self.pid, [mapping], PAGE, 1 << 30)
        return {n: b // PAGE for n, b in by_node.items()}

    def command(self, line: str) -> None:
        """Send a command ("slide", "grow N") and wait until the workload has done it."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def _map(size: int, extra_flags: int, no_thp: bool = True, advice: int | None = None, addr: int | None = None) -> int:
    want = addr
    addr = _libc.mmap(want, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0)
    if want is not None and addr != want and addr not in (None, ctypes.c_void_p(-1).value):
        raise OSError(f"mmap at {want:#x} returned {addr:#x}")
    if addr in (None, ctypes.c_void_p(-1).value):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    # Base pages: a THP would be promoted or demoted 2 MiB at a time, and the
    # tests count pages per VMA.
    if no_thp:
        _libc.madvise(addr, size, MADV_NOHUGEPAGE)
    if advice is not None:
        _libc.madvise(addr, size, advice)
    return addr


def _view(addr: int, size: int) -> memoryview:
    return memoryview((ctypes.c_char * size).from_address(addr)).cast("B")


def _touch(view: memoryview, value: int) -> None:
    view[::PAGE] = bytes([value]) * ((len(view) + PAGE - 1) // PAGE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hot-mib", type=int, default=64)
    ap.add_argument("--cold-mib", type=int, default=192)
    ap.add_argument("--node", type=int, required=True, help="first-touch node of both buffers")
    ap.add_argument("--cpunode", type=int, required=True, help="run on this node's CPUs")
    ap.add_argument("--flush-tlb-ms", type=float, default=1.0)
    ap.add_argument("--merged", action="store_true",
                    help="map the cold buffer right after the hot one with the same flags: the kernel merges "
                         "them into one VMA")
    ap.add_argument("--slide-mib", type=int, default=0,
                    help="the hot mapping is this much larger per --slide-steps; the written window (--hot-mib) "
                         "moves by it on each 'slide' line on stdin")
    ap.add_argument("--slide-steps", type=int, default=0)
    a = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cpus = parse_list(Path(f"/sys/devices/system/node/node{a.cpunode}/cpulist").read_text())
    os.sched_setaffinity(0, cpus)
    window_size = a.hot_mib * MIB
    hot_size, cold_size = window_size + a.slide_mib * a.slide_steps * MIB, a.cold_mib * MIB
    if a.merged:
        # Equal flags and advice, the cold buffer placed right after the hot
        # one: the kernel merges them into one VMA (mm/vma.c), as two
        # malloc()ed arenas or a heap grown in steps are merged.
        # Address space for both is found first, then given back and mapped
        # as two mappings, one after the other.
        base = _map(hot_size + cold_size, 0, no_thp=False)
        _libc.munmap(base, hot_size + cold_size)
        hot = _map(hot_size, MAP_FIXED_NOREPLACE, addr=base)
        cold = _map(cold_size, MAP_FIXED_NOREPLACE, addr=base + hot_size)
    else:
        # A VMA flag of its own on each (VM_DONTDUMP, VM_DONTCOPY): thread stacks
        # are NOHUGEPAGE too (MAP_STACK, 6.7+) and would merge with a neighbour.
        hot = _map(hot_size, MAP_NORESERVE, advice=MADV_DONTDUMP)
        cold = _map(cold_size, 0, advice=MADV_DONTFORK)
    hot_view, cold_view = _view(hot, hot_size), _view(cold, cold_size)
    set_mempolicy(MPOL_BIND, [a.node])
    _touch(hot_view, 1)
    _touch(cold_view, 1)
    set_mempolicy(MPOL_DEFAULT)

    if a.flush_tlb_ms > 0:
        scratch_size = MIB
        # Without MADV_NOHUGEPAGE, so that it never merges with the cold mapping.
        scratch = _map(scratch_size, 0, no_thp=False)
        scratch_view = _view(scratch, scratch_size)
        _touch(scratch_view, 1)

        def flusher() -> None:
            while not stop.wait(a.flush_tlb_ms / 1000):
                _libc.mprotect(scratch, scratch_size, PROT_READ)
                _libc.mprotect(scratch, scratch_size, PROT_READ | PROT_WRITE)
                # Written again after every round. mprotect flushes only PTEs whose write bit
                # it takes away (x86 pte_needs_flush), and after a soft-dirty clear (the write
                # probe's or the fallback tracker's "4" to clear_refs) the PTEs are read-only
                # and mprotect(PROT_WRITE) leaves them so (the VMA wants write notifications,
                # mm/mmap.c vma_wants_writenotify): without this write every later round
                # changed nothing and flushed nothing, and DAMON saw the process go silent
                # after the first probe (issue 16's "no access after the first promotion").
                _touch(scratch_view, 1)

        threading.Thread(target=flusher, daemon=True).start()

    window = [0]  # offset of the written window in the hot mapping
    grown = []

    def watch_stdin() -> None:
        # Commands, one a line: "slide" moves the written window by --slide-mib;
        # "grow N" maps N MiB more and writes it once (a filler that keeps
        # allocating: first touch where the task runs, default policy).
        for line in sys.stdin:
            cmd = line.split()
            if cmd[:1] == ["slide"]:
                window[0] = min(window[0] + a.slide_mib * MIB, hot_size - window_size)
            elif cmd[:1] == ["grow"]:
                size = int(cmd[1]) * MIB
                addr = _map(size, MAP_NORESERVE, advice=MADV_DONTDUMP)
                _touch(_view(addr, size), 1)
                grown.append(addr)
            print(json.dumps({"done": cmd}), flush=True)
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"pid": os.getpid(), "hot": [hot, hot_size], "cold": [cold, cold_size],
                      "window": window_size}), flush=True)
    value = 2
    while not stop.is_set():
        _touch(hot_view[window[0]:window[0] + window_size], value)
        value = value % 250 + 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
