"""Issue 16's refinements: demotion ranked by bytes on the fast node, spares and top-up, splitting at VMA
bounds, cutting a hot region to what a soft-dirty probe saw written, and move failures explained."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from autonumad.act.executor import Outcome
from autonumad.observe.tracker import Region
from autonumad.plan.refine import (
    REFINE_MIN_BYTES, WriteMap, explain_failures, is_edge, refine_by_probes, refine_by_writes,
    split_at_vmas, split_hot_at_vmas, top_up, wants_probe, written_ranges,
)
from autonumad.plan.tiering import RULE_DEMOTE, RULE_PROMOTE
from autonumad.service.config import TieringConfig
from autonumad.sim.fakehost import ProcessSpec, ThreadSpec, VmaSpec
from tests.test_tiering import COLD, GiB, HOT, MiB, P, decide, hotness, proc, tiered

A = 0x7E0000000000  # a third mapping of pid 200, beside COLD


def _two_idle(old_bytes_on_0: int):
    """pid 200: A idle 100 s with `old_bytes_on_0` on node 0 (the rest on node 2), COLD idle 40 s, all on node 0."""
    p = ProcessSpec(200, "filler", (ThreadSpec(200, 0),),
                    vmas=(VmaSpec(A, {0: old_bytes_on_0 // P, 2: (64 * MiB - old_bytes_on_0) // P}),
                          VmaSpec(COLD, {0: 192 * MiB // P})))
    hot = {200: (Region(A, A + 64 * MiB, 0.0, 100.0), Region(COLD, COLD + 192 * MiB, 0.0, 40.0))}
    placement = {200: {(A, A + 64 * MiB): {0: old_bytes_on_0, 2: 64 * MiB - old_bytes_on_0},
                       (COLD, COLD + 192 * MiB): {0: 192 * MiB}}}
    return p, hot, placement


def test_demotion_takes_the_candidate_holding_the_bytes_on_the_fast_node(tmp_path):
    # Node 0 is 15 MiB short of its free target (2 % of 1 GiB + floor). The idlest range holds
    # 1 MiB there, the other 192 MiB: one demotion from the second frees it all. (Before issue 16
    # the idlest went first whatever it held, and an estimate of ~0 ended passes short.)
    p, hot, placement = _two_idle(MiB)
    _, d = decide(tmp_path, tiered([p], free=(10 * MiB, GiB // 2, GiB)), hot=hot, placement=placement)
    demotes = [a for a in d.actions if a.rule == RULE_DEMOTE]
    assert [a.vmas[0].start for a in demotes] == [COLD]
    hr = d.headroom[0]
    assert demotes[0].bytes == hr.target_bytes + hr.headroom_bytes // 4 - 10 * MiB  # refilled with a margin
    # The idlest range is a spare: run only if the planned demotion moves less than planned.
    assert [(n, a.vmas[0].start) for n, a in d.spare_demotions] == [(0, A)]
    assert d.planned_demotion_bytes == {0: demotes[0].bytes}


def test_a_candidate_with_nothing_on_the_fast_node_is_not_acted_on(tmp_path):
    p, hot, placement = _two_idle(0)
    _, d = decide(tmp_path, tiered([p], free=(10 * MiB, GiB // 2, GiB)), hot=hot, placement=placement)
    starts = [a.vmas[0].start for a in d.actions] + [a.vmas[0].start for _, a in d.spare_demotions]
    assert A not in starts and COLD in starts


def _outcome(action, moved_from: dict[int, int]) -> Outcome:
    return Outcome(action, "done", moved_pages=sum(moved_from.values()),
                   moved_bytes=sum(moved_from.values()) * P, moved_from=moved_from)


def test_top_up_makes_good_what_the_planned_demotions_did_not_move(tmp_path):
    # Two cold ranges, 32 MiB each on node 0; node 0 is 20 MiB short (with the margin): one is
    # planned, one spare.
    p = ProcessSpec(200, "filler", (ThreadSpec(200, 0),),
                    vmas=(VmaSpec(A, {0: 32 * MiB // P}), VmaSpec(COLD, {0: 32 * MiB // P})))
    hot = {200: (Region(A, A + 32 * MiB, 0.0, 100.0), Region(COLD, COLD + 32 * MiB, 0.0, 100.0))}
    _, d = decide(tmp_path, tiered([p], free=(10 * MiB, GiB // 2, GiB)), hot=hot)
    (planned,) = [a for a in d.actions if a.rule == RULE_DEMOTE]
    need = d.planned_demotion_bytes[0]
    # It moved all it planned: nothing more.
    assert top_up(d.planned_demotion_bytes, d.spare_demotions, [_outcome(planned, {2: 0, 0: need // P})],
                  RULE_DEMOTE) == []
    # Its pages were not there after all (moved 1 MiB of them): the spare runs for the rest.
    (extra,) = top_up(d.planned_demotion_bytes, d.spare_demotions, [_outcome(planned, {0: MiB // P})], RULE_DEMOTE)
    assert extra.vmas[0].start != planned.vmas[0].start
    assert extra.bytes == need - MiB and "top-up" in extra.reason
    # Promotions' moves do not count for a node's demotions.
    promo = type(planned)(**{**{f: getattr(planned, f) for f in planned.__dataclass_fields__}, "rule": RULE_PROMOTE})
    assert top_up(d.planned_demotion_bytes, d.spare_demotions, [_outcome(promo, {0: need // P})],
                  RULE_DEMOTE)[0].bytes == need


class _Tracker:
    """A hotness tracker that reports fixed regions (the pass's read step samples it)."""

    cost_s = 0.0

    def __init__(self, name, regions):
        self.name, self.regions = name, regions

    def track(self, pids): pass

    def sample(self):
        return self.regions

    def ready_in_s(self): return 0.0

    def close(self): pass


def _read_and_plan(host, cfg, tracker, sleep=None):
    """The daemon's read and plan steps (observe/inputs.read_pass_inputs, plan/planner.plan)."""
    from autonumad.observe.inputs import HotnessSource, read_pass_inputs
    from autonumad.plan.history import History
    from autonumad.plan.planner import plan

    src = HotnessSource(host)
    src.tracker = tracker
    if sleep is not None:
        src.probe.sleep = sleep
    inputs = read_pass_inputs(host, cfg, src, None, 1000.0, 1e9)
    return plan(inputs, History(), cfg)


def test_top_up_in_the_tiering_step_keeps_demoting_until_the_target_is_met(tmp_path):
    # The pass runs the spares itself (the executor calls Plan.top_up after the planned actions, in
    # its one run): a host whose first demotion moves nothing.
    from autonumad.act.executor import Executor, TokenBucket
    from autonumad.model import MoveResult
    from autonumad.plan.refine import top_up as real_top_up  # noqa: F401  (Plan.top_up's hook)

    p = ProcessSpec(200, "filler", (ThreadSpec(200, 0),),
                    vmas=(VmaSpec(A, {0: 32 * MiB // P}), VmaSpec(COLD, {0: 32 * MiB // P})))
    from autonumad.sim.fakehost import build_host
    from autonumad.service.config import compile_config
    host = build_host(tmp_path / "root", tiered([p], free=(10 * MiB, GiB // 2, GiB)))
    cfg = compile_config({"daemon": {"runtime_dir": str(tmp_path / "run")}})
    the_plan = _read_and_plan(host, cfg, _Tracker("test", {
        200: (Region(A, A + 32 * MiB, 0.0, 100.0), Region(COLD, COLD + 32 * MiB, 0.0, 100.0))}))

    calls = []
    real_move = host.move_pages

    def move_pages(pid, start, end, page_size, target_node, max_pages=None):
        # The first demotion finds nothing to move; the top-up moves what it is asked.
        calls.append(start)
        return MoveResult() if len(calls) == 1 else real_move(pid, start, end, page_size, target_node, max_pages)

    host.move_pages = move_pages
    outcomes = Executor(host, TokenBucket(float(1 << 40))).run(the_plan.actions, 1e9, the_plan.budget_bytes,
                                                                then=the_plan.top_up)
    ran = [o.action for o in outcomes if o.action.rule == RULE_DEMOTE]
    assert len(ran) == 2 and ran[1].vmas[0].start != ran[0].vmas[0].start
    assert sum(o.moved_bytes for o in outcomes) == pytest.approx(the_plan.tiering.planned_demotion_bytes[0], abs=P)


# -- VMA bounds --------------------------------------------------------------------------------

def test_split_at_vmas():
    r = Region(0x1000, 0x9000, 0.6, 3.0)
    bounds = [(0x0, 0x4000), (0x4000, 0x6000), (0x7000, 0x20000)]
    pieces = split_at_vmas(r, bounds)
    assert [(x.start, x.end) for x in pieces] == [(0x1000, 0x4000), (0x4000, 0x6000), (0x7000, 0x9000)]
    assert all(x.accesses_fraction == 0.6 and "split at VMA bounds" in x.note for x in pieces)
    inside = Region(0x7000, 0x8000, 1.0, 0.0)
    assert split_at_vmas(inside, bounds) == [inside]


def test_split_hot_at_vmas_cuts_idle_regions_only_at_the_edge_of_a_hot_vma():
    cfg = TieringConfig()
    is_hot = lambda r: r.accesses_fraction >= cfg.hot_access_fraction  # noqa: E731
    hot, cold = Region(0x1000, 0x1e000, 0.6, 3.0), Region(0x1e000, 0x40000, 0.0, 60.0)
    out = split_hot_at_vmas({1: (hot, cold)}, {1: {0x0: 0x4000, 0x4000: 0x20000, 0x20000: 0x50000}}, is_hot)
    # The idle region runs from the end of the hot VMA [0x4000, 0x20000) into the next one: the part
    # in the hot VMA (1/17 of it) is an edge piece, the rest a plain piece; both keep DAMON's level
    # and age.
    assert [(r.start, r.end) for r in out[1]] == [(0x1000, 0x4000), (0x4000, 0x1e000), (0x1e000, 0x20000),
                                                  (0x20000, 0x40000)]
    edge, rest = out[1][2], out[1][3]
    assert is_edge(edge) and not is_edge(rest)
    assert (edge.accesses_fraction, edge.age_s, rest.accesses_fraction, rest.age_s) == (0.0, 60.0, 0.0, 60.0)
    # An idle region that touches no hot VMA is left alone, however many VMAs it spans.
    far = Region(0x20000, 0x50000, 0.0, 60.0)
    out = split_hot_at_vmas({1: (hot, far)}, {1: {0x0: 0x4000, 0x4000: 0x20000, 0x20000: 0x30000,
                                                  0x30000: 0x50000}}, is_hot)
    assert out[1][-1] == far


# -- the write probe ----------------------------------------------------------------------------

def test_written_ranges_merge_written_granules():
    # 8 pages, granules of 2: pages 1 and 2 and 7 written.
    dirty = bytes([0, 1, 1, 0, 0, 0, 0, 1])
    assert written_ranges(0x10000, dirty, b"\1" * 8, P, 2) == [(0x10000, 0x10000 + 4 * P), (0x10000 + 6 * P,
                                                                                              0x10000 + 8 * P)]
    assert written_ranges(0, bytes(8), b"\1" * 8, P, 2) == []


def test_refine_by_writes_keeps_the_written_part_and_says_how_much_was_refined_away():
    # The region: 74 MiB, the first 50 MiB the end of a hot mapping, the rest cold.
    r = Region(HOT, HOT + 74 * MiB, 0.6, 5.0)
    pieces = refine_by_writes(r, [(HOT - MiB, HOT + 50 * MiB)], 0.1, 1.0)
    assert [(p.start - HOT, p.end - HOT, p.accesses_fraction) for p in pieces] == [
        (0, 50 * MiB, 0.6), (50 * MiB, 74 * MiB, 0.1)]
    assert "refined: 24.0 MiB of the 74.0 MiB region" in pieces[0].note
    # Written throughout: unchanged. Written nowhere: unchanged, with the reason.
    assert refine_by_writes(r, [(HOT, HOT + 74 * MiB)], 0.1, 1.0) == [r]
    (same,) = refine_by_writes(r, [], 0.1, 1.0)
    assert (same.start, same.end, same.accesses_fraction) == (r.start, r.end, r.accesses_fraction)
    assert "no write seen" in same.note


def test_a_refined_region_promotes_only_its_written_part_and_the_reason_says_so(tmp_path):
    # One VMA (the kernel merged a hot and a cold mapping); DAMON's region covers 64 MiB of it.
    spec = tiered([ProcessSpec(100, "app", (ThreadSpec(100, 0),), vmas=(VmaSpec(HOT, {2: 64 * MiB // P}),))])
    r = Region(HOT, HOT + 64 * MiB, 0.6, 2.0)
    pieces = refine_by_writes(r, [(HOT, HOT + 40 * MiB)], 0.1, 1.0)
    placement = {100: {(p.start, p.end): {2: p.size_bytes} for p in pieces}}
    _, d = decide(tmp_path, spec, hot={100: tuple(pieces)}, placement=placement)
    (a,) = d.actions
    assert a.rule == RULE_PROMOTE and a.bytes == 40 * MiB
    assert [(v.start, v.end) for v in a.vmas] == [(HOT, HOT + 40 * MiB)]
    assert "refined: 24.0 MiB of the 64.0 MiB region" in a.reason


def test_wants_probe():
    assert wants_probe(Region(0, REFINE_MIN_BYTES, 1.0, 0.0), 1)
    assert not wants_probe(Region(0, REFINE_MIN_BYTES - P, 1.0, 0.0), 1)
    assert not wants_probe(Region(0, REFINE_MIN_BYTES, 1.0, 0.0), 0)


# -- failures --------------------------------------------------------------------------------------

def test_explain_failures():
    text = explain_failures({"EBUSY": 3, "EACCES": 114})
    assert text.startswith("114 page(s) (0.4 MiB) EACCES: mapped by more than one process")
    assert "3 page(s) (0.0 MiB) EBUSY: busy: pinned" in text
    assert "EXYZ: see move_pages(2)" in explain_failures({"EXYZ": 1})


def test_failures_are_counted_by_errno_in_history_and_metrics_and_are_not_progress(tmp_path):
    from autonumad.plan.tiering import TieringHistory
    from autonumad.service.daemon import TieringReport

    _, d = decide(tmp_path, tiered([proc()]))
    (a,) = d.actions
    h = TieringHistory()
    h.record_decision(d, 1000.0)
    o = Outcome(a, "failed", "", moved_pages=0, moved_bytes=0, failures={"EACCES": 114, "EBUSY": 2})
    h.record_outcome(o, 1000.0, 60.0)
    assert h.failed_pages == {(RULE_PROMOTE, "EACCES"): 114, (RULE_PROMOTE, "EBUSY"): 2}
    assert h.moved_bytes == {} and h.last_promoted_bytes[0] == 0

    from autonumad.service.metrics import PassCollector
    report = TieringReport(d, "test", 0.0, {}, {}, 0, 0, None, dict(h.failed_pages))
    (fam,) = [f for f in PassCollector._tiering(report) if f.name.endswith("move_failed_pages")]
    assert {(s.labels["rule"], s.labels["errno"]): s.value for s in fam.samples} == {
        (RULE_PROMOTE, "EACCES"): 114, (RULE_PROMOTE, "EBUSY"): 2}


# -- the probe on a fake pagemap ----------------------------------------------------------------------

def _is_hot(x: Region) -> bool:
    return x.accesses_fraction >= 0.2


@dataclass
class _Probed:
    """pid 101 of a fake host: an 8 MiB VMA at BASE (tests.test_tracker), all on the slow node 2, and a
    WriteProbe whose every window runs `writes(host)`, what the workload writes while it waits."""

    host: object
    clock: object
    probe: object
    region: Region
    slept: list = field(default_factory=list)

    def refine(self, region: Region | None = None, on: dict | None = None, start_ticks: int = 100):
        """WriteProbe.refine on `region` (default: the whole VMA, hot at 0.6) placed `on` (default: all of
        it on node 2); hot threshold 0.2, lukewarm 0.1."""
        r = region or self.region
        placed = {101: {(r.start, r.end): on if on is not None else {2: r.size_bytes}}}
        return self.probe.refine({101: (r,)}, placed, _is_hot, (2,), 0.1, 0.2,
                                 lambda pid, ranges: [{2: e - s} for s, e in ranges], {101: start_ticks})


def _probed(tmp_path, writes) -> _Probed:
    from tests.test_tracker import BASE, Clock, _softdirty_host

    from autonumad.observe.probe import WriteProbe

    host = _softdirty_host(tmp_path, pages=2048)
    clock = Clock()
    slept: list = []

    def sleep(s):
        slept.append(s)
        writes(host)
        clock.t += s

    probe = WriteProbe(host, clock, sleep, window_s=1.0, granule_pages=64)
    return _Probed(host, clock, probe, Region(BASE, BASE + 8 * MiB, 0.6, 3.0), slept)


def test_write_probe_cuts_a_region_to_its_written_granules_and_defers_what_it_did_not_read(tmp_path):
    from tests.test_tracker import BASE

    from autonumad.observe.probe import MIN_SPACING_S

    # The workload writes the first 3 MiB (768 pages) while the probe waits.
    t = _probed(tmp_path, lambda host: host.write_pages(101, 0, 768))
    probe, clock, r, slept = t.probe, t.clock, t.region, t.slept
    hot, placement = t.refine()
    assert slept == [1.0] and probe.probes == 1
    assert [(x.start - BASE, x.end - BASE, x.accesses_fraction) for x in hot[101]] == [
        (0, 3 * MiB, 0.6), (3 * MiB, 8 * MiB, 0.1)]
    assert "refined: 5.0 MiB of the 8.0 MiB region" in hot[101][0].note
    assert placement[101][(BASE, BASE + 3 * MiB)] == {2: 3 * MiB}
    # Nothing on the slow tier: no probe, no change.
    same, _ = t.refine(on={0: 8 * MiB})
    assert same[101] == (r,) and probe.probes == 1
    # Within the interval the last probe's map is used, without a new probe.
    clock.t += 1
    again, _ = t.refine()
    assert probe.probes == 1 and [x.end - BASE for x in again[101]] == [3 * MiB, 8 * MiB]
    # A region the last probe did not read (DAMON moved its bounds) waits for the next probe,
    # due MIN_SPACING_S after the last; the step is told when to look again.
    wider = Region(BASE + 4 * MiB, BASE + 12 * MiB, 0.6, 3.0)
    got, _ = t.refine(wider, {2: 4 * MiB})
    assert got[101][0].accesses_fraction == 0.1 and "waits for a write probe" in got[101][0].note
    assert probe.recheck_in_s == pytest.approx(MIN_SPACING_S - 1)


def test_probes_add_up_a_hot_set_swept_slower_than_the_window_is_promoted_whole(tmp_path):
    # The tiered guest under load: the workload's sweep of its hot set, every page write-protected
    # by the clear, takes longer than the window, so each probe sees part of it written. Before,
    # each probe's map replaced the last: the part the newest window missed was left where it
    # was, though an earlier probe had seen it written (the DAMON promotion hardware test stopped
    # at 39-48 of 64 MiB).
    from autonumad.observe.probe import MIN_SPACING_S, WRITE_MEMORY_S

    windows = iter([(0, 1024), (1024, 1024), (0, 1024)])  # pages the workload writes in each window
    t = _probed(tmp_path, lambda host: host.write_pages(101, *next(windows)))
    probe, clock = t.probe, t.clock

    def hot_mib():
        hot, _ = t.refine()
        return sum(x.size_bytes for x in hot[101] if _is_hot(x)) / MiB

    assert hot_mib() == 4 and probe.probes == 1  # the first window saw the first half written
    # That probe saw new writes and half the region was never seen written: the next probe comes
    # MIN_SPACING_S later, not PROBE_INTERVAL_S.
    clock.t += MIN_SPACING_S - 0.5
    assert hot_mib() == 4 and probe.probes == 1
    clock.t += 1
    # The second window saw only the second half: the first, seen written by the first probe, stays hot.
    assert hot_mib() == 8 and probe.probes == 2
    # Both seen: no more probes until the interval.
    clock.t += MIN_SPACING_S + 1
    assert hot_mib() == 8 and probe.probes == 2
    # Past WRITE_MEMORY_S a range's write is forgotten unless a newer probe saw it again.
    clock.t += WRITE_MEMORY_S
    assert hot_mib() == 4 and probe.probes == 3


def test_a_part_never_written_stops_the_quick_probes_once_a_probe_adds_nothing(tmp_path):
    # A cold mapping merged with a hot one: each window sees the same hot half. The second probe
    # adds nothing, so the third waits for the interval, and the cold half is never promoted.
    from tests.test_tracker import BASE

    from autonumad.observe.probe import MIN_SPACING_S, PROBE_INTERVAL_S

    t = _probed(tmp_path, lambda host: host.write_pages(101, 0, 1024))
    for step_s, probes in ((0, 1), (MIN_SPACING_S, 2), (MIN_SPACING_S, 2), (PROBE_INTERVAL_S, 3)):
        t.clock.t += step_s
        hot, _ = t.refine()
        assert t.probe.probes == probes
        assert [(x.start - BASE, x.end - BASE) for x in hot[101] if _is_hot(x)] == [(0, 4 * MiB)]
    assert "not written in 3 soft-dirty probes of 1 s" in hot[101][0].note


def test_refine_by_writes_drops_an_unwritten_region_when_the_process_wrote_elsewhere():
    r = Region(COLD, COLD + 16 * MiB, 0.6, 5.0)
    (x,) = refine_by_writes(r, [(HOT, HOT + MiB)], 0.1, 1.0, written_elsewhere=True)
    assert x.accesses_fraction == 0.1 and "none of its 16.0 MiB written" in x.note


def test_the_step_splits_a_region_at_vma_bounds_and_promotes_only_the_written_mapping(tmp_path):
    # DAMON's region spans two mappings (both on the slow node); only the first is written
    # during the probe. The pass (read: split, probe; plan: the cut) promotes the first and leaves
    # the second.
    import struct

    from tests.test_tracker import SoftDirtyHost

    from autonumad.readers.pagemap import PRESENT_BIT, SOFT_DIRTY_BIT
    from autonumad.service.config import compile_config
    from autonumad.sim.fakehost import build_host

    lo = 0x40000000  # low addresses: the sparse fake pagemap stays small
    a_end, b_end = lo + 16 * MiB, lo + 32 * MiB
    p = ProcessSpec(100, "app", (ThreadSpec(100, 0),),
                    vmas=(VmaSpec(lo, {2: 16 * MiB // P}), VmaSpec(a_end, {2: 16 * MiB // P})))
    host = SoftDirtyHost(build_host(tmp_path / "root", tiered([p])).root)
    with open(host.path("/proc/100/pagemap"), "wb") as f:
        f.seek(lo // P * 8)
        f.write(struct.pack(f"={32 * MiB // P}Q", *([PRESENT_BIT | SOFT_DIRTY_BIT] * (32 * MiB // P))))
    host.path("/proc/100/clear_refs").write_text("")

    # Where the pages are (the kernel's move_pages query on a real host): all on node 2.
    host.range_nodes = lambda pid, ranges, max_pages: [{2: e - s} for s, e in ranges]

    def sleep(_s):
        data = bytearray(host.path("/proc/100/pagemap").read_bytes())
        for i in range(lo // P, a_end // P):  # the first mapping is written during the window
            e = struct.unpack_from("=Q", data, i * 8)[0]
            struct.pack_into("=Q", data, i * 8, e | SOFT_DIRTY_BIT)
        host.path("/proc/100/pagemap").write_bytes(bytes(data))
    # Every process scanned (the step took the snapshot without the scan's size floor).
    cfg = compile_config({"daemon": {"runtime_dir": str(tmp_path / "run")}, "balance": {"min_rss_bytes": 0}})
    the_plan = _read_and_plan(host, cfg, _Tracker("damon", {100: (Region(lo, b_end, 0.6, 5.0),)}), sleep)
    promos = [a for a in the_plan.actions if a.rule == RULE_PROMOTE]
    assert [(v.start, v.end) for a in promos for v in a.vmas] == [(lo, a_end)]
    assert "split at VMA bounds" in promos[0].reason


def test_a_node_below_its_target_is_refilled_to_a_margin_above_it(tmp_path):
    # Demoting exactly the shortfall left node 0 1-2 MiB below its target at the end of the
    # bench-tiering pressure runs (other allocations take the last MiB before the next pass).
    spec = tiered([proc(hot_on=0, cold_on=0)], free=(10 * MiB, GiB // 2, GiB))
    _, d = decide(tmp_path, spec)
    hr = d.headroom[0]
    (a,) = d.actions
    assert hr.free_bytes + a.bytes >= hr.target_bytes + hr.headroom_bytes // 4
    # At or above the target, nothing is demoted for the headroom (the margin is no new target).
    spec = tiered([proc(hot_on=0, cold_on=0)], free=(hr.target_bytes + MiB, GiB // 2, GiB))
    _, d = decide(tmp_path / "b", spec)
    assert d.actions == ()


def test_a_move_s_failures_are_explained_in_its_log_text(tmp_path):
    # The record step (daemon.outcome_text, for log lines and state.json) explains per errno what a
    # move could not take; the executor only counts it.
    from autonumad.service.daemon import outcome_text

    _, d = decide(tmp_path, tiered([proc()]))
    (a,) = d.actions
    o = Outcome(a, "partial", "moved 1.0 MiB to node 0", moved_pages=256, moved_bytes=MiB,
                failures={"EACCES": 114})
    assert outcome_text(o) == "moved 1.0 MiB to node 0; not moved: " + explain_failures({"EACCES": 114})
    assert outcome_text(Outcome(a, "done", "moved 1.0 MiB to node 0")) == "moved 1.0 MiB to node 0"


def test_write_probe_never_clears_a_reused_pid(tmp_path):
    """The probe writes clear_refs, an action on the process: not when its pid was reused."""
    t = _probed(tmp_path, lambda host: None)
    clear_refs = t.host.path("/proc/101/clear_refs")
    hot, _ = t.refine(start_ticks=99)  # the process at 101 now started at 100
    assert t.probe.probes == 0 and clear_refs.read_text() == ""
    assert hot[101] == (t.region,)  # nothing probed: the region as the tracker reported it


# -- the edge of a hot mapping inside an idle region (bench-tiering compete, session 5) ---------------

def _compete_shape():
    """The guest's numbers, scaled: an idle region [cold VMA + 1.2 MiB of the hot VMA] read at 0, and
    the rest of the hot VMA hot. VMAs: cold [0, 96 MiB), hot [96 MiB, 128 MiB)."""
    cold_vma, hot_vma = (0, 96 * MiB), (96 * MiB, 128 * MiB)
    idle = Region(0, 96 * MiB + 1228 * 1024, 0.0, 14.0)
    hot = Region(idle.end, 128 * MiB, 0.3, 0.0)
    return {101: (idle, hot)}, {101: dict([cold_vma, hot_vma])}


def test_edge_piece_is_promoted_where_a_probe_saw_it_written_and_only_there():
    cfg = TieringConfig()
    is_hot = lambda r: r.accesses_fraction >= cfg.hot_access_fraction  # noqa: E731
    regions, ends = _compete_shape()
    split = split_hot_at_vmas(regions, ends, is_hot)[101]
    edge = next(r for r in split if is_edge(r))
    assert (edge.start, edge.end) == (96 * MiB, 96 * MiB + 1228 * 1024)
    assert not is_hot(edge)  # on DAMON's word alone: not promoted
    placement = {101: {(r.start, r.end): {2: r.size_bytes} for r in split}}
    # The probe saw the first 1 MiB of the hot VMA written (and the hot region), nothing in the cold VMA.
    seen = {101: WriteMap(10.0, 1.0, ((0, 128 * MiB),), ((96 * MiB, 97 * MiB), (edge.end, 128 * MiB)))}
    out, fresh, _ = refine_by_probes({101: split}, placement, seen, is_hot, (2,), 0.1, 10.0, 0.2)
    pieces = [(r.start, r.end, r.accesses_fraction) for r in out[101] if 96 * MiB <= r.start < edge.end]
    assert pieces == [(96 * MiB, 97 * MiB, 0.2), (97 * MiB, edge.end, 0.0)], pieces
    assert "written in a 1 s soft-dirty probe" in out[101][1].note
    assert [(r.start, r.end) for r in fresh[101]] == [(96 * MiB, 97 * MiB), (97 * MiB, edge.end)]
    # The cold VMA's part of the idle region is untouched: still idle, still a demotion candidate.
    assert out[101][0] == replace(regions[101][0], end=96 * MiB)


def test_edge_piece_without_a_write_stays_as_damon_read_it():
    cfg = TieringConfig()
    is_hot = lambda r: r.accesses_fraction >= cfg.hot_access_fraction  # noqa: E731
    regions, ends = _compete_shape()
    split = split_hot_at_vmas(regions, ends, is_hot)[101]
    placement = {101: {(r.start, r.end): {2: r.size_bytes} for r in split}}
    seen = {101: WriteMap(10.0, 1.0, ((0, 128 * MiB),), ((100 * MiB, 128 * MiB),))}
    out, _, _ = refine_by_probes({101: split}, placement, seen, is_hot, (2,), 0.1, 10.0, 0.2)
    assert [r.accesses_fraction for r in out[101] if is_edge(r)] == [0.0]
    # On the fast node already (nothing on the slow tier), an edge piece is no probe target at all.
    on_fast = {101: {(r.start, r.end): {0: r.size_bytes} for r in split}}
    written = {101: WriteMap(10.0, 1.0, ((0, 128 * MiB),), ((96 * MiB, 128 * MiB),))}
    out, _, _ = refine_by_probes({101: split}, on_fast, written, is_hot, (2,), 0.1, 10.0, 0.2)
    assert [r.accesses_fraction for r in out[101] if is_edge(r)] == [0.0]


def test_a_piece_damon_sampled_enough_is_no_edge():
    """Past EDGE_MAX_SHARE of its region, DAMON's samples would have found a hot piece: no probe."""
    from autonumad.plan.refine import EDGE_MAX_SHARE

    cfg = TieringConfig()
    is_hot = lambda r: r.accesses_fraction >= cfg.hot_access_fraction  # noqa: E731
    # An idle region: 6 MiB in the cold VMA, 2 MiB (1/4) in the hot one.
    idle, hot = Region(90 * MiB, 98 * MiB, 0.0, 14.0), Region(98 * MiB, 128 * MiB, 0.3, 0.0)
    out = split_hot_at_vmas({1: (idle, hot)}, {1: {0: 96 * MiB, 96 * MiB: 128 * MiB}}, is_hot)[1]
    assert 2 * MiB > EDGE_MAX_SHARE * idle.size_bytes
    assert not any(is_edge(r) for r in out)
    assert [(r.start, r.end) for r in out[:2]] == [(90 * MiB, 96 * MiB), (96 * MiB, 98 * MiB)]
