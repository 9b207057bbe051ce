"""Raw NUMA syscalls through ctypes: move_pages(2), migrate_pages(2), set/get_mempolicy(2).

No libnuma: `ctypes.CDLL(None).syscall` reaches the kernel directly, so
nothing beyond the C library is needed and nothing is loaded at import.

Syscall numbers (checked against the kernel's own tables):

* x86_64, arch/x86/entry/syscalls/syscall_64.tbl:
  237 mbind, 238 set_mempolicy, 239 get_mempolicy, 256 migrate_pages,
  279 move_pages (a number, once assigned, never changes).
* aarch64 (and every asm-generic architecture: riscv64, loongarch64),
  include/uapi/asm-generic/unistd.h: 235 mbind, 236 get_mempolicy,
  237 set_mempolicy, 238 migrate_pages, 239 move_pages.

Errors follow psutil's rule for processes (autonumad.errors): ESRCH means
the process is gone (ProcessGone), EPERM/EACCES that the kernel refused
(AccessDenied); anything else is an OSError naming the errno, because it
means the caller asked for something impossible (ENODEV: no memory on
that node) rather than that the world changed under it.

Batch size and the query-then-move design come from measurements on this
project's hosts (DEFAULT_BATCH_PAGES, move_range); `migrate_pages` carries
the whole-process comparison made in the 2node guest.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from autonumad.errors import AccessDenied, NotSupported, ProcessGone
from autonumad.model import MoveResult

# --- syscall numbers ---------------------------------------------------------

_X86_64 = {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239,
           "migrate_pages": 256, "move_pages": 279}
_ASM_GENERIC = {"mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237,
                "migrate_pages": 238, "move_pages": 239}
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": _X86_64,
    "aarch64": _ASM_GENERIC,
    "riscv64": _ASM_GENERIC,
    "loongarch64": _ASM_GENERIC,
}

# --- constants from include/uapi/linux/mempolicy.h ---------------------------

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_LOCAL = 4
MPOL_PREFERRED_MANY = 5
MPOL_WEIGHTED_INTERLEAVE = 6

MPOL_MF_STRICT = 1 << 0
MPOL_MF_MOVE = 1 << 1      # move pages mapped only by this process
MPOL_MF_MOVE_ALL = 1 << 2  # also shared pages; needs CAP_SYS_NICE

# get_mempolicy(2) flags.
MPOL_F_NODE = 1 << 0
MPOL_F_ADDR = 1 << 1

# Marks a move_pages(2) status slot the kernel did not write. When a
# migration inside the call fails, do_pages_move() (mm/migrate.c) aborts and
# returns the number of pages not migrated; it stores no status for the
# pages still queued or not yet looked at. INT_MIN is neither a node id nor
# a negated errno, so such slots are recognisable afterwards.
NOT_REPORTED = -(2**31)

# move_range's default batch: pages per move_pages(2) call. 4096 base pages
# = 16 MiB. Two measurements:
#
# 1. This project's 2-CPU host (kernel 6.18, one node): a child holding
#    256 MiB = 65,536 pages, all already on node 0, so nothing is copied;
#    median of 21 passes, ms per pass over all pages:
#
#      batch    query-only   move-only   query+move   move_range
#        256        3.7         18.2        23.4          7.4
#       1024        3.1         10.0        13.9          6.7
#       4096        3.0          7.9        10.5          6.4
#      16384        2.9          7.1        10.2          6.3
#
#    The query is ~0.05 µs per page; each move call costs ~45 µs fixed (its
#    lru_cache_disable(), see move_range) plus ~0.11 µs per page even when
#    nothing moves. move_range queries, then skips the move call for pages
#    already placed, hence its column.
#
# 2. The 2node QEMU/TCG guest (scripts/numa-vm, kernel 6.12): 64 MiB really
#    moved between nodes 1 and 0, 8 moves per cell, median MiB/s:
#
#      batch (MiB)      2     4     16    64
#      base pages      97   109   123   135
#      THP            102   138   148   137
#
# Past 4096 pages nothing is gained, while a bigger batch delays noticing
# an exited process, a SIGTERM and the rate limiter's next decision by one
# more batch.
DEFAULT_BATCH_PAGES = 4096

_BITS_PER_LONG = ctypes.sizeof(ctypes.c_ulong) * 8

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _nr(name: str) -> int:
    table = SYSCALL_NUMBERS.get(platform.machine())
    if table is None:
        raise NotSupported(f"{name}(2): no syscall number known for {platform.machine()}")
    return table[name]


def _raw(name: str, *args: ctypes._SimpleCData) -> int:
    """Call syscall `name` with ctypes-typed args; return its result or raise OSError.

    Every argument is passed as a full machine word (c_long/c_ulong/c_void_p):
    syscall(2) is variadic and reads longs, so a bare Python int (passed as a
    C int) would leave the upper half of the register undefined.
    """
    ctypes.set_errno(0)
    rc = _syscall(ctypes.c_long(_nr(name)), *args)
    if rc == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")
    return rc


def eperm_cause(status_path: str = "/proc/self/status") -> str:
    """Why a whole call failed with EPERM, as far as this process can tell.

    move_pages(2) and migrate_pages(2) return EPERM when the ptrace access
    check on the target fails (find_mm_struct in mm/migrate.c: another
    user's process without CAP_SYS_PTRACE), and sched_setaffinity(2) when the
    caller lacks CAP_SYS_NICE for it. A seccomp filter that refuses the call
    (a container runtime's default profile does, with EPERM) looks the same
    from here; /proc/self/status's "Seccomp: 2" says one is installed
    (Documentation/userspace-api/seccomp_filter.rst), so say so rather than
    blame the capabilities alone.
    """
    cause = "permission refused (EPERM): the kernel's ptrace access check (needs CAP_SYS_PTRACE)"
    try:
        with open(status_path) as f:
            filtered = any(line.split() == ["Seccomp:", "2"] for line in f)
    except OSError:
        return cause
    if filtered:
        cause += ", or this daemon's seccomp filter refusing the call (its profile must allow it)"
    return cause


def _pid_error(pid: int, call: str, e: OSError) -> Exception:
    """Map a whole-call errno to autonumad's typed per-process outcomes."""
    if e.errno == errno.ESRCH:
        return ProcessGone(pid, call)
    if e.errno == errno.EINVAL:
        # With valid flags, EINVAL means the task has no mm any more
        # (find_mm_struct in mm/migrate.c: get_task_mm() == NULL): it is
        # exiting, a zombie, or a kernel thread. Nothing to move either way.
        return ProcessGone(pid, call, "no address space (exiting or kernel thread)")
    if e.errno == errno.EPERM:
        return AccessDenied(pid, call, eperm_cause())
    if e.errno == errno.EACCES:
        # do_pages_move: the target node is not in the task's cpuset.mems.
        return AccessDenied(pid, call, "target node not allowed by the process's cpuset (EACCES)")
    return e


# --- move_pages(2) -------------------------------------------------------------

def move_pages(pid: int, addresses: Sequence[int], nodes: Sequence[int] | None,
               flags: int = MPOL_MF_MOVE) -> list[int]:
    """One move_pages(2) call; returns the per-page status array.

    `nodes=None` only queries: status[i] is the node holding the page at
    addresses[i], or a negated errno (-ENOENT not populated, -EFAULT not
    in a migratable mapping or the shared zero page). With `nodes`, pages
    are moved and status[i] is the node they are on afterwards or a
    negated errno (-EACCES mapped by several processes, -EBUSY could not
    be isolated, ...); slots the kernel did not reach hold NOT_REPORTED
    (the call then returned the positive count of pages not migrated).

    Raises ProcessGone (ESRCH, or no address space), AccessDenied (EPERM:
    ptrace check; EACCES: target node outside the cpuset), OSError for
    the rest (ENODEV: a target node without memory or out of range).
    """
    if flags & ~(MPOL_MF_MOVE | MPOL_MF_MOVE_ALL):
        raise ValueError(f"move_pages: unsupported flags {flags:#x}")
    n = len(addresses)
    if nodes is not None and len(nodes) != n:
        raise ValueError("move_pages: addresses and nodes differ in length")
    if n == 0:
        return []
    status, _ = _move_pages_raw(pid, _as_ulongs(addresses),
                                None if nodes is None else array("i", nodes), flags)
    return status.tolist()


def page_nodes(pid: int, addresses: Sequence[int]) -> list[int]:
    """Where the pages at `addresses` are: node ids or negated errnos (query form)."""
    return move_pages(pid, addresses, None)


def _as_ulongs(values: Iterable[int]) -> array:
    a = array("L", values)
    if a.itemsize * 8 != _BITS_PER_LONG:  # pragma: no cover - LP64 only
        raise NotSupported("move_pages: unsigned long is not the pointer size")
    return a


def _move_pages_raw(pid: int, pages: array, nodes: array | None, flags: int) -> tuple[array, int]:
    """The syscall itself over array buffers; returns (status, return value).

    The return value is 0, or the number of pages not migrated (positive,
    since 4.17; see NOT_REPORTED).
    """
    n = len(pages)
    status = array("i", [NOT_REPORTED]) * n
    try:
        rc = _raw("move_pages", ctypes.c_long(pid), ctypes.c_ulong(n),
                  ctypes.c_void_p(pages.buffer_info()[0]),
                  ctypes.c_void_p(nodes.buffer_info()[0] if nodes is not None else None),
                  ctypes.c_void_p(status.buffer_info()[0]), ctypes.c_long(flags))
    except OSError as e:
        raise _pid_error(pid, "move_pages(2)", e) from None
    return status, rc


# --- where a range's pages are ---------------------------------------------------

# Addresses per query call in range_nodes: 64 Ki addresses is a 512 KiB
# array, and ~3 ms of kernel time at the ~0.05 µs per page measured above.
_QUERY_CHUNK = 65536


def range_nodes(pid: int, ranges: Sequence[tuple[int, int]], page_size: int,
                max_pages: int) -> list[dict[int, int]]:
    """Bytes per node of each [start, end) range of `pid`, from move_pages(2)'s query form.

    Exact when the ranges hold at most `max_pages` pages together; beyond
    that every k-th page is asked (k the same for all ranges, the smallest
    that fits) and stands for the k pages from it, so the cost of a pass
    stays bounded whatever the process's size. Pages not populated
    (-ENOENT) and pages no move can take (-EFAULT: the shared zero page or
    no mapping) count nowhere. Raises ProcessGone / AccessDenied as any
    per-process call.
    """
    if max_pages < 1:
        raise ValueError("max_pages must be at least 1")
    total = sum(max(0, (e - s) // page_size) for s, e in ranges)
    stride = max(1, -(-total // max_pages))
    step = stride * page_size
    addrs = array("L")
    spans: list[tuple[int, int]] = []  # (first sample, samples) of each range
    for s, e in ranges:
        s -= s % page_size
        n = len(addrs)
        addrs.extend(range(s, e, step))
        spans.append((n, len(addrs) - n))
    status = array("i")
    for off in range(0, len(addrs), _QUERY_CHUNK):
        status.extend(_move_pages_raw(pid, addrs[off:off + _QUERY_CHUNK], None, 0)[0])
    out: list[dict[int, int]] = []
    for (first, k), (_, end) in zip(spans, ranges):
        # Counted in C (Counter over an array slice): a pass asks for up to a
        # few hundred thousand pages, too many for a Python loop under TCG.
        counts = {node: n * step for node, n in Counter(status[first:first + k]).items() if node >= 0}
        if k:
            # The last sample stands only for the bytes left in the range.
            last = status[first + k - 1]
            if last >= 0:
                counts[last] -= step - min(step, end - addrs[first + k - 1])
        out.append(counts)
    return out


# --- move_range ------------------------------------------------------------------

@dataclass
class _Tally:
    """Mutable per-page counts, frozen into a MoveResult at the end."""

    page_size: int
    moved: int = 0
    already: int = 0
    absent: int = 0
    failed: Counter = field(default_factory=Counter)
    moved_from: Counter = field(default_factory=Counter)
    gone: bool = False

    def examined(self) -> int:
        return self.moved + self.already + self.absent + sum(self.failed.values())

    def result(self) -> MoveResult:
        return MoveResult(requested=self.examined(), moved=self.moved, already=self.already,
                          absent=self.absent, failed=dict(self.failed),
                          moved_from=dict(self.moved_from), page_size=self.page_size,
                          gone=self.gone)


def errno_name(status: int) -> str:
    """Name of a negated-errno status ("EBUSY"); "EAGAIN" for NOT_REPORTED.

    A page the kernel left unreported was not migrated for a transient
    reason (migrate_pages() retries -EAGAIN folios ten times, then gives
    up): the same page may well move on the next pass.
    """
    if status == NOT_REPORTED:
        return "EAGAIN"
    return errno.errorcode.get(-status, f"E{-status}")


def classify_query(status: Sequence[int], target_node: int) -> tuple[list[int], int, int, Counter]:
    """Split a query's status array: (indexes to move, already, absent, failed by errno).

    Pure: the decision half of move_range, tested without a kernel.
    A page is moved only if it is present and on another node.

    Counted by Counter (its counting loop is C): a batch is 4,096 statuses,
    and a Python loop over each page cost about a tenth of a whole move's
    time in the TCG guest (bench-convergence --daemon-profile). The indexes
    are built page by page only for a batch that mixes movable pages with
    others.
    """
    if status and status.count(status[0]) == len(status):
        counts = {status[0]: len(status)}  # one value throughout, the usual batch: one pass in C
    else:
        counts = Counter(status)
    already = counts.pop(target_node, 0)
    absent = counts.pop(-errno.ENOENT, 0)
    failed: Counter = Counter()
    for s, n in counts.items():
        if s < 0:
            failed[errno_name(s)] += n
    movable = len(status) - already - absent - sum(failed.values())
    if movable == len(status):
        to_move = list(range(movable))
    elif movable == 0:
        to_move = []
    else:
        to_move = [i for i, s in enumerate(status) if s >= 0 and s != target_node]
    return to_move, already, absent, failed


def folio_unit_bytes(page_size: int) -> int:
    """The largest block the kernel may move as one folio, for a VMA of `page_size`.

    In a VMA of base pages, a transparent huge page spans one PMD: as many
    base pages as a page-table page has entries (page_size / 8 on 64-bit),
    i.e. 2 MiB for 4 KiB pages (32 MiB for 16 KiB, 512 MiB for 64 KiB).
    Smaller mTHP folios are naturally aligned inside it. In a hugetlb VMA
    (page_size above the base page size) each page is its own unit.
    """
    if page_size == _BASE_PAGE_BYTES:
        return page_size * (page_size // 8)
    return page_size


_BASE_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# Notes on move_range.
#
# Why query first. The move call alone cannot tell "moved" from "was
# already there" (both report the target node), so it cannot fill
# `moved`, `moved_from` or honour `max_pages`. The query is cheap next to
# the move (do_pages_stat walks 16 pages per mmap-lock hold; measured
# ~0.05 µs per page here, against ~0.11 µs per page for a move call even
# when nothing moves, and far more when pages really are copied), and it
# lets a batch whose pages are all placed skip the move call entirely,
# which also skips the move call's fixed cost (~45 µs here):
# do_pages_move() starts with lru_cache_disable(), an expedited RCU
# grace period plus an LRU drain queued on every online CPU.
#
# Transparent huge pages in a base-page VMA. The kernel moves a whole
# folio when asked for any of its pages, so:
# * batches end on folio_unit_bytes() boundaries (2 MiB for 4 KiB pages;
#   `batch_pages` is rounded up to whole units), and a THP is always
#   queried and moved within one batch. Otherwise the half of a THP in
#   the next batch would be found "already" on the target, and 1 MiB
#   batches over THP-backed memory counted half of what really moved
#   (measured in the 2node guest);
# * within a call the kernel moves a THP on its first address; the next
#   address of the same THP reports -EBUSY (the folio is isolated) and
#   the rest the target node. Pages reported -EBUSY are queried again
#   after the call and count as `moved` when they are on the target, so
#   a THP counts as 512 moved base pages and `moved_bytes` is exact;
# * a THP straddling the `max_pages` cut moves whole: the pages after the
#   cut up to the next unit boundary are queried again, and those that
#   moved with it are counted as `moved` (and examined). So `moved` can
#   exceed `max_pages` by up to one THP less one base page (511 pages),
#   and the count says so;
# * so bound a partial move with `max_pages`, not with a shorter `end`:
#   an `end` inside a THP moves the whole THP but counts only the pages
#   before `end` (the rest show up as `already` on the next call). A
#   VMA's own end is always safe: a THP never crosses a VMA boundary.


def move_range(pid: int, start: int, end: int, page_size: int, target_node: int,
               max_pages: int | None = None, batch_pages: int = DEFAULT_BATCH_PAGES,
               flags: int = MPOL_MF_MOVE) -> MoveResult:
    """Move the pages of [start, end) of `pid` to `target_node`, in batches.

    Addresses step by `page_size` (the VMA's kernelpagesize_kB from
    numa_maps, so a hugetlb page is addressed once). For each batch of
    about `batch_pages` pages: one query call (nodes=NULL), then one move
    call for only the pages that are present and elsewhere. Counting per
    page:

    * `moved`: was elsewhere, is on the target after the call
      (`moved_from[node]` counts where it came from);
    * `already`: on the target before the call;
    * `absent`: -ENOENT, not populated;
    * `failed[errno name]`: everything else, e.g. EFAULT (shared zero page
      or no mapping), EACCES (shared with another process, without
      MPOL_MF_MOVE_ALL), EBUSY (could not be isolated), EAGAIN (migration
      failed transiently, see NOT_REPORTED), ENOMEM (target node full).

    `requested` is the number of pages examined, always equal to the sum of
    those counts; they are the first `requested` pages of the range, so a
    caller can resume at `start + requested * page_size`. `max_pages` caps
    the pages *sent for moving*: the range is examined only up to the
    max_pages-th page that needs a move (but see huge pages below).

    Why a query comes first, and how transparent huge pages are counted:
    see the notes above.

    Outcomes that are values, never exceptions:
    * the process exits after the first call → `gone=True`, with the counts
      of what was done so far (the unfinished batch is not counted);
    * the target node fills up (the move call fails with ENOMEM) → the
      batch's pages not on the target count as failed ENOMEM and the move
      stops there;
    * EPERM after some batches succeeded (the process exec'd a setuid
      program) → that batch counts as failed EPERM and the move stops.
    Raised: ProcessGone / AccessDenied if the very first call fails (as for
    every other per-process call), AccessDenied for a target node outside
    the process's cpuset (EACCES), OSError(ENODEV) for a node without
    memory, ValueError for misaligned or empty arguments.
    """
    _check_move_args(start, end, page_size, max_pages, batch_pages)
    unit = folio_unit_bytes(page_size)
    batch_bytes = -(-batch_pages * page_size // unit) * unit  # whole units
    t = _Tally(page_size)
    budget = max_pages
    addr = start
    first = True
    while addr < end and (budget is None or budget > 0):
        # End the batch on a unit boundary (the first batch may be short).
        batch_end = min(end, addr - addr % unit + batch_bytes)
        pages = _as_ulongs(range(addr, batch_end, page_size))
        n = len(pages)
        try:
            before, _ = _move_pages_raw(pid, pages, None, 0)
        except (ProcessGone, AccessDenied) as e:
            if first:
                raise  # nothing done yet: the same outcome as any per-process call
            if isinstance(e, ProcessGone):
                t.gone = True
            else:
                t.failed["EPERM"] += n
            break
        first = False

        to_move, cut = _tally_query(before, target_node, budget, t)
        if cut is not None:
            n = cut

        if to_move:
            if budget is not None:
                budget -= len(to_move)
            if _move_batch(pid, pages, before, to_move, target_node, flags, t):
                break
            if cut is not None and unit > page_size:
                n += _count_moved_with_cut_folio(pid, pages, before, cut, unit, target_node, t)
        addr += n * page_size
    return t.result()


def _check_move_args(start: int, end: int, page_size: int, max_pages: int | None, batch_pages: int) -> None:
    if page_size <= 0 or page_size & (page_size - 1):
        raise ValueError(f"page_size {page_size} is not a power of two")
    if start % page_size or start < 0:
        raise ValueError(f"start {start:#x} is not aligned to page_size {page_size}")
    if end < start:
        raise ValueError("end < start")
    if batch_pages < 1:
        raise ValueError("batch_pages must be at least 1")
    if max_pages is not None and max_pages < 0:
        raise ValueError("max_pages must be >= 0")


def _tally_query(before: array, target_node: int, budget: int | None, t: _Tally) -> tuple[list[int], int | None]:
    """Count a batch's query into `t`: (indexes to send, the cut when `budget` ends the batch early)."""
    to_move, already, absent, failed = classify_query(before, target_node)
    cut = None
    if budget is not None and len(to_move) > budget:
        # Examine only up to (and including) the last page we may send.
        cut = to_move[budget - 1] + 1
        to_move = to_move[:budget]
        _, already, absent, failed = classify_query(before[:cut], target_node)
    t.already += already
    t.absent += absent
    t.failed.update(failed)
    return to_move, cut


def _count_moved_with_cut_folio(pid: int, pages: array, before: array, cut: int, unit: int,
                                target_node: int, t: _Tally) -> int:
    """After a budget cut at pages[cut], count the pages that moved anyway.

    A THP containing the last page sent moved whole; its pages after the
    cut (up to the next unit boundary) are on the target now although
    they were elsewhere before. Returns how many were counted as moved
    (they extend the examined prefix).
    """
    stop = cut
    while stop < len(pages) and pages[stop] % unit:
        stop += 1
    if stop == cut:
        return 0
    try:
        now = _move_pages_raw(pid, array(pages.typecode, pages[cut:stop]), None, 0)[0]
    except (ProcessGone, AccessDenied):
        return 0
    extra = 0
    for k, s in enumerate(now):
        was = before[cut + k]
        if s != target_node or was < 0 or was == target_node:
            break  # the moved folio ends here
        t.moved += 1
        t.moved_from[was] += 1
        extra += 1
    return extra


def _move_batch(pid: int, pages: array, before: array, to_move: list[int],
                target_node: int, flags: int, t: _Tally) -> bool:
    """Move pages[to_move] and count them into `t`. Returns True to stop the range."""
    whole = len(to_move) == len(pages)  # the usual batch: every page elsewhere (classify_query)
    sub = pages if whole else array(pages.typecode, (pages[i] for i in to_move))
    nodes = array("i", [target_node]) * len(to_move)
    try:
        after, _ = _move_pages_raw(pid, sub, nodes, flags)
    except ProcessGone:
        t.gone = True
        return True
    except AccessDenied as e:
        if "cpuset" in e.reason:
            raise  # the caller chose a node this process may not use
        t.failed["EPERM"] += len(to_move)
        return True
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise
        # The target node is full: what got there before the failure counts
        # as moved, the rest of the batch as ENOMEM, and the range stops.
        after = array("i", [-errno.ENOMEM]) * len(to_move)
        stop = True
    else:
        stop = False

    # Pages reported -EBUSY (another base page of a THP already isolated by
    # this call, or a page briefly pinned), not reported (NOT_REPORTED), or
    # caught by ENOMEM may still have moved: ask once where they are now.
    # (array.count is C: a batch that all arrived needs no loop at all.)
    if after.count(target_node) != len(after):
        recheck = [k for k, s in enumerate(after)
                   if s in (-errno.EBUSY, -errno.ENOMEM, NOT_REPORTED)]
        if recheck:
            try:
                now = _move_pages_raw(pid, array(sub.typecode, (sub[k] for k in recheck)), None, 0)[0]
            except (ProcessGone, AccessDenied):
                now = array("i")
            for k, s in zip(recheck, now):
                if s == target_node:
                    after[k] = s
    tally_moved(before, to_move, after, target_node, t)
    return stop


def tally_moved(before: Sequence[int], to_move: Sequence[int], after: Sequence[int], target_node: int,
                t: _Tally) -> None:
    """Count a move call's statuses into `t`: after[k] is where before[to_move[k]]'s page is now.

    Pure. On the target: moved (from the node it was on); on another node
    without an error: EAGAIN (migrated back by someone else in between, or
    left where it was: retry later); an error: by its name.
    """
    if len(after) == len(to_move) and after.count(target_node) == len(after):
        # Every page sent arrived (the common batch): counted in C.
        t.moved += len(after)
        came_from = before if len(to_move) == len(before) else [before[i] for i in to_move]
        if came_from and came_from.count(came_from[0]) == len(came_from):
            t.moved_from[came_from[0]] += len(came_from)
        else:
            t.moved_from.update(Counter(came_from))
        return
    for k, s in enumerate(after):
        if s == target_node:
            t.moved += 1
            t.moved_from[before[to_move[k]]] += 1
        elif s >= 0:
            t.failed["EAGAIN"] += 1
        else:
            t.failed[errno_name(s)] += 1


# --- migrate_pages(2) and memory policy ---------------------------------------

def _nodemask(nodes: Iterable[int]) -> tuple[array, int]:
    """A nodemask as unsigned longs, and the maxnode argument for it.

    The kernel's get_nodes() (mm/mempolicy.c) starts with `--maxnode` and
    then reads maxnode bits: a historical off-by-one that the ABI keeps.
    So to pass a mask of B bits, maxnode is B + 1 (libnuma does the same:
    `nodemask->size + 1`). Bits past the kernel's MAX_NUMNODES must be zero,
    which they are: the mask is only as long as the highest node asks.
    """
    ns = sorted(set(nodes))
    if ns and ns[0] < 0:
        raise ValueError(f"negative node id {ns[0]}")
    nbits = max(_BITS_PER_LONG, ((ns[-1] // _BITS_PER_LONG) + 1) * _BITS_PER_LONG if ns else 0)
    mask = array("L", [0]) * (nbits // _BITS_PER_LONG)
    for n in ns:
        mask[n // _BITS_PER_LONG] |= 1 << (n % _BITS_PER_LONG)
    return mask, nbits + 1


def migrate_pages(pid: int, old_nodes: Iterable[int], new_nodes: Iterable[int]) -> int:
    """migrate_pages(2): move all of `pid`'s pages on old_nodes to new_nodes.

    Returns the number of pages that could not be moved (the syscall's
    non-negative result). Pages shared with other processes move only with
    CAP_SYS_NICE (the kernel then uses MPOL_MF_MOVE_ALL). Raises
    ProcessGone, AccessDenied (EPERM: ptrace check, or new_nodes outside
    the target's cpuset without CAP_SYS_NICE), OSError otherwise (EINVAL
    for a node that does not exist).

    Whole-process moves, measured in the 2node guest (QEMU/TCG on a shared
    2-core host, load average 4-6): a fresh 256 MiB workload first-touched
    on node 1 moved to node 0, either by migrate_pages(pid, [1], [0]) or
    by move_range over every VMA numa_maps shows off node 0; 15 paired runs
    in alternating order, both moving the same pages (/proc/vmstat
    pgmigrate_success +65,543 for either). migrate_pages was faster in 10
    of 15 pairs; the ratio move_range/migrate_pages had a median of 1.5
    (range 0.25-3.5), e.g. one run of 6 pairs: medians 1.62 s vs 2.16 s.
    The gain is real but modest and noisy: one kernel pass over the page
    tables, one folio per THP instead of 512 addresses, no per-page status.
    What migrate_pages lacks is what the balancer's executor needs: no page
    budget (everything in one call, under the target's mmap read lock, not
    interruptible by our SIGTERM), no per-page outcome (only a count of
    pages not moved), no choice of VMAs, and with CAP_SYS_NICE (which the
    daemon has) the kernel uses MPOL_MF_MOVE_ALL, so pages shared with
    other processes (library page cache) move too. Worth it only for a
    whole-process move that fits one pass's budget; move_range otherwise.
    (tests/hardware/test_hw_mover.py
    ::test_migrate_pages_vs_move_range_for_a_whole_process checks both
    and prints one pair of timings.)
    """
    old, maxnode = _nodemask(old_nodes)
    new, maxnode_new = _nodemask(new_nodes)
    if maxnode_new > maxnode:
        old.extend([0] * (len(new) - len(old)))
        maxnode = maxnode_new
    else:
        new.extend([0] * (len(old) - len(new)))
    try:
        return _raw("migrate_pages", ctypes.c_long(pid), ctypes.c_ulong(maxnode),
                    ctypes.c_void_p(old.buffer_info()[0]), ctypes.c_void_p(new.buffer_info()[0]))
    except OSError as e:
        if e.errno == errno.EINVAL:
            # Here EINVAL is about the masks (a node that does not exist),
            # not about the process: report it as is.
            raise
        raise _pid_error(pid, "migrate_pages(2)", e) from None


def set_mempolicy(mode: int, nodes: Iterable[int] = ()) -> None:
    """set_mempolicy(2) for the calling thread (used by the test workload).

    MPOL_DEFAULT and MPOL_LOCAL take no nodes (a NULL mask).
    """
    ns = list(nodes)
    if ns:
        mask, maxnode = _nodemask(ns)
        _raw("set_mempolicy", ctypes.c_long(mode), ctypes.c_void_p(mask.buffer_info()[0]),
             ctypes.c_ulong(maxnode))
    else:
        _raw("set_mempolicy", ctypes.c_long(mode), ctypes.c_void_p(None), ctypes.c_ulong(0))


def get_mempolicy_self() -> tuple[int, frozenset[int]]:
    """The calling thread's policy: (mode, nodes), via get_mempolicy(2)."""
    mode = ctypes.c_int(0)
    mask, maxnode = _nodemask(range(1024))  # room for MAX_NUMNODES up to 1024
    for i in range(len(mask)):
        mask[i] = 0
    _raw("get_mempolicy", ctypes.c_void_p(ctypes.addressof(mode)),
         ctypes.c_void_p(mask.buffer_info()[0]), ctypes.c_ulong(maxnode),
         ctypes.c_void_p(None), ctypes.c_ulong(0))
    nodes = frozenset(i * _BITS_PER_LONG + b for i, w in enumerate(mask)
                      for b in range(_BITS_PER_LONG) if w >> b & 1)
    return mode.value, nodes
