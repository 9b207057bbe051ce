"""Everything one pass plans from, read once before planning: `PassInputs`.

    read_pass_inputs(host, config, hotness, cache, now_s, window_s) -> PassInputs

1. the snapshot (snapshot.py): topology, knobs, vmstat, zones, /proc/stat
   and the candidate processes;
2. on a tiered host with tiering on, the hotness tracker's regions for the
   largest `MAX_TRACKED` processes the selection allows (`HotnessSource`
   owns the tracker: started on the first pass that needs it, closed at
   exit or when a reload turns tiering off);
3. for those processes, their VMA bounds (/proc/<pid>/maps) and where the
   pages of the regions the planner may act on are: move_pages(2) in query
   form, at most `HOT_PLACEMENT_PAGES` pages of hot regions and
   `IDLE_PLACEMENT_PAGES` of idle ones a pass, sampled beyond that. Hot
   regions are asked for as the planner will see them, split at VMA bounds
   (plan/refine.split_hot_at_vmas, the same pure call the planner makes);
3b. with DAMON, a soft-dirty write probe of the processes with a wide hot
   region on the slow tier (observe/probe.py: at most every 10 s a process,
   or 2 s when DAMON's bounds moved outside the last probe; it waits 1 s),
   kept as a `WriteMap` per process, and the placement of the pieces the
   planner will cut those regions into (plan/refine.refine_by_probes);
4. which processes tiering can observe at all (DAMON on the host, or a
   readable /proc/<pid>/pagemap for the soft-dirty fallback): the planner's
   slow-tier rule claims only those.

Nothing here decides; the planner (plan/planner.py) is pure over these.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from autonumad.errors import HostError, NotSupported, ProcessError
from autonumad.host import Host
from autonumad.model import Region
from autonumad.observe.damon import damon_available
from autonumad.observe.probe import WriteProbe
from autonumad.observe.snapshot import HostSnapshot, ScanLimits, SnapshotCache, take_snapshot
from autonumad.observe.tracker import describe, make_tracker, read_vma_ends
from autonumad.plan import selection
from autonumad.plan.refine import WriteMap, split_hot_at_vmas
from autonumad.plan.tiering import is_hot, lukewarm, plan_tiers, regions_to_place

log = logging.getLogger("autonumad")

MAX_TRACKED = 64
# Pages whose node the reader asks the kernel for each pass, over all tracked
# processes: hot regions exactly up to 512 MiB (promotion's >= 99 % needs the
# last pages found), idle ones up to 256 MiB (demotion only needs to know
# roughly where a range's bulk is). Larger regions are sampled. Together
# about 10 ms of kernel time at the 0.05 us a page measured in syscalls.py;
# measured in the tiered TCG guest: 0.3 s a pass for 110,000 pages.
HOT_PLACEMENT_PAGES = 131_072
IDLE_PLACEMENT_PAGES = 65_536

Placement = Mapping[int, Mapping[tuple[int, int], Mapping[int, int]]]  # pid -> {(start, end): {node: bytes}}


@dataclass(frozen=True)
class PassInputs:
    snapshot: HostSnapshot
    now_s: float  # when the pass started, on the daemon's monotonic clock
    window_s: float  # how long the pass may move pages (its deadline minus now_s)
    hotness: Mapping[int, tuple[Region, ...]] = field(default_factory=dict)
    vma_ends: Mapping[int, Mapping[int, int]] = field(default_factory=dict)
    placement: Placement = field(default_factory=dict)
    tier_observable: frozenset[int] = frozenset()  # pids whose memory tiering can see
    tracker: str = "none"  # the tracker in use, for status and metrics
    tracker_cost_s: float = 0.0  # cumulative wall time in the tracker
    tracker_ready_in_s: float | None = None  # seconds until its first sample reports
    write_maps: Mapping[int, WriteMap] = field(default_factory=dict)  # pid -> its last write probe (DAMON)


class HotnessSource:
    """The hotness tracker's lifecycle behind three calls: sample, describe, close."""

    def __init__(self, host: Host, clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.clock = clock
        self.tracker = None
        self.tracker_error: str | None = None
        self.probe = WriteProbe(host, clock)

    @property
    def tracker_name(self) -> str:
        if self.tracker is not None:
            return describe(self.tracker)
        return f"none ({self.tracker_error})" if self.tracker_error else "none"

    @property
    def tracker_cost_s(self) -> float:
        return self.tracker.cost_s if self.tracker is not None else 0.0

    def sample(self, pids: Mapping[int, int], config) -> tuple[Mapping[int, tuple[Region, ...]], float | None]:
        """Track exactly `pids` (pid -> start time, stat field 22) from now on; their regions, and
        seconds until the tracker reports."""
        tracker = self._tracker(config)
        if tracker is None:
            return {}, None
        hot = {}
        try:
            tracker.track(pids)
            hot = tracker.sample()
        except (NotSupported, HostError, OSError) as e:
            log.warning("hotness tracker %s failed: %s", tracker.name, e)
        return hot, tracker.ready_in_s()

    def _tracker(self, config):
        if self.tracker is None and self.tracker_error is None:
            try:
                self.tracker = make_tracker(self.host, config.tiering, Path(config.daemon.runtime_dir), self.clock)
                log.info("tiering: hotness tracker %s", describe(self.tracker))
            except (NotSupported, HostError, OSError) as e:
                self.tracker_error = str(e)
                log.warning("tiering: no hotness tracker: %s", e)
        return self.tracker

    def close(self) -> None:
        if self.tracker is not None:
            try:
                self.tracker.close()
            except (HostError, OSError) as e:
                log.warning("tiering: closing the hotness tracker: %s", e)
            self.tracker = None
        self.tracker_error = None
        self.probe.forget()  # a later tracker's regions start without old write maps


def scan_limits(config) -> ScanLimits:
    return ScanLimits(min_rss_bytes=config.balance.min_rss_bytes,
                      max_detailed=config.balance.scan_max_processes or None,
                      numa_maps_refresh_s=config.balance.numa_maps_refresh_s)


def read_pass_inputs(host: Host, config, hotness: HotnessSource | None, cache: SnapshotCache | None,
                     now_s: float, window_s: float, limits: ScanLimits | None = None) -> PassInputs:
    """Read the host for one pass (module docstring). Raises HostError only for host-level files."""
    snap = take_snapshot(host, limits or scan_limits(config), cache=cache)
    tiered = config.tiering.enabled and plan_tiers(snap.topology, config.tiering) is not None
    if not tiered:
        if hotness is not None:
            hotness.close()
        return PassInputs(snap, now_s, window_s)
    observable = tier_observable(host, snap, config)
    if hotness is None:
        return PassInputs(snap, now_s, window_s, tier_observable=observable)
    hot, ready_in_s = hotness.sample(tracked_pids(snap, config), config)
    ends = read_vma_ends(host, hot)
    placement, maps = read_hot_placement(host, hotness, snap, hot, ends, config.tiering)
    return PassInputs(snap, now_s, window_s, hot, ends, placement, observable, hotness.tracker_name,
                      hotness.tracker_cost_s, ready_in_s, maps)


def read_hot_placement(host: Host, hotness: HotnessSource, snap: HostSnapshot, hot, ends, t) -> tuple[dict, dict]:
    """Where the pages of the regions the planner will see are, and (DAMON) the write probes' maps.

    The planner refines the tracker's regions (plan/tiering.refine_hotness): split at VMA bounds,
    then cut to what a write probe saw written. Both are pure calls made here too, only to know
    which ranges to ask the kernel about.
    """
    split = split_hot_at_vmas(hot, ends, lambda r: is_hot(r, t))
    placement = read_placement(host, split, t)
    tracker = hotness.tracker
    if tracker is None or tracker.name != "damon":
        return placement, {}
    plan = plan_tiers(snap.topology, t)
    _, placement = hotness.probe.refine(split, placement, lambda r: is_hot(r, t), plan.slow_nodes, lukewarm(t),
                                        t.hot_access_fraction,
                                        lambda pid, ranges: host.range_nodes(pid, ranges, HOT_PLACEMENT_PAGES),
                                        {p.pid: p.start_ticks for p in snap.processes})
    return placement, {pid: m for pid, m in hotness.probe.last.items() if pid in split}


def tracked_pids(snap: HostSnapshot, config) -> dict[int, int]:
    """The largest MAX_TRACKED processes the selection lets tiering manage: pid -> start time (the
    trackers act on a process, DAMON by monitoring it and soft-dirty by clearing its bits, only while
    its pid is still that process)."""
    ok = [p for p in snap.processes if selection.select(p, config.balance, snap.topology) is None and p.total_pages]
    ok.sort(key=lambda p: (-p.total_pages, p.pid))
    return {p.pid: p.start_ticks for p in ok[:MAX_TRACKED]}


def tier_observable(host: Host, snap: HostSnapshot, config) -> frozenset[int]:
    """Processes whose memory tiering can see: all with DAMON, else those with a readable pagemap."""
    if config.tiering.tracker in ("auto", "damon") and damon_available(host):
        return frozenset(p.pid for p in snap.processes)
    return frozenset(p.pid for p in snap.processes if host.exists(f"/proc/{p.pid}/pagemap"))


def read_placement(host: Host, hot: Mapping[int, tuple[Region, ...]], t) -> dict:
    """pid -> {(start, end): {node: bytes}} for the regions the planner may act on."""
    want = {pid: regions_to_place(regions, t) for pid, regions in hot.items()}
    want = {pid: regions for pid, regions in want.items() if regions}
    out: dict[int, dict[tuple[int, int], dict[int, int]]] = {}
    for pid, regions in want.items():
        for want_hot, budget in ((True, HOT_PLACEMENT_PAGES), (False, IDLE_PLACEMENT_PAGES)):
            ranges = [(r.start, r.end) for r in regions if is_hot(r, t) == want_hot]
            if not ranges:
                continue
            try:
                nodes = host.range_nodes(pid, ranges, max(1, budget // len(want)))
            except (ProcessError, OSError) as e:
                log.debug("pid %d: page locations not read: %s", pid, e)
                break
            out.setdefault(pid, {}).update(zip(ranges, nodes))
    return out
