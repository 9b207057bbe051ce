"""A soft-dirty write probe: which parts of a wide hot region are really written (issue 16).

DAMON's vaddr regions are adaptive guesses (Documentation/admin-guide/mm/
damon/design.rst, "Adaptive Regions Adjustment"): a region sampled at one
random address per sampling interval can span the end of a hot mapping and
the start of a cold one, above all when the kernel merged the two into one
VMA (adjacent anonymous mappings with equal flags merge), so VMA bounds do
not separate them either. Before such a region is promoted, the probe
clears the process's soft-dirty bits (write "4" to /proc/<pid>/clear_refs,
Documentation/admin-guide/mm/soft-dirty.rst), waits `window_s`, and reads
bit 55 of /proc/<pid>/pagemap (Documentation/admin-guide/mm/pagemap.rst)
over the region, per granule of `granule_pages`. Only the granules written
are promoted: the probe only reads (`WriteProbe.observe` -> a `WriteMap` per
process, into PassInputs); the cut is the planner's (plan/refine.py
`refine_by_probes`). `WriteProbe.refine` composes the two for the read step,
which needs the pieces' page placement before planning.

Cost and limits. Each probe write-protects the process's pages, so its
next write to each page takes one minor fault (not a NUMA hint fault; no
migration, no TLB shootdown beyond the clear's): the probe runs for a
process at most every `interval_s`, and only when it has a wide hot region
with bytes on the slow tier (or, at most every 2 s, when a region lies
outside the last probe's ranges, or when the last probe saw writes no
earlier one had while a region still has parts never seen written).
Between probes the maps are used; parts of a region no probe read are not
promoted until a probe reads them.

Probes add up. A window sees the writes made during it, and a process
that sweeps its hot set more slowly than the window (in the tiered TCG
guest under load, a 64 MiB sweep with every page write-protected by the
clear took longer than 1 s) is seen writing only part of it: the rest is
not cold. What a process's probes of the last `WRITE_MEMORY_S` saw written
counts as written (plan/refine.union_of); a range is refined away only
when none of them saw it written. Before, each probe's map replaced the
last, and hot memory outside the newest window waited for a later one.
Soft-dirty sees writes only: when the probe saw the process write nowhere
in the ranges it read (read-mostly data), its regions are promoted as DAMON
reported them, and the reason says so; a region with no write while others
of the process were written is left where it is. The soft-dirty fallback tracker does its own clearing; the probe is for
DAMON only (observe/inputs.py). Bits cleared here are also cleared for any
other soft-dirty user of the process (CRIU's incremental dumps), as with
the fallback tracker.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Sequence

from autonumad.errors import ParseError, ProcessError
from autonumad.model import Region
from autonumad.observe.tracker import GRANULE_PAGES
from autonumad.plan.refine import (MIN_SPACING_S, WriteMap, merge_ranges, probe_targets, refine_by_probes,
                                   uncovered, union_of, written_ranges)
from autonumad.readers.pagemap import clear_soft_dirty, read_pagemap

log = logging.getLogger("autonumad")

PROBE_WINDOW_S = 1.0
PROBE_INTERVAL_S = 10.0
# How long a range seen written by a probe counts as written. Three
# intervals: long enough for a few probes to add up, short enough that a
# range written once and then left does not count as hot for long (DAMON
# stops reporting it hot sooner anyway).
WRITE_MEMORY_S = 3 * PROBE_INTERVAL_S
__all__ = ["MIN_SPACING_S", "PROBE_INTERVAL_S", "PROBE_WINDOW_S", "WRITE_MEMORY_S", "WriteProbe"]

Placement = Mapping[tuple[int, int], Mapping[int, int]]


class WriteProbe:
    def __init__(self, host, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 window_s: float = PROBE_WINDOW_S, interval_s: float = PROBE_INTERVAL_S,
                 granule_pages: int = GRANULE_PAGES):
        self.host = host
        self.clock = clock
        self.sleep = sleep
        self.window_s = window_s
        self.interval_s = interval_s
        self.granule_pages = granule_pages
        self.page_size = host.page_size_bytes
        self.last: dict[int, WriteMap] = {}  # pid -> the union of its probes in the last WRITE_MEMORY_S
        self._maps: dict[int, list[WriteMap]] = {}  # pid -> those probes, one map each
        self._grew: dict[int, bool] = {}  # pid -> its last probe saw writes no earlier one had
        self.probes = 0  # probes run, for tests and logs
        # Seconds from the last refine() until a deferred region can be probed (None: nothing deferred).
        self.recheck_in_s: float | None = None
        self.cost_s = 0.0

    def observe(self, hot: Mapping[int, Sequence[Region]], placement: Mapping[int, Placement], is_hot,
                slow_nodes, start_ticks: Mapping[int, int]) -> dict[int, WriteMap]:
        """Probe the processes with a hot region worth it that are due; every such process's last map.

        `start_ticks`: pid -> the snapshot's start time of that process (a probe clears its soft-dirty
        bits, so it is only done on the process the snapshot saw: readers/pagemap.clear_soft_dirty)."""
        want = probe_targets(hot, placement, is_hot, slow_nodes)
        for pid in list(self.last):
            if pid not in hot:
                self.forget(pid)
        if want:
            t0 = self.clock()
            self._probe({pid: rs for pid, rs in want.items() if self._due(pid, rs, t0)}, start_ticks)
            self.cost_s += self.clock() - t0
        return {pid: self.last[pid] for pid in want if pid in self.last}

    def forget(self, pid: int | None = None) -> None:
        """Drop the maps of `pid` (None: of every process)."""
        for d in (self.last, self._maps, self._grew):
            if pid is None:
                d.clear()
            else:
                d.pop(pid, None)

    def refine(self, hot: Mapping[int, Sequence[Region]], placement: Mapping[int, Placement], is_hot,
               slow_nodes, lukewarm: float, hot_level: float,
               place: Callable[[int, list[tuple[int, int]]], list[dict[int, int]] | None],
               start_ticks: Mapping[int, int]) -> tuple[dict[int, tuple[Region, ...]], dict[int, dict]]:
        """Hot regions cut to what was written (plan/refine.py); their pieces' placement from `place(pid, ranges)`.

        Returns new hotness and placement maps (the inputs are not changed).
        """
        seen = self.observe(hot, placement, is_hot, slow_nodes, start_ticks)
        out_hot, fresh, self.recheck_in_s = refine_by_probes(hot, placement, seen, is_hot, slow_nodes, lukewarm,
                                                             self.clock(), hot_level)
        out_place = {pid: dict(p) for pid, p in placement.items()}
        for pid, pieces in fresh.items():
            try:
                nodes = place(pid, [(p.start, p.end) for p in pieces])
            except (ProcessError, OSError) as e:
                log.debug("pid %d: page locations of refined ranges not read: %s", pid, e)
                nodes = None
            if nodes is not None:
                out_place.setdefault(pid, {}).update(zip(((p.start, p.end) for p in pieces), nodes))
        return out_hot, out_place

    def _due(self, pid: int, regions: Sequence[Region], now: float) -> bool:
        """Probe again after interval_s; after MIN_SPACING_S when a region lies outside the probes, or
        when the last probe saw new writes and a region has parts never seen written (the probes have
        not seen the whole hot set yet; a cold part next to a hot one stops this once a probe adds
        nothing)."""
        seen = self.last.get(pid)
        if seen is None:
            return True
        age = now - seen.when_s
        if age >= self.interval_s:
            return True
        if age < MIN_SPACING_S:
            return False
        if any(uncovered(r.start, r.end, seen.probed) for r in regions):
            return True
        return self._grew.get(pid, False) and any(uncovered(r.start, r.end, seen.written) for r in regions)

    def _probe(self, want: Mapping[int, Sequence[Region]], start_ticks: Mapping[int, int]) -> None:
        cleared = []
        for pid in want:
            try:
                clear_soft_dirty(self.host, pid, start_ticks.get(pid, 0))
                cleared.append(pid)
            except (ProcessError, OSError) as e:
                log.debug("pid %d: soft-dirty probe not started: %s", pid, e)
        if not cleared:
            return
        # One window for every process probed this pass.
        self.sleep(self.window_s)
        now = self.clock()
        for pid in cleared:
            self._read(pid, want[pid], now)

    def _read(self, pid: int, regions: Sequence[Region], now: float) -> None:
        probed, written = [], []
        try:
            for r in regions:
                bits = read_pagemap(self.host, pid, r.start, r.end, self.page_size)
                probed.append((r.start, r.end))
                written += written_ranges(r.start, bits.soft_dirty, bits.present, self.page_size,
                                          self.granule_pages)
        except (ProcessError, OSError, ParseError) as e:
            log.debug("pid %d: soft-dirty probe not read: %s", pid, e)
            return
        self.probes += 1
        new = WriteMap(now, self.window_s, tuple(merge_ranges(sorted(probed))), tuple(merge_ranges(sorted(written))))
        before = self.last.get(pid)
        self._grew[pid] = before is None or any(uncovered(s, e, before.written) for s, e in new.written)
        self._maps[pid] = [m for m in self._maps.get(pid, ()) if now - m.when_s < WRITE_MEMORY_S] + [new]
        self.last[pid] = union_of(self._maps[pid])
        u = self.last[pid]
        log.debug("pid %d: write probe over %d range(s): %.1f of %.1f MiB written in %.1f s; %.1f MiB seen written "
                  "in its %d probe(s) of the last %g s", pid, len(probed), sum(e - s for s, e in written) / 2**20,
                  sum(e - s for s, e in probed) / 2**20, self.window_s, sum(e - s for s, e in u.written) / 2**20,
                  u.probes, WRITE_MEMORY_S)
