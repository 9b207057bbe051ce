"""Hotness trackers: DAMON on the simulated sysfs, soft-dirty on fake pagemap files, and the choice between them."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from autonumad.service.config import TieringConfig
from autonumad.observe.damon import KDAMONDS_DIR, read_slots
from autonumad.errors import NotSupported, ParseError
from autonumad.sim.fakedamon import FakeDamonHost, install_damon
from autonumad.sim.fakehost import FakeHost, HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host
from autonumad.readers.pagemap import PRESENT_BIT, SOFT_DIRTY_BIT, PageBits, parse_pagemap
from autonumad.observe.tracker import (
    AutoTracker, DamonTracker, Region, SoftDirtyTracker, describe, make_tracker,
)
from autonumad.observe.damon import MonitoringAttrs

GiB = 2**30
PAGE = 4096
BASE = 0x40000000  # low, so the sparse fake pagemap stays small (2 MiB)


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _spec(pids=(101,), pages=256):
    return HostSpec(nodes=(NodeSpec((0,), GiB, GiB // 2, (10, 20)), NodeSpec((), GiB, GiB, (20, 10))),
                    processes=tuple(ProcessSpec(p, f"w{p}", (ThreadSpec(p, 0),),
                                                vmas=(VmaSpec(BASE, {2: pages}),)) for p in pids))


# -- pagemap parser ----------------------------------------------------------------

def _entries(*flags):
    return b"".join(struct.pack("=Q", f) for f in flags)


@pytest.mark.parametrize("flags,present,dirty", [
    ((), b"", b""),
    ((PRESENT_BIT | SOFT_DIRTY_BIT | 1234,), b"\1", b"\1"),
    ((PRESENT_BIT, 0, PRESENT_BIT | SOFT_DIRTY_BIT), b"\1\0\1", b"\0\0\1"),
    ((SOFT_DIRTY_BIT,), b"\0", b"\0"),  # not present: its soft-dirty bit does not count
], ids=["empty", "dirty", "mixed", "swapped-out-dirty"])
def test_parse_pagemap(flags, present, dirty):
    bits = parse_pagemap(_entries(*flags))
    assert (bits.pages, bits.present, bits.soft_dirty) == (len(flags), present, dirty)


def test_parse_pagemap_rejects_a_short_read():
    with pytest.raises(ParseError, match="8-byte"):
        parse_pagemap(b"\0" * 12)


@given(st.binary(max_size=200))
def test_parse_pagemap_raises_only_parse_error(data):
    try:
        bits = parse_pagemap(data)
    except ParseError:
        return
    assert bits.pages == len(data) // 8
    assert all(p >= d for p, d in zip(bits.present, bits.soft_dirty))


def test_page_bits_counts_a_window():
    bits = PageBits(b"\0\0\0\0\1\1\1\1", b"\0\0\0\0\1\1\0\0")
    assert (bits.count_present(4, 4), bits.count_dirty(4, 4), bits.count_dirty(0, 4)) == (4, 2, 0)


# -- soft-dirty tracker ---------------------------------------------------------------

class SoftDirtyHost(FakeHost):
    """clear_refs "4" clears bit 55 in the fake pagemap, as the kernel does."""

    def write_text(self, host_path, value):
        super().write_text(host_path, value)
        if host_path.endswith("/clear_refs") and value.strip() == "4":
            p = self.path(host_path.rsplit("/", 1)[0] + "/pagemap")
            data = bytearray(p.read_bytes())
            # The file is sparse: entries before the first non-zero byte are zero already.
            first = (len(data) - len(data.lstrip(b"\0"))) // 8 * 8
            for off in range(first, len(data), 8):
                e = struct.unpack_from("=Q", data, off)[0]
                struct.pack_into("=Q", data, off, e & ~SOFT_DIRTY_BIT)
            p.write_bytes(bytes(data))

    def write_pages(self, pid, first_page, n):
        """The workload writes pages [first_page, first_page + n) of its buffer."""
        p = self.path(f"/proc/{pid}/pagemap")
        data = bytearray(p.read_bytes())
        for i in range(first_page, first_page + n):
            off = (BASE // PAGE + i) * 8
            e = struct.unpack_from("=Q", data, off)[0]
            struct.pack_into("=Q", data, off, e | SOFT_DIRTY_BIT)
        p.write_bytes(bytes(data))


def _softdirty_host(tmp_path, pages=256):
    host = build_host(tmp_path / "root", _spec(pages=pages))
    host = SoftDirtyHost(host.root)
    pm = host.path("/proc/101/pagemap")
    with open(pm, "wb") as f:  # sparse: only the buffer's entries are written
        f.seek(BASE // PAGE * 8)
        f.write(_entries(*([PRESENT_BIT | SOFT_DIRTY_BIT] * pages)))
    host.path("/proc/101/clear_refs").write_text("")
    return host


def test_softdirty_finds_the_written_granules_and_ages_the_rest(tmp_path):
    host = _softdirty_host(tmp_path, pages=256)  # 4 granules of 64 pages
    clock = Clock()
    t = SoftDirtyTracker(host, clock, granule_pages=64)
    t.track({101: 100})
    clock.t += 10
    host.write_pages(101, 64, 64)  # granule 1 written
    got = t.sample()[101]
    g = 64 * PAGE
    assert got == (Region(BASE, BASE + g, 0.0, 10.0), Region(BASE + g, BASE + 2 * g, 1.0, 0.0),
                   Region(BASE + 2 * g, BASE + 4 * g, 0.0, 10.0))
    clock.t += 5
    got = t.sample()[101]
    # Nothing written since: one cold run, granule 1 younger than the others.
    assert [(r.accesses_fraction, r.age_s) for r in got] == [(0.0, 15.0), (0.0, 5.0), (0.0, 15.0)]


def test_softdirty_forgets_untracked_and_gone_processes(tmp_path):
    host = _softdirty_host(tmp_path)
    t = SoftDirtyTracker(host, Clock())
    t.track({101: 100, 999: 100})  # 999 does not exist: not tracked
    assert set(t.state) == {101}
    t.track({})
    assert t.sample() == {}


# -- DAMON tracker ---------------------------------------------------------------------

KD0 = "/sys/kernel/mm/damon/admin/kdamonds/0"


def _damon_host(tmp_path, regions):
    build_host(tmp_path / "root", _spec(pids=(101, 102)))
    install_damon(tmp_path / "root")
    return FakeDamonHost(tmp_path / "root", regions)


def test_damon_tracker_scales_accesses_and_age(tmp_path):
    host = _damon_host(tmp_path, {101: [(BASE, BASE + 2**26, 20, 3), (BASE + 2**26, BASE + 2**27, 0, 400)]})
    clock = Clock()
    t = DamonTracker(host, tmp_path / "run", MonitoringAttrs(sample_us=5000, aggr_us=100_000), clock)
    t.track({101: 100, 555: 100})  # 555 does not exist: dropped, not an error
    assert t.sample() == {}  # warming up: the first regions are coarse
    clock.t += 2.0
    assert t.sample() == {101: (Region(BASE, BASE + 2**26, 1.0, pytest.approx(0.3)),
                                Region(BASE + 2**26, BASE + 2**27, 0.0, pytest.approx(40.0)))}
    t.track({101: 100})  # same set: no restart, no new warm-up
    assert t.sample() != {}
    # A newcomer restarts the kdamond (every region's age with it), so it waits
    # restart_min_s (60 s) after the last start; meanwhile 101 keeps its history.
    t.track({101: 100, 102: 100})
    assert set(t.sample()) == {101} and host.read_text(f"{KD0}/contexts/0/targets/nr_targets").strip() == "1"
    clock.t += 60.0
    t.track({101: 100, 102: 100})
    assert t.sample() == {}  # restarted with both: warming up again
    clock.t += 2.0
    assert set(t.sample()) == {101, 102}
    # A departure costs no restart: 101 is no longer reported, 102 keeps its history.
    writes = len(host.writes)
    t.track({102: 100})
    assert set(t.sample()) == {102}
    assert not [w for w in host.writes[writes:] if w[0].endswith("/state") and w[1] in ("on", "off")]
    t.close()
    assert read_slots(host) == ()


def test_damon_tracker_recovers_a_killed_runs_kdamond(tmp_path):
    host = _damon_host(tmp_path, {})
    DamonTracker(host, tmp_path / "run").track({101: 100})  # never closed
    assert read_slots(host)[0].state == "on"
    DamonTracker(host, tmp_path / "run")
    assert read_slots(host) == ()


# -- choosing ------------------------------------------------------------------------------

def test_auto_picks_softdirty_without_damon(tmp_path):
    host = _softdirty_host(tmp_path)
    t = make_tracker(host, TieringConfig(), tmp_path / "run")
    assert t.name == "softdirty" and "no /sys/kernel/mm/damon/admin" in describe(t)


def test_auto_picks_damon_where_present(tmp_path):
    host = _damon_host(tmp_path, {})
    t = make_tracker(host, TieringConfig(), tmp_path / "run")
    assert describe(t) == "damon"
    t.track({101: 100})
    t.close()


def test_auto_falls_back_when_another_user_holds_damon(tmp_path):
    host = _damon_host(tmp_path, {})
    host.write_text(KDAMONDS_DIR + "/nr_kdamonds", "1")
    host.write_text(KDAMONDS_DIR + "/0/contexts/nr_contexts", "1")
    host.write_text(KDAMONDS_DIR + "/0/state", "on")
    t = make_tracker(host, TieringConfig(), tmp_path / "run")
    assert isinstance(t, AutoTracker)
    t.track({101: 100})
    assert t.name == "softdirty" and "another user" in describe(t)
    assert read_slots(host)[0].state == "on"


def test_damon_asked_for_on_a_kernel_without_it_says_so(tmp_path):
    host = _softdirty_host(tmp_path)
    with pytest.raises(NotSupported, match="no DAMON"):
        make_tracker(host, TieringConfig(tracker="damon"), tmp_path / "run")


# -- identity: a tracker acts only on the process the snapshot saw -------------------------------

def test_softdirty_clear_is_refused_for_a_reused_pid(tmp_path):
    """Clearing soft-dirty bits write-protects every PTE of the process: an action, taken only when
    the pid still names the process the snapshot saw (its start time, stat field 22; 100 here)."""
    from autonumad.act.identity import ProcessReplaced
    from autonumad.readers.pagemap import clear_soft_dirty

    host = _softdirty_host(tmp_path)
    clear_refs = host.path("/proc/101/clear_refs")
    with pytest.raises(ProcessReplaced):
        clear_soft_dirty(host, 101, 99)
    assert clear_refs.read_text() == ""
    clear_soft_dirty(host, 101, 100)
    assert clear_refs.read_text().strip() == "4"


def test_softdirty_tracker_does_not_track_or_clear_a_reused_pid(tmp_path):
    host = _softdirty_host(tmp_path)
    clear_refs = host.path("/proc/101/clear_refs")
    t = SoftDirtyTracker(host, Clock())
    t.track({101: 99})  # the snapshot's 101 started at 99; the 101 there now at 100
    assert t.state == {} and clear_refs.read_text() == ""
    t.track({101: 100})
    assert set(t.state) == {101}
    clear_refs.write_text("")
    t.track({101: 99})  # the pid now names another process: forgotten, its bits left alone
    assert t.state == {} and clear_refs.read_text() == ""


def test_damon_tracker_does_not_monitor_a_reused_pid(tmp_path):
    host = _damon_host(tmp_path, {})
    t = DamonTracker(host, tmp_path / "run")
    t.track({101: 100, 102: 7})  # 102 is not the process the snapshot saw
    assert host.read_text(f"{KD0}/contexts/0/targets/nr_targets").strip() == "1"
    assert host.read_text(f"{KD0}/contexts/0/targets/0/pid_target").strip() == "101"
    t.close()
