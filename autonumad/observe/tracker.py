"""Hotness trackers: which address ranges of which processes are hot, and how long cold ones have been cold.

One interface, `HotnessTracker`:

    tracker.track(pids)      monitor exactly these processes from now on
                             (pid -> start time, proc(5) stat field 22: a
                             tracker acts only on the process the snapshot
                             saw, never on whoever reused its pid)
    tracker.sample()         {pid: (Region(start, end, accesses_fraction, age_s), ...)}
    tracker.close()          release what the tracker holds in the kernel

`accesses_fraction` is the share of the tracker's observations in its last
window that saw the range accessed (0..1); `age_s` is how long the range
has stayed at about that level. A range is hot when its fraction reaches
`tiering.hot_access_fraction`, cold when its fraction is 0 and its age at
least `tiering.cold_age_s`.

Implementations:

- `DamonTracker` (primary): DAMON's virtual-address monitoring through
  autonumad.observe.damon. Fraction = nr_accesses / (aggr_us / sample_us); age =
  DAMON's age in aggregation intervals times aggr_us. Sees reads and writes;
  costs the kernel a sampling thread, bounded by nr_regions.
- `SoftDirtyTracker` (fallback, kernels without DAMON): soft-dirty bits via
  /proc/<pid>/clear_refs and pagemap, per granule of `GRANULE_PAGES`
  pages. Fraction = written pages / present pages in the granule since the
  last sample; age = time since the granule was last written. Sees writes
  only, so read-mostly hot data looks cold: promotion under this tracker is
  conservative, and demotion of read-hot pages is possible. Clearing the
  bits is visible to any other soft-dirty user of the same process (CRIU's
  incremental dumps), so "auto" prefers DAMON.

`make_tracker(host, tiering_config, runtime_dir)` chooses by
`tiering.tracker`: "auto" is DAMON where /sys/kernel/mm/damon/admin exists
and usable (no other user's kdamond in the way), else soft-dirty.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from autonumad.observe.damon import DamonSession, MonitoringAttrs, damon_available
from autonumad.errors import HostError, NotSupported, ParseError, ProcessError
from autonumad.host import Host
from autonumad.model import DEFAULT_PAGE_BYTES, Region
from autonumad.readers.pagemap import clear_soft_dirty, read_pagemap
from autonumad.readers.proc_maps import read_maps

log = logging.getLogger("autonumad")

# Soft-dirty granule: 64 pages (256 KiB). Fine enough that a 64 MiB hot
# set is 256 granules; coarse enough that a 1 GiB process is 4,096 regions.
GRANULE_PAGES = 64
# DAMON reports nothing for this many aggregation intervals after a
# (re)start: 2 s at the default 100 ms.
WARMUP_AGGREGATIONS = 20


class HotnessTracker(Protocol):
    name: str
    cost_s: float  # wall time spent in sample() and track(), cumulative

    def track(self, pids: Mapping[int, int]) -> None: ...

    def sample(self) -> Mapping[int, tuple[Region, ...]]: ...

    def ready_in_s(self) -> float: ...  # seconds until sample() reports what it sees; 0 when it does

    def close(self) -> None: ...


class DamonTracker:
    name = "damon"

    def __init__(self, host: Host, runtime_dir: str | Path, attrs: MonitoringAttrs = MonitoringAttrs(),
                 clock: Callable[[], float] = time.monotonic, settle_s: float = 0.0, restart_min_s: float = 60.0):
        self.host = host
        self.attrs = attrs
        self.clock = clock
        self.session = DamonSession(host, runtime_dir, attrs, settle_s=settle_s)
        self.cost_s = 0.0
        # A kdamond's first reports are its initial, coarse regions (a hot
        # mapping merged with its cold neighbours: seen promoting 40 MiB of
        # cold memory on the first pass). Its adaptive splitting needs a few
        # dozen aggregation intervals; nothing is reported before that.
        self.warmup_s = WARMUP_AGGREGATIONS * attrs.aggr_us / 1e6
        # When the kdamond started on its current targets (None: not running).
        self.started_s: float | None = None
        # Adding a process restarts the kdamond, and every tracked process
        # loses its regions' ages (damon.DamonSession.monitor). So new
        # processes join at most this often: twice cold_age_s leaves ranges
        # time to be found cold between restarts, however many processes
        # come and go. Departures cost no restart.
        self.restart_min_s = restart_min_s
        self.wanted: tuple[int, ...] = ()
        cleaned = self.session.recover()
        if cleaned:
            log.warning("stopped DAMON kdamond(s) %s left running by a previous autonumad that did not exit "
                        "cleanly", ",".join(map(str, cleaned)))

    def track(self, pids: Mapping[int, int]) -> None:
        t0 = self.clock()
        try:
            # DAMON takes a bare pid and resolves it when the kdamond starts: a pid reused since the
            # snapshot would have another process's accessed bits cleared and reported as ours.
            live = [p for p, ticks in pids.items() if _is_still(self.host, p, ticks)]
            running = set(self.session.pids) if self.started_s is not None else set()
            if running and set(live) - running and t0 - self.started_s < self.restart_min_s:
                # Newcomers wait for the next restart; the rest keep their history.
                live = [p for p in live if p in running]
            try:
                restarted = self.session.monitor(live)
            except HostError:
                # A target exited between listing and starting: once more without it.
                restarted = self.session.monitor([p for p in live if self.host.exists(f"/proc/{p}")])
            if restarted:
                self.started_s = self.clock() if self.session.pids else None
            self.wanted = tuple(live)
        finally:
            self.cost_s += self.clock() - t0

    def ready_in_s(self) -> float:
        if self.started_s is None:
            return 0.0
        return max(0.0, self.started_s + self.warmup_s - self.clock())

    def sample(self) -> Mapping[int, tuple[Region, ...]]:
        t0 = self.clock()
        if self.started_s is None or t0 - self.started_s < self.warmup_s:
            return {}
        try:
            raw = self.session.regions()
        except (OSError, HostError) as e:
            # The kdamond stops by itself when every target has exited.
            log.info("DAMON sample failed (%s); restarting on the next track()", e)
            self.session.pids = ()
            self.started_s = None
            return {}
        finally:
            self.cost_s += self.clock() - t0
        top = self.attrs.max_nr_accesses
        aggr_s = self.attrs.aggr_us / 1e6
        wanted = set(self.wanted)
        return {pid: tuple(Region(r.start, r.end, min(1.0, r.nr_accesses / top), r.age_aggr * aggr_s)
                           for r in regions)
                for pid, regions in raw.items() if pid in wanted}

    def close(self) -> None:
        self.session.close()


@dataclass
class _Granules:
    """Per-process soft-dirty state: when each granule was last written."""

    last_written_s: dict[int, float]  # granule start address -> time
    first_seen_s: float
    start_ticks: int  # the process's identity with its pid (clear_soft_dirty checks it)


def _is_still(host: Host, pid: int, start_ticks: int) -> bool:
    """True while `pid` is the process started at `start_ticks` (act/identity.confirm)."""
    from autonumad.act import identity

    try:
        identity.confirm(host, pid, start_ticks)
        return True
    except ProcessError:
        return False


class SoftDirtyTracker:
    name = "softdirty"

    def __init__(self, host: Host, clock: Callable[[], float] = time.monotonic,
                 granule_pages: int = GRANULE_PAGES, page_size: int = DEFAULT_PAGE_BYTES):
        self.host = host
        self.clock = clock
        self.granule_bytes = granule_pages * page_size
        self.page_size = page_size
        self.cost_s = 0.0
        self.state: dict[int, _Granules] = {}

    def track(self, pids: Mapping[int, int]) -> None:
        t0 = self.clock()
        for pid in list(self.state):
            if pids.get(pid) != self.state[pid].start_ticks:
                del self.state[pid]  # left the set, or its pid now names another process
        for pid, ticks in pids.items():
            if pid in self.state:
                continue
            try:
                clear_soft_dirty(self.host, pid, ticks)
            except (ProcessError, OSError) as e:
                log.debug("pid %d: soft-dirty not cleared: %s", pid, e)
                continue
            self.state[pid] = _Granules({}, t0, ticks)
        self.cost_s += self.clock() - t0

    def sample(self) -> Mapping[int, tuple[Region, ...]]:
        t0 = self.clock()
        out = {}
        for pid, g in list(self.state.items()):
            try:
                out[pid] = self._sample_one(pid, g, t0)
                clear_soft_dirty(self.host, pid, g.start_ticks)
            except (ProcessError, OSError, ParseError) as e:
                log.debug("pid %d: soft-dirty sample failed: %s", pid, e)
                self.state.pop(pid, None)
                out.pop(pid, None)
        self.cost_s += self.clock() - t0
        return out

    def ready_in_s(self) -> float:
        # A process's first sample (the pass after it was first tracked)
        # already tells what was written since its bits were cleared.
        return 0.0

    def close(self) -> None:
        # Nothing held in the kernel: soft-dirty bits are per page and cost
        # nothing when nobody reads them.
        self.state.clear()

    def _sample_one(self, pid: int, g: _Granules, now: float) -> tuple[Region, ...]:
        regions: list[Region] = []
        for m in read_maps(self.host, pid):
            # Private writable anonymous memory: what soft-dirty tracks well and
            # what tiering moves. File pages and shared mappings are left out.
            if m.perms[:2] != "rw" or m.perms[3] != "p" or m.path not in (None, "[heap]", "[stack]"):
                continue
            bits = read_pagemap(self.host, pid, m.start, m.end, self.page_size)
            gpages = self.granule_bytes // self.page_size
            for first in range(0, bits.pages, gpages):
                n = min(gpages, bits.pages - first)
                present = bits.count_present(first, n)
                if not present:
                    continue
                start = m.start + first * self.page_size
                dirty = bits.count_dirty(first, n)
                if dirty:
                    g.last_written_s[start] = now
                last = g.last_written_s.get(start, g.first_seen_s)
                _append(regions, Region(start, start + n * self.page_size, dirty / present,
                                        0.0 if dirty else now - last))
        return tuple(regions)


def _append(regions: list[Region], r: Region) -> None:
    """Append `r`, or extend the last region when `r` continues it at the same level."""
    if regions:
        prev = regions[-1]
        if (prev.end == r.start and prev.accesses_fraction == r.accesses_fraction
                and abs(prev.age_s - r.age_s) < 1e-6):
            regions[-1] = Region(prev.start, r.end, r.accesses_fraction, r.age_s)
            return
    regions.append(r)


class AutoTracker:
    """DAMON first; soft-dirty from the moment DAMON turns out unusable (and for good)."""

    def __init__(self, primary, fallback_factory: Callable[[], HotnessTracker]):
        self.active = primary
        self.fallback_factory = fallback_factory
        self.why_fallback: str | None = None
        self._pids: dict[int, int] = {}

    @property
    def name(self) -> str:
        return self.active.name

    @property
    def cost_s(self) -> float:
        return self.active.cost_s

    def track(self, pids: Mapping[int, int]) -> None:
        self._pids = dict(pids)
        try:
            self.active.track(self._pids)
        except NotSupported as e:
            self._fall_back(str(e))
            self.active.track(self._pids)

    def _fall_back(self, why: str) -> None:
        log.warning("hotness tracker: %s; using soft-dirty bits instead (writes only)", why)
        try:
            self.active.close()
        except Exception as e:  # noqa: BLE001 - clean-up must not mask the fallback
            log.debug("closing the primary tracker: %s", e)
        self.why_fallback = why
        self.active = self.fallback_factory()

    def sample(self) -> Mapping[int, tuple[Region, ...]]:
        return self.active.sample()

    def ready_in_s(self) -> float:
        return self.active.ready_in_s()

    def close(self) -> None:
        self.active.close()


def describe(tracker) -> str:
    """One line for status/explain: the tracker in use and, for a fallback, why."""
    why = getattr(tracker, "why_fallback", None)
    return tracker.name + (f" (DAMON unavailable: {why})" if why else "")


def make_tracker(host: Host, tiering, runtime_dir: str | Path,
                 clock: Callable[[], float] = time.monotonic):
    """The tracker `tiering.tracker` asks for: "auto", "damon" or "softdirty"."""
    kind = tiering.tracker
    attrs = MonitoringAttrs(sample_us=tiering.damon_sample_us, aggr_us=tiering.damon_aggr_us)
    restart_min_s = max(60.0, 2 * tiering.cold_age_s)

    def softdirty() -> SoftDirtyTracker:
        return SoftDirtyTracker(host, clock, page_size=host.page_size_bytes)

    if kind == "softdirty":
        return softdirty()
    if kind == "damon":
        if not damon_available(host):
            raise NotSupported("tiering.tracker = \"damon\" but the kernel has no DAMON sysfs interface")
        return DamonTracker(host, runtime_dir, attrs, clock, restart_min_s=restart_min_s)
    if damon_available(host):
        try:
            return AutoTracker(DamonTracker(host, runtime_dir, attrs, clock, restart_min_s=restart_min_s), softdirty)
        except (HostError, OSError) as e:
            t = AutoTracker(softdirty(), softdirty)
            t.why_fallback = str(e)
            return t
    t = AutoTracker(softdirty(), softdirty)
    t.why_fallback = "no /sys/kernel/mm/damon/admin"
    return t


def read_vma_ends(host: Host, pids: Iterable[int]) -> dict[int, dict[int, int]]:
    """pid -> {VMA start: end} from /proc/<pid>/maps, for the tiering policy's estimates."""
    out = {}
    for pid in pids:
        try:
            out[pid] = {m.start: m.end for m in read_maps(host, pid)}
        except (ProcessError, OSError):
            continue
    return out
