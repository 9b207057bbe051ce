"""The four autonuma-benchmark patterns, written for this project from their description.

Andrea Arcangeli's autonuma-benchmark (2012; mmtests' `autonumabench`) is
how the kernel's NUMA balancing has been measured since it was written.
These are our own implementations of its four patterns, scaled by
`--mib` (buffer per process) and `--cpus` (the CPU count the thread
counts derive from):

    numa01               2 processes x cpus/2 threads; every thread of a
                         process writes the process's whole buffer;
    numa01_THREAD_ALLOC  the same start; each thread writes only its own
                         1/threads slice;
    numa02               1 process x cpus threads; each thread writes its
                         own slice of the one buffer;
    numa02_SMT           the same with cpus/2 threads.

Every buffer is first touched by the process's main thread under
MPOL_BIND to `--node` (default 0), so all memory starts on one node, and
the policy is then reset to MPOL_DEFAULT: the memory merely *landed*
there, a balancer may move it. The worker threads are not pinned: the
scheduler spreads them. Each worker loops `memset` over its range; ctypes
drops the GIL for the call, so the threads really run in parallel and
keep their CPUs busy. Each process first widens its affinity to every
online CPU: a launcher pinned by a balancer must not pin the pattern.

Run standalone (prints one JSON line when every worker runs, exits at
stdin EOF or SIGTERM):

    python tests/hardware/autonuma_workload.py --pattern numa01 --mib 64 [--cpus 4] [--node 0]

or from Python: `Pattern.start("numa01", mib=64)`, then `sample()`
every second to see, per worker, which CPU and node it ran on and the
share of its working pages on that node (a move_pages(2) status query
over its range, every `stride`-th page), and `summary()` of those samples.

Scores (the TCG guest cannot show the cost of remote access in elapsed
time, so placement is scored instead):
- locality: a worker's working pages on the node of the CPU it last ran on;
- crammed: share of workers beyond their node's CPU count (4 workers on a
  2-CPU node: 2 of them are crammed);
- modelled throughput, per worker, cpu_share x (local + remote x
  REMOTE_BANDWIDTH_RATIO), cpu_share = min(1, node CPUs / workers on the
  node), averaged over workers (1.0 = every worker alone on a CPU with all
  its memory local).
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autonumad.act.syscalls import MPOL_BIND, MPOL_DEFAULT, page_nodes, set_mempolicy  # noqa: E402
from autonumad.readers.lists import parse_list  # noqa: E402

MIB = 1 << 20
PAGE = 4096
# Remote/local memory bandwidth assumed by the throughput model: a two-socket
# server's remote DRAM bandwidth is roughly half its local (distance 21/10).
REMOTE_BANDWIDTH_RATIO = 0.5

PATTERNS = {
    # name: (processes, threads per process as a function of cpus, per-thread slices?)
    "numa01": (2, lambda cpus: max(1, cpus // 2), False),
    "numa01_THREAD_ALLOC": (2, lambda cpus: max(1, cpus // 2), True),
    "numa02": (1, lambda cpus: cpus, True),
    "numa02_SMT": (1, lambda cpus: max(1, cpus // 2), True),
}

PROT_RW, MAP_PRIVATE_ANON_NORESERVE = 0x3, 0x02 | 0x20 | 0x4000
MADV_NOHUGEPAGE = 15
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# A foreign call through CDLL releases the GIL for its duration.
_libc.memset.restype = ctypes.c_void_p
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


# --- the pattern processes --------------------------------------------------------

def _one_process(mib: int, threads: int, slices: bool, node: int) -> int:
    """One pattern process: first touch on `node`, then `threads` workers writing."""
    # Unpinned, whatever the launcher's affinity (a balancer may have pinned
    # the bench or the test that starts us, and children inherit it).
    os.sched_setaffinity(0, parse_list(Path("/sys/devices/system/cpu/online").read_text()))
    size = mib * MIB
    addr = _libc.mmap(None, size, PROT_RW, MAP_PRIVATE_ANON_NORESERVE, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    # Base pages, as the kernel's hint faults and move_pages see them one by one.
    _libc.madvise(addr, size, MADV_NOHUGEPAGE)
    set_mempolicy(MPOL_BIND, (node,))
    _libc.memset(addr, 1, size)
    set_mempolicy(MPOL_DEFAULT)
    slice_bytes = (size // threads) // PAGE * PAGE
    ranges = [(i * slice_bytes, slice_bytes if i < threads - 1 else size - i * slice_bytes) if slices
              else (0, size) for i in range(threads)]
    tids: list[int | None] = [None] * threads
    ready = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        tids[i] = threading.get_native_id()
        ready.wait()
        off, length = ranges[i]
        value = 0
        while True:
            value = (value + 1) & 0xFF
            _libc.memset(addr + off, value, length)

    for i in range(threads):
        threading.Thread(target=worker, args=(i,), daemon=True).start()
    ready.wait()
    print(json.dumps({"pid": os.getpid(), "address": addr, "size_bytes": size,
                      "workers": [{"tid": t, "offset": o, "length": n} for t, (o, n) in zip(tids, ranges)]}),
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sys.stdin.read()  # until the parent closes the pipe
    os._exit(0)


# --- the parent's view: start, sample, score --------------------------------------

def node_cpus() -> dict[int, frozenset[int]]:
    out = {}
    for d in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        cpus = parse_list((d / "cpulist").read_text())
        if cpus:
            out[int(d.name[4:])] = frozenset(cpus)
    return out


def last_cpu(pid: int, tid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[39 - 3])


@dataclass
class Sample:
    t_s: float
    workers: list[dict]  # pid, tid, cpu, node, local
    locality: float  # mean over workers
    crammed: float  # share of workers beyond their node's CPU count
    throughput: float  # modelled, mean over workers


def score(workers: list[dict], cpus_by_node: dict[int, frozenset[int]]) -> tuple[float, float, float]:
    """(mean locality, crammed share, modelled throughput) of one sample's workers."""
    if not workers:
        return 0.0, 0.0, 0.0
    per_node: dict[int, int] = {}
    for w in workers:
        per_node[w["node"]] = per_node.get(w["node"], 0) + 1
    crammed = sum(max(0, n - len(cpus_by_node.get(node, ()))) for node, n in per_node.items()) / len(workers)
    tput = 0.0
    for w in workers:
        share = min(1.0, len(cpus_by_node.get(w["node"], ())) / per_node[w["node"]])
        tput += share * (w["local"] + (1 - w["local"]) * REMOTE_BANDWIDTH_RATIO)
    return (sum(w["local"] for w in workers) / len(workers), crammed, tput / len(workers))


class Pattern:
    """The processes of one pattern, started and sampled from the caller's process."""

    def __init__(self, name: str, infos: list[dict], procs: list[subprocess.Popen], stride: int):
        self.name = name
        self.infos = infos
        self.procs = procs
        self.stride = stride
        self.cpus_by_node = node_cpus()
        self.cpu_to_node = {c: n for n, cs in self.cpus_by_node.items() for c in cs}
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()

    @classmethod
    def start(cls, name: str, mib: int, cpus: int | None = None, node: int = 0, stride: int = 4) -> "Pattern":
        nproc, threads_of, slices = PATTERNS[name]
        cpus = cpus or os.cpu_count() or 2
        procs, infos = [], []
        try:
            for _ in range(nproc):
                procs.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--one", "--mib", str(mib),
                     "--threads", str(threads_of(cpus)), "--node", str(node)] + (["--slices"] if slices else []),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for p in procs:
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"{name}: a pattern process exited with status {p.wait()}")
                infos.append(json.loads(line))
        except BaseException:
            for p in procs:
                p.kill()
                p.wait()
            raise
        return cls(name, infos, procs, stride)

    @property
    def pids(self) -> list[int]:
        return [i["pid"] for i in self.infos]

    def sample(self) -> Sample:
        workers = []
        for info in self.infos:
            pid, base = info["pid"], info["address"]
            step = PAGE * self.stride
            try:
                nodes = page_nodes(pid, range(base, base + info["size_bytes"], step))
            except OSError:
                continue
            for w in info["workers"]:
                cpu = last_cpu(pid, w["tid"])
                if cpu is None:
                    continue
                node = self.cpu_to_node.get(cpu)
                first, last = w["offset"] // step, (w["offset"] + w["length"]) // step
                mine = nodes[first:last]
                local = sum(1 for n in mine if n == node) / max(1, len(mine))
                workers.append({"pid": pid, "tid": w["tid"], "cpu": cpu, "node": node, "local": round(local, 4)})
        loc, crammed, tput = score(workers, self.cpus_by_node)
        s = Sample(round(time.monotonic() - self.t0, 2), workers, loc, crammed, tput)
        self.samples.append(s)
        return s

    def summary(self) -> dict:
        """Time-averaged and final scores over the samples taken."""
        ss = self.samples
        if not ss:
            return {}
        n = len(ss)
        final = ss[-1]
        return {
            "pattern": self.name, "samples": n,
            "locality_avg": round(sum(s.locality for s in ss) / n, 3),
            "locality_final": round(final.locality, 3),
            "crammed_avg": round(sum(s.crammed for s in ss) / n, 3),
            "crammed_final": round(final.crammed, 3),
            "throughput_avg": round(sum(s.throughput for s in ss) / n, 3),
            "throughput_final": round(final.throughput, 3),
            "final_nodes": {str(p): sorted({w["node"] for w in final.workers if w["pid"] == p}) for p in self.pids},
        }

    def process_nodes(self) -> dict[int, set[int]]:
        """The nodes each process's workers last ran on."""
        out: dict[int, set[int]] = {}
        for info in self.infos:
            out[info["pid"]] = {self.cpu_to_node.get(last_cpu(info["pid"], w["tid"])) for w in info["workers"]}
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.close()
                    p.wait(10)
                except (subprocess.TimeoutExpired, OSError):
                    p.kill()
                    p.wait()
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> "Pattern":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", choices=sorted(PATTERNS))
    ap.add_argument("--mib", type=int, default=64, help="buffer per process, MiB")
    ap.add_argument("--cpus", type=int, default=None, help="CPU count the thread counts derive from")
    ap.add_argument("--node", type=int, default=0, help="node of the first touch")
    ap.add_argument("--seconds", type=float, default=None, help="sample every second for this long, then exit")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--slices", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        return _one_process(a.mib, a.threads, a.slices, a.node)
    if not a.pattern:
        ap.error("--pattern is required")
    with Pattern.start(a.pattern, a.mib, a.cpus, a.node) as pat:
        print(json.dumps({"pattern": a.pattern, "processes": pat.infos}), flush=True)
        if a.seconds is None:
            sys.stdin.read()
            return 0
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            s = pat.sample()
            print(json.dumps({"t_s": s.t_s, "locality": round(s.locality, 3), "crammed": round(s.crammed, 3),
                              "throughput": round(s.throughput, 3)}), flush=True)
        print(json.dumps(pat.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
