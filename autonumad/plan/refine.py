"""Refinements of the tiering decision (issue 16): pure functions, each hooked in with one call.

- `split_at_vmas`: a tracker region that crosses VMA bounds becomes one
  region per VMA piece. DAMON's vaddr regions are its own guesses
  (Documentation/admin-guide/mm/damon/design.rst, "Adaptive Regions
  Adjustment"): they ignore VMA bounds inside the three big chunks of the
  address space, so one region can hold the end of a hot mapping and the
  start of a cold one.
- `split_edges`: the other way round, a region DAMON reads as idle can
  hold the *edge of a hot mapping*: one sampled address per interval over
  a 325 MiB region lying mostly in an idle mapping almost never lands on
  the 1 MiB of a hot mapping at its end (bench-tiering's `compete` case,
  session 5: those pages stayed on the slow tier for good). The piece of
  such a region inside a VMA that has a hot region is split off as an
  *edge piece*, keeping the region's level and age (DAMON said nothing
  about it either way), and is probed like a wide hot region when it has
  bytes on the slow tier: only what a write probe sees written in it is
  promoted.
- `refine_by_writes` (per region) and `refine_by_probes` (the planner's
  phase, over every process's `WriteMap`): a wide hot region is cut to the
  sub-ranges seen written in a short soft-dirty probe (observe/probe.py
  reads it before planning; `probe_targets` says which regions it reads
  for, the same predicate in both places); the rest of it
  stays where it is, and every piece says how much was refined away. A
  region DAMON sees accessed is promoted whole only when the probe saw no
  write in it at all (read-mostly data: soft-dirty sees writes only), and
  its note says so.
- `demotion_key`: demotion candidates ranked by what demoting them frees:
  colder class first (idle cold_age_s, then idle exchange_age_s), then the
  bytes they hold on the fast node (the move_pages(2) placement query),
  then the longest idle.
- `top_up`: demotions that moved less than planned (pages no longer there,
  per-page failures) are made good from the pass's spare candidates (the
  plan's `Plan.top_up`, which the executor calls once after the planned
  actions, in the same run, budget and deadline), so a
  pass keeps demoting until the free target is met or the planned bytes
  are spent.
- `explain_failures`: per-errno page counts of a move, in words
  (move_pages(2), "Page status").
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

from autonumad.model import DEFAULT_PAGE_BYTES, Region

MIB = 1 << 20

# -- splitting at VMA bounds ----------------------------------------------------------------------


def split_at_vmas(region: Region, bounds: Sequence[tuple[int, int]],
                  starts: Sequence[int] | None = None) -> list[Region]:
    """`region` cut at the bounds of the VMAs it overlaps (`bounds`: sorted (start, end) of the VMAs;
    `starts`: their starts, when the caller has them already).

    Gaps between VMAs are dropped (nothing is mapped there). A region inside
    one VMA comes back unchanged. Each piece of a split region keeps the
    region's access level and age (DAMON measured them for the whole) and a
    note of the split.
    """
    pieces = [(max(s, region.start), min(e, region.end))
              for s, e in _vmas_overlapping(region.start, region.end, bounds, starts)]
    if len(pieces) == 1 and pieces[0] == (region.start, region.end):
        return [region]
    if not pieces:
        return [region]  # nothing known about its mapping: leave it as the tracker said
    note = (f"split at VMA bounds from {_mib(region.size_bytes)} at {region.start:#x} into {len(pieces)} "
            f"piece(s)")
    return [replace(region, start=s, end=e, note=_join(region.note, note)) for s, e in pieces]


def split_hot_at_vmas(hotness: Mapping[int, Sequence[Region]], vma_ends: Mapping[int, Mapping[int, int]],
                      is_hot) -> dict[int, tuple[Region, ...]]:
    """Every hot region of every process split at its VMA bounds (`vma_ends`: pid -> {start: end}),
    and the edge pieces of hot VMAs split off the other regions (`split_edges`)."""
    out = {}
    for pid, regions in hotness.items():
        ends = vma_ends.get(pid)
        if not ends:
            out[pid] = tuple(regions)
            continue
        bounds = sorted(ends.items())
        starts = [s for s, _ in bounds]  # once per process: a process can have 100,000 VMAs
        new: list[Region] = []
        for r in regions:
            new.extend(split_at_vmas(r, bounds, starts) if is_hot(r) else (r,))
        out[pid] = tuple(split_edges(new, bounds, is_hot, starts))
    return out


EDGE_NOTE = "edge of a hot VMA"
# A piece is an edge only while it is at most this share of its region.
# DAMON checks one random address of a region per sampling interval
# (Documentation/mm/damon/design.rst, "Region Based Sampling"): a piece
# that is 1/8 of a region gets 2.5 of an aggregation's 20 samples, so had
# it been accessed throughout, DAMON would almost surely have seen it (no
# hit in 20: (7/8)^20, 7 %). Past that share DAMON's reading stands, and
# the piece is not probed (each probe write-protects the whole process).
EDGE_MAX_SHARE = 1 / 8


def is_edge(region: Region) -> bool:
    """A piece split_edges made: promoted only where a write probe sees it written."""
    return region.note.startswith(EDGE_NOTE)


def split_edges(regions: Sequence[Region], bounds: Sequence[tuple[int, int]], is_hot,
                starts: Sequence[int] | None = None) -> list[Region]:
    """Regions that are not hot and cross a VMA bound into a VMA with a hot region, cut at the VMA
    bounds; a piece in such a VMA, at most EDGE_MAX_SHARE of its region, is an edge piece (its note),
    the others plain pieces. Every piece keeps the region's level and age. `regions`: one process's;
    `bounds`: its VMAs, sorted."""
    starts = starts if starts is not None else [s for s, _ in bounds]
    hot_vmas: set[tuple[int, int]] = set()
    for r in regions:
        if is_hot(r):
            hot_vmas.update(_vmas_overlapping(r.start, r.end, bounds, starts))
    if not hot_vmas:
        return list(regions)
    out: list[Region] = []
    for r in regions:
        vmas = _vmas_overlapping(r.start, r.end, bounds, starts)
        if is_hot(r) or len(vmas) < 2 or not hot_vmas.intersection(vmas):
            out.append(r)
            continue
        for s, e in vmas:
            lo, hi = max(s, r.start), min(e, r.end)
            if (s, e) not in hot_vmas or hi - lo > EDGE_MAX_SHARE * r.size_bytes:
                out.append(replace(r, start=lo, end=hi))
                continue
            note = (f"{EDGE_NOTE}: {_mib(hi - lo)} of a {_mib(r.size_bytes)} region at {r.start:#x} read at "
                    f"{r.accesses_fraction:.0%}, most of it in another mapping")
            out.append(replace(r, start=lo, end=hi, note=note))
    return out


def _vmas_overlapping(start: int, end: int, bounds: Sequence[tuple[int, int]],
                      starts: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The VMAs of sorted `bounds` (with `starts`, their starts) that overlap [start, end)."""
    if starts is None:
        starts = [s for s, _ in bounds]
    i = max(0, bisect_right(starts, start) - 1)
    out = []
    while i < len(bounds) and bounds[i][0] < end:
        if bounds[i][1] > start:
            out.append(bounds[i])
        i += 1
    return out


# -- refining by writes seen in a probe ------------------------------------------------------------

# Regions narrower than this are promoted as the tracker reports them: DAMON
# splits regions adaptively down to its minimum region size, and a few MiB
# of error is cheaper to move than to probe.
REFINE_MIN_BYTES = 4 * MIB


def refine_by_writes(region: Region, written: Sequence[tuple[int, int]], lukewarm: float,
                     window_s: float, written_elsewhere: bool = False, probes: int = 1) -> list[Region]:
    """`region` cut to the ranges of `written` (sorted, disjoint (start, end)) it overlaps.

    Pieces written in the probe keep the region's access level; the rest
    come back with `lukewarm` (above 0, below the hot threshold: neither
    promoted nor demoted, since DAMON did see the region accessed). Every
    piece's note says how much of the region the probe refined away. No
    write in the region at all: if the probe saw the process write
    elsewhere (`written_elsewhere`), the whole region is lukewarm; if it saw
    no write anywhere (read-mostly data, which soft-dirty cannot see), the
    region unchanged with a note. `written` may be the union of `probes`
    probes of `window_s` each (WriteMap).
    """
    seen = _probes_text(window_s, probes)
    hot = _clip(region, written)
    if not hot and written_elsewhere:
        return [replace(region, accesses_fraction=lukewarm, note=_join(
            region.note, f"refined: none of its {_mib(region.size_bytes)} written in {seen} that saw the "
                         "process write elsewhere, left where it is"))]
    if not hot:
        return [replace(region, note=_join(region.note, f"not refined: no write seen in {_mib(region.size_bytes)} "
                                                         f"in {seen} (reads are invisible to it)"))]
    kept = sum(e - s for s, e in hot)
    away = region.size_bytes - kept
    if not away:
        return [region]
    note = (f"refined: {_mib(away)} of the {_mib(region.size_bytes)} region at {region.start:#x} not written in "
            f"{seen}, left where it is")
    return _cut(region, hot,
                inside=lambda s, e: replace(region, start=s, end=e, note=_join(region.note, note)),
                outside=lambda s, e: replace(region, start=s, end=e, accesses_fraction=lukewarm, note=note))


def _clip(region: Region, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint `ranges` inside `region`, touching ones merged."""
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        lo, hi = max(s, region.start), min(e, region.end)
        if lo < hi:
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
    return out


def _cut(region: Region, ranges: Sequence[tuple[int, int]], inside, outside) -> list[Region]:
    """`region` in pieces at the bounds of `ranges` (from _clip): inside(s, e) for the pieces they
    cover, outside(s, e) for the rest, in address order."""
    out, pos = [], region.start
    for s, e in ranges:
        if pos < s:
            out.append(outside(pos, s))
        out.append(inside(s, e))
        pos = e
    if pos < region.end:
        out.append(outside(pos, region.end))
    return out


def _probes_text(window_s: float, probes: int) -> str:
    if probes <= 1:
        return f"a {window_s:g} s soft-dirty probe"
    return f"{probes} soft-dirty probes of {window_s:g} s"


def written_ranges(start: int, dirty: bytes, present: bytes, page_size: int,
                   granule_pages: int) -> list[tuple[int, int]]:
    """Granules of [start, ...) with at least one present page written, merged into ranges.

    `dirty`/`present` are one byte per page (readers/pagemap.PageBits).
    """
    out: list[tuple[int, int]] = []
    n = len(dirty)
    for first in range(0, n, granule_pages):
        k = min(granule_pages, n - first)
        if not dirty.count(1, first, first + k):
            continue
        s, e = start + first * page_size, start + (first + k) * page_size
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def wants_probe(region: Region, slow_bytes: int) -> bool:
    """A hot region worth probing: wide, or an edge piece (split_edges), with bytes on the slow tier
    (a promotion would move them)."""
    return (region.size_bytes >= REFINE_MIN_BYTES or is_edge(region)) and slow_bytes > 0


# The last probe of a process saw these; a region outside them (DAMON moved
# its bounds, a hot window slid) is probed again this long after it.
MIN_SPACING_S = 2.0


@dataclass(frozen=True, slots=True)
class WriteMap:
    """What the last soft-dirty write probe of one process saw (observe/probe.py reads it)."""

    when_s: float  # when its window ended, on the daemon's clock
    window_s: float
    probed: tuple[tuple[int, int], ...]  # ranges it read, sorted and disjoint
    written: tuple[tuple[int, int], ...]  # ranges seen written in them, sorted and disjoint
    probes: int = 1  # probes whose ranges are merged in here (union_of)


def union_of(maps: Sequence[WriteMap]) -> WriteMap:
    """Several probes of one process as one map: what any of them read, what any of them saw written.

    Written wins over unwritten: a window can miss a write (the process
    wrote that part before or after it), it cannot invent one. The newest
    probe's time is the map's.
    """
    last = max(maps, key=lambda m: m.when_s)
    return WriteMap(last.when_s, last.window_s, tuple(merge_ranges(sorted(r for m in maps for r in m.probed))),
                    tuple(merge_ranges(sorted(r for m in maps for r in m.written))),
                    sum(m.probes for m in maps))


def probe_targets(hot: Mapping[int, Sequence[Region]], placement, is_hot,
                  slow_nodes) -> dict[int, list[Region]]:
    """Per process, the regions worth a probe: placed, hot and wide or an edge piece, with bytes on the
    slow tier."""
    slow = set(slow_nodes)
    want: dict[int, list[Region]] = {}
    for pid, regions in hot.items():
        placed = placement.get(pid, {})
        for r in regions:
            by_node = placed.get((r.start, r.end))
            if by_node is None or not (is_hot(r) or is_edge(r)):
                continue
            if wants_probe(r, sum(b for n, b in by_node.items() if n in slow)):
                want.setdefault(pid, []).append(r)
    return want


def refine_by_probes(hot: Mapping[int, Sequence[Region]], placement, probes: Mapping[int, WriteMap], is_hot,
                     slow_nodes, lukewarm: float, now_s: float, hot_level: float
                     ) -> tuple[dict[int, tuple[Region, ...]], dict[int, list[Region]], float | None]:
    """Hot regions cut to what the last write probe of their process saw written; edge pieces raised
    to `hot_level` (the hot threshold) where it saw them written.

    Returns the new hotness, the pieces per process that are new ranges
    (their placement is not known yet), and the seconds until a region
    deferred for a probe of its range can be probed (None: nothing deferred).
    Parts of a region the last probe did not read wait for the next one (at
    most MIN_SPACING_S away): promoting them unseen is how cold memory next
    to a hot mapping was promoted (issue 16).
    """
    out = dict(hot)
    fresh: dict[int, list[Region]] = {}
    waits: list[float] = []
    for pid, targets in probe_targets(hot, placement, is_hot, slow_nodes).items():
        seen = probes.get(pid)
        if seen is None:
            continue
        out[pid], new, wait = _refine_process(hot[pid], {(r.start, r.end) for r in targets}, seen, lukewarm, now_s,
                                              hot_level)
        if new:
            fresh[pid] = new
        if wait is not None:
            waits.append(wait)
    return out, fresh, min(waits) if waits else None


def _refine_process(regions: Sequence[Region], targets, seen: WriteMap, lukewarm: float,
                    now_s: float, hot_level: float) -> tuple[tuple[Region, ...], list[Region], float | None]:
    new: list[Region] = []
    fresh: list[Region] = []
    wait = None
    for r in regions:
        if (r.start, r.end) not in targets:
            new.append(r)
            continue
        if is_edge(r):
            pieces = _refine_edge(r, seen, hot_level)
        elif uncovered(r.start, r.end, seen.probed) and not any(s < r.end and r.start < e for s, e in seen.written):
            new.append(replace(r, accesses_fraction=lukewarm,
                               note="waits for a write probe of its range (its bounds moved since the last)"))
            w = max(0.0, seen.when_s + MIN_SPACING_S - now_s)
            wait = w if wait is None else min(wait, w)
            continue
        else:
            pieces = refine_by_writes(r, seen.written, lukewarm, seen.window_s, bool(seen.written), seen.probes)
        new.extend(pieces)
        fresh.extend(p for p in pieces if (p.start, p.end) != (r.start, r.end))
    return tuple(new), fresh, wait


def _refine_edge(region: Region, seen: WriteMap, hot_level: float) -> list[Region]:
    """An edge piece: the parts the probes saw written become hot; the rest keeps DAMON's level.

    Unlike a hot region's unwritten part (lukewarm), an edge piece's is left as DAMON read it: it
    stays a demotion candidate when that says idle, and is not promoted on reads the probe cannot see
    (DAMON did not see them either).
    """
    written = _clip(region, seen.written)
    if not written:
        return [region]
    seen_text = _probes_text(seen.window_s, seen.probes)
    return _cut(region, written,
                inside=lambda s, e: replace(region, start=s, end=e,
                                            accesses_fraction=max(hot_level, region.accesses_fraction),
                                            note=f"{region.note}; {_mib(e - s)} of it written in {seen_text}"),
                outside=lambda s, e: replace(region, start=s, end=e))


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges, overlapping or touching ones merged."""
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def uncovered(start: int, end: int, covered: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of [start, end) outside the sorted, disjoint `covered` ranges."""
    out, pos = [], start
    for s, e in covered:
        if e <= pos or s >= end:
            continue
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < end:
        out.append((pos, end))
    return out


# -- demotion ranking and top-up ---------------------------------------------------------------------

def demotion_key(fast_bytes: int, age_s: float, cold_age_s: float, exchange_age_s: float) -> tuple:
    """Sort key, best first: colder class, then more bytes on the fast node, then longer idle.

    Bytes on the fast node are what a demotion frees there; a region
    idle for longer but holding nothing on the node frees nothing (issue 16:
    a 5 MiB region with no page on node 0 was demoted and the pass ended
    with the free target missed).
    """
    cls = 0 if age_s >= cold_age_s else 1 if age_s >= exchange_age_s else 2
    return (cls, -fast_bytes, -age_s)


def refill_margin(headroom_bytes: int) -> int:
    """How far above its free target a node is refilled once it fell below: a quarter of the headroom.

    Hysteresis, as between the kernel's low and high watermarks
    (Documentation/admin-guide/sysctl/vm.rst, watermark_scale_factor): a
    node refilled to exactly its target is back below it after the next
    allocation, and the target is then missed at every check in between.
    """
    return max(0, headroom_bytes) // 4


def top_up(planned: Mapping[int, int], spares: Sequence[tuple[int, object]], outcomes: Iterable,
           demote_rule: str) -> list:
    """Spare demotions to run now, because the planned ones freed less than planned.

    `planned`: fast node -> bytes the pass planned to demote from it;
    `spares`: (fast node, Action) in rank order, planned beyond that;
    `outcomes`: the executor's outcomes of the pass. The shortfall of a
    node is what its demotions did not move off it (moved_from counts base
    pages per source node); spares are taken in order, each asked for at
    most the shortfall left, their reasons saying why they run.
    """
    moved: dict[int, int] = {}
    page = DEFAULT_PAGE_BYTES
    for o in outcomes:
        if o.action.rule != demote_rule:
            continue
        page = o.page_size_bytes
        for src, pages in o.moved_from.items():
            moved[src] = moved.get(src, 0) + pages * o.page_size_bytes
    out = []
    short = {n: b - moved.get(n, 0) for n, b in planned.items()}
    for node, a in spares:
        left = short.get(node, 0)
        if left < page:
            continue  # met, to the page (planned bytes are estimates, moves are whole pages)
        take = min(a.bytes, left)
        out.append(replace(a, bytes=take, reason=f"{a.reason}; top-up: this pass's demotions from node {node} "
                                                 f"moved {_mib(planned[node] - left)} of {_mib(planned[node])} "
                                                 "planned"))
        short[node] = left - take
    return out


# -- failures, explained --------------------------------------------------------------------------

# move_pages(2), "Page status" (the per-page status array), and
# Documentation/mm/page_migration.rst for why a page cannot be isolated.
ERRNO_MEANING = {
    "EACCES": "mapped by more than one process (shared, or copy-on-write after fork): MPOL_MF_MOVE moves only "
              "pages this process maps alone",
    "EBUSY": "busy: pinned (get_user_pages, e.g. O_DIRECT or RDMA buffers), under I/O, or held by another kernel "
             "user at the time; may move on a later pass",
    "EFAULT": "the shared zero page or not mapped (nothing to move)",
    "EIO": "dirty file page that could not be written back to move it",
    "EINVAL": "dirty file page whose filesystem cannot migrate it",
    "ENOMEM": "no free memory on the target node",
    "EAGAIN": "migration failed transiently (page refcount changed, lock contended)",
    "ENOENT": "not present",
}


def explain_failures(failures: Mapping[str, int], page_bytes: int = DEFAULT_PAGE_BYTES) -> str:
    """Per-errno page counts in words, largest first: '114 pages (0.4 MiB) EACCES: mapped by ...'."""
    parts = []
    for name, n in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])):
        what = ERRNO_MEANING.get(name, "see move_pages(2)")
        parts.append(f"{n} page(s) ({n * page_bytes / MIB:.1f} MiB) {name}: {what}")
    return "; ".join(parts)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"
