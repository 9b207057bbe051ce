"""DAMON sysfs: parsers, and the kdamond life cycle on a simulated sysfs (autonumad.sim.fakedamon)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from autonumad.observe.damon import (
    KDAMONDS_DIR, DamonRegion, DamonSession, MonitoringAttrs, OwnedKdamond, damon_available, format_owned,
    parse_owned, parse_signed, parse_state, parse_tried_region, parse_unsigned, read_slots,
)
from autonumad.errors import NotSupported, ParseError
from autonumad.sim.fakedamon import FakeDamonHost, install_damon
from autonumad.sim.fakehost import HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

GiB = 2**30
HOT = (0x7F0000000000, 0x7F0004000000)  # 64 MiB


def _tree(tmp_path, pids=(101, 102)):
    spec = HostSpec(nodes=(NodeSpec((0,), GiB, GiB // 2, (10, 20)), NodeSpec((), GiB, GiB, (20, 10))),
                    processes=tuple(ProcessSpec(p, f"w{p}", (ThreadSpec(p, 0),), vmas=(VmaSpec(HOT[0], {0: 10}),))
                                    for p in pids))
    build_host(tmp_path / "root", spec)
    install_damon(tmp_path / "root")
    return tmp_path / "root"


def _session(root, tmp_path, regions=None):
    host = FakeDamonHost(root, regions)
    return host, DamonSession(host, tmp_path / "run")


# -- parsers --------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [("0\n", 0), ("140737488355328\n", 140737488355328), ("20", 20)],
                         ids=["zero", "address", "no-newline"])
def test_parse_unsigned(text, want):
    assert parse_unsigned(text) == want


@pytest.mark.parametrize("text", ["", "-1\n", "0x10\n", "1 2\n", "٣\n"],
                         ids=["empty", "negative", "hex", "two", "non-ascii-digit"])
def test_parse_unsigned_rejects(text):
    with pytest.raises(ParseError):
        parse_unsigned(text)


@pytest.mark.parametrize("text,want", [("-1\n", -1), ("4242\n", 4242)], ids=["off", "running"])
def test_parse_signed(text, want):
    assert parse_signed(text) == want


@pytest.mark.parametrize("text,want", [("on\n", "on"), ("off\n", "off")], ids=["on", "off"])
def test_parse_state(text, want):
    assert parse_state(text) == want


def test_parse_state_rejects_a_command_word():
    with pytest.raises(ParseError):
        parse_state("update_schemes_tried_regions\n")


def test_parse_tried_region():
    r = parse_tried_region("4096\n", "8192\n", "20\n", "7\n")
    assert r == DamonRegion(4096, 8192, 20, 7) and r.size_bytes == 4096


def test_parse_tried_region_rejects_an_empty_range():
    with pytest.raises(ParseError, match="ends before"):
        parse_tried_region("8192\n", "8192\n", "0\n", "0\n")


def test_owned_round_trip():
    owned = (OwnedKdamond(2, 4242, 17), OwnedKdamond(3, None, 17))
    assert parse_owned(format_owned(owned)) == owned


@pytest.mark.parametrize("text", ["", "[]", '{"kdamonds": [{"index": -1}]}', '{"kdamonds": [{"index": true}]}',
                                  '{"kdamonds": [3]}', '{"kdamonds": [{"index": 0, "kdamond_pid": "x"}]}'],
                         ids=["empty", "list", "negative-index", "bool-index", "not-object", "bad-pid"])
def test_parse_owned_rejects(text):
    with pytest.raises(ParseError):
        parse_owned(text)


@given(st.text(max_size=60))
def test_number_parsers_raise_only_parse_error(text):
    for parse in (parse_unsigned, parse_signed, parse_state):
        try:
            parse(text)
        except ParseError:
            pass


@given(st.lists(st.text(max_size=25), min_size=4, max_size=4))
def test_parse_tried_region_raises_only_parse_error(texts):
    try:
        r = parse_tried_region(*texts)
    except ParseError:
        return
    assert r.end > r.start


@given(st.text(max_size=200) | st.builds(lambda n: format_owned([OwnedKdamond(1, 2, 3)])[:n], st.integers(0, 90)))
def test_parse_owned_raises_only_parse_error(text):
    try:
        parse_owned(text)
    except ParseError:
        pass


def test_max_nr_accesses_is_samples_per_aggregation():
    assert MonitoringAttrs(sample_us=5000, aggr_us=100_000).max_nr_accesses == 20


# -- life cycle on the simulated sysfs ---------------------------------------------

def test_available_only_with_the_admin_tree(tmp_path):
    spec = HostSpec(nodes=(NodeSpec((0,), GiB, GiB, (10,)),))
    bare = build_host(tmp_path / "bare", spec)
    assert not damon_available(bare)
    with pytest.raises(NotSupported, match="CONFIG_DAMON_SYSFS"):
        DamonSession(bare, tmp_path / "run").monitor([1])
    assert damon_available(FakeDamonHost(_tree(tmp_path)))


def test_monitor_configures_a_stat_scheme_that_matches_everything(tmp_path):
    root = _tree(tmp_path)
    host, s = _session(root, tmp_path)
    s.monitor([102, 101])
    d = root / KDAMONDS_DIR.lstrip("/") / "0"
    assert (d / "state").read_text().strip() == "on"
    ctx = d / "contexts/0"
    assert (ctx / "operations").read_text().strip() == "vaddr"
    assert [(ctx / f"targets/{i}/pid_target").read_text().strip() for i in (0, 1)] == ["101", "102"]
    for i in (0, 1):
        sch = ctx / f"schemes/{i}"
        assert (sch / "action").read_text().strip() == "stat"
        # The defaults of 0 match nothing: every max must be raised.
        for what in ("sz", "nr_accesses", "age"):
            assert int((sch / f"access_pattern/{what}/max").read_text()) > 0, what
        assert (sch / "filters/0/type").read_text().strip() == "target"
        assert (sch / "filters/0/damon_target_idx").read_text().strip() == str(i)
    owned = parse_owned((tmp_path / "run/damon-owned.json").read_text())
    assert owned == (OwnedKdamond(0, int((d / "pid").read_text()), owned[0].daemon_pid),)


def test_regions_are_split_by_target(tmp_path):
    root = _tree(tmp_path)
    regions = {101: [(HOT[0], HOT[1], 20, 5), (HOT[1], HOT[1] + 4096 * 10, 0, 40)],
               102: [(HOT[0], HOT[0] + 8192, 3, 1)]}
    host, s = _session(root, tmp_path, regions)
    s.monitor([101, 102])
    got = s.regions()
    assert got[101] == (DamonRegion(HOT[0], HOT[1], 20, 5), DamonRegion(HOT[1], HOT[1] + 40960, 0, 40))
    assert got[102] == (DamonRegion(HOT[0], HOT[0] + 8192, 3, 1),)


def test_retargeting_restarts_with_the_new_set(tmp_path):
    root = _tree(tmp_path, pids=(101, 102, 103))
    host, s = _session(root, tmp_path, {103: [(4096, 8192, 1, 1)]})
    assert s.monitor([101]) is True
    n = len(host.writes)
    assert s.monitor([101]) is False and len(host.writes) == n  # unchanged: no writes
    assert s.monitor([103]) is True
    assert len(host.writes) > n
    assert s.regions() == {103: (DamonRegion(4096, 8192, 1, 1),)}


def test_departed_targets_stay_and_cost_no_restart(tmp_path):
    root = _tree(tmp_path, pids=(101, 102))
    host, s = _session(root, tmp_path)
    assert s.monitor([101, 102]) is True
    n = len(host.writes)
    assert s.monitor([102]) is False and len(host.writes) == n and s.pids == (101, 102)
    assert s.monitor([]) is True and s.pids == ()  # nothing left to watch: stopped


def test_close_stops_clears_and_restores_nr_kdamonds(tmp_path):
    root = _tree(tmp_path)
    host, s = _session(root, tmp_path)
    s.monitor([101])
    s.close()
    assert read_slots(host) == ()
    assert not (tmp_path / "run/damon-owned.json").exists()


def _someone_elses_kdamond(root, on: bool):
    other = FakeDamonHost(root)
    other.write_text(KDAMONDS_DIR + "/nr_kdamonds", "1")
    other.write_text(KDAMONDS_DIR + "/0/contexts/nr_contexts", "1")
    other.write_text(KDAMONDS_DIR + "/0/contexts/0/targets/nr_targets", "1")
    other.write_text(KDAMONDS_DIR + "/0/contexts/0/targets/0/pid_target", "102")
    if on:
        other.write_text(KDAMONDS_DIR + "/0/state", "on")
    return other


@pytest.mark.parametrize("on", [True, False], ids=["running", "configured-off"])
def test_another_users_kdamond_is_never_touched(tmp_path, on):
    root = _tree(tmp_path)
    other = _someone_elses_kdamond(root, on)
    before = read_slots(other)
    host, s = _session(root, tmp_path)
    with pytest.raises(NotSupported, match="another user"):
        s.monitor([101])
    assert read_slots(host) == before
    assert not any(p.startswith(KDAMONDS_DIR + "/0/") for p, _ in host.writes)


def test_an_empty_off_slot_is_reused_without_resizing(tmp_path):
    root = _tree(tmp_path)
    FakeDamonHost(root).write_text(KDAMONDS_DIR + "/nr_kdamonds", "2")
    host, s = _session(root, tmp_path)
    s.monitor([101])
    assert s.index == 0
    assert (KDAMONDS_DIR + "/nr_kdamonds", "3") not in host.writes
    assert [x.state for x in read_slots(host)] == ["on", "off"]


def test_recover_after_a_kill_stops_only_our_kdamond(tmp_path):
    root = _tree(tmp_path)
    host, killed = _session(root, tmp_path)
    killed.monitor([101])  # ... and the daemon is SIGKILLed: no close()
    assert read_slots(host)[0].state == "on"
    host2, restarted = _session(root, tmp_path)
    assert restarted.recover() == [0]
    assert read_slots(host2) == ()
    assert not (tmp_path / "run/damon-owned.json").exists()


def test_recover_leaves_a_slot_someone_else_restarted(tmp_path):
    root = _tree(tmp_path)
    host, killed = _session(root, tmp_path)
    killed.monitor([101])
    # After our kill, another user turns slot 0 off and on again: a new kdamond pid.
    host.write_text(KDAMONDS_DIR + "/0/state", "off")
    host.write_text(KDAMONDS_DIR + "/0/state", "on")
    theirs = read_slots(host)
    host2, restarted = _session(root, tmp_path)
    assert restarted.recover() == []
    assert read_slots(host2) == theirs


def test_recover_ignores_a_corrupt_record(tmp_path):
    root = _tree(tmp_path)
    other = _someone_elses_kdamond(root, on=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run/damon-owned.json").write_text("{not json")
    _, s = _session(root, tmp_path)
    assert s.recover() == []
    assert read_slots(other)[0].state == "on"


def test_owned_file_is_written_before_the_kdamond_starts(tmp_path):
    root = _tree(tmp_path)
    host, s = _session(root, tmp_path)
    seen = []
    real = host.write_text

    def spy(path, value):
        if path.endswith("/state") and value == "on":
            seen.append(json.loads((tmp_path / "run/damon-owned.json").read_text()))
        return real(path, value)

    host.write_text = spy
    s.monitor([101])
    assert seen and seen[0]["kdamonds"][0]["index"] == 0


def test_a_vanished_target_fails_the_start_cleanly(tmp_path):
    root = _tree(tmp_path)
    host, s = _session(root, tmp_path)
    from autonumad.errors import HostError
    with pytest.raises(HostError, match="not started"):
        s.monitor([999])
    s.close()
    assert read_slots(host) == ()
