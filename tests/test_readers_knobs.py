"""Kernel knob registry, parser, formatter and reader (autonumad.readers.knobs)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autonumad.errors import ParseError
from autonumad.host import Host
from autonumad.readers.knobs import (
    KNOBS,
    KnobSpec,
    format_knob,
    parse_knob,
    read_knob,
    read_knobs,
    same_value,
)

INT = KnobSpec("x", ("/proc/sys/x",), "int")
BOOL = KnobSpec("b", ("/sys/b",), "bool")


def write_tree(root: Path, files: dict[str, str]) -> Host:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Host(root)


# -- parse_knob ------------------------------------------------------------------

PARSE_CASES = [
    (INT, "1\n", 1),
    (INT, "65536\n", 65536),
    (INT, "  0  ", 0),
    (INT, "-1\n", -1),
    (BOOL, "true\n", True),
    (BOOL, "false\n", False),
    (BOOL, "1\n", True),
    (BOOL, "0", False),
    (BOOL, "Y", True),
    (BOOL, "off\n", False),
]


@pytest.mark.parametrize("spec,text,want", PARSE_CASES,
                         ids=[f"{s.kind}-{t.strip() or 'blank'}" for s, t, _ in PARSE_CASES])
def test_parse_knob(spec, text, want):
    got = parse_knob(spec, text)
    assert got == want
    assert type(got) is type(want)


BAD_PARSE = [
    (INT, ""),
    (INT, "\n"),
    (INT, "1 2\n"),
    (INT, "0x10"),
    (INT, "true"),
    (BOOL, ""),
    (BOOL, "maybe"),
    (BOOL, "2"),
]


@pytest.mark.parametrize("spec,text", BAD_PARSE, ids=[f"{s.kind}-{t!r}" for s, t in BAD_PARSE])
def test_parse_knob_rejects(spec, text):
    with pytest.raises(ParseError):
        parse_knob(spec, text)


@given(st.sampled_from([INT, BOOL]), st.text(max_size=40))
def test_parse_knob_never_crashes(spec, text):
    try:
        value = parse_knob(spec, text)
    except ParseError:
        return
    assert isinstance(value, bool if spec.kind == "bool" else int)


@given(st.sampled_from([INT, BOOL]), st.sampled_from(["1\n", "65536\n", "true\n", "false\n", "0\n"]),
       st.integers(min_value=0, max_value=8))
def test_parse_knob_truncated(spec, text, cut):
    try:
        parse_knob(spec, text[:cut])
    except ParseError:
        pass


# -- format_knob -------------------------------------------------------------------

FORMAT_CASES = [
    (INT, 0, "0\n"),
    (INT, 65536, "65536\n"),
    (BOOL, True, "true\n"),
    (BOOL, False, "false\n"),
    (BOOL, 1, "true\n"),
]


@pytest.mark.parametrize("spec,value,want", FORMAT_CASES, ids=[f"{s.kind}-{v}" for s, v, _ in FORMAT_CASES])
def test_format_knob(spec, value, want):
    assert format_knob(spec, value) == want


@pytest.mark.parametrize("spec,value", [(INT, True), (INT, "1"), (BOOL, 2), (BOOL, "yes")],
                         ids=["int-bool", "int-str", "bool-2", "bool-str"])
def test_format_knob_rejects(spec, value):
    with pytest.raises(ValueError):
        format_knob(spec, value)


@given(st.integers(min_value=-(2**31), max_value=2**31))
def test_format_parse_round_trip_int(value):
    assert parse_knob(INT, format_knob(INT, value)) == value


@pytest.mark.parametrize("value", [True, False], ids=["true", "false"])
def test_format_parse_round_trip_bool(value):
    assert parse_knob(BOOL, format_knob(BOOL, value)) is value


def test_same_value_bool_compares_truthiness():
    assert same_value(BOOL, True, 1)
    assert not same_value(BOOL, False, 1)
    assert same_value(INT, 3, 3)
    assert not same_value(INT, None, 0)


# -- registry ----------------------------------------------------------------------

def test_registry_has_the_knobs_the_config_names():
    for name in ("numa_balancing", "numa_balancing_promote_rate_limit_MBps", "scan_delay_ms",
                 "scan_period_min_ms", "scan_period_max_ms", "scan_size_mb", "hot_threshold_ms",
                 "demotion_enabled", "watermark_scale_factor", "watermark_boost_factor",
                 "min_free_kbytes", "zone_reclaim_mode"):
        assert KNOBS[name].name == name
    assert KNOBS["demotion_enabled"].kind == "bool"
    # Scan knobs: the old sysctl first, then debugfs (tuned's order).
    assert KNOBS["scan_size_mb"].paths == ("/proc/sys/kernel/numa_balancing_scan_size_mb",
                                           "/sys/kernel/debug/sched/numa_balancing/scan_size_mb")


# -- read_knobs --------------------------------------------------------------------

NEW_KERNEL = {
    "/proc/sys/kernel/numa_balancing": "1\n",
    "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps": "65536\n",
    "/sys/kernel/debug/sched/numa_balancing/scan_delay_ms": "1000\n",
    "/sys/kernel/debug/sched/numa_balancing/scan_period_min_ms": "1000\n",
    "/sys/kernel/debug/sched/numa_balancing/scan_period_max_ms": "60000\n",
    "/sys/kernel/debug/sched/numa_balancing/scan_size_mb": "256\n",
    "/sys/kernel/debug/sched/numa_balancing/hot_threshold_ms": "1000\n",
    "/sys/kernel/mm/numa/demotion_enabled": "false\n",
    "/proc/sys/vm/watermark_scale_factor": "10\n",
    "/proc/sys/vm/watermark_boost_factor": "15000\n",
    "/proc/sys/vm/min_free_kbytes": "67584\n",
    "/proc/sys/vm/zone_reclaim_mode": "0\n",
}

OLD_KERNEL = {  # 5.10: scan knobs in /proc/sys, no tiering, no demotion
    "/proc/sys/kernel/numa_balancing": "1\n",
    "/proc/sys/kernel/numa_balancing_scan_delay_ms": "1000\n",
    "/proc/sys/kernel/numa_balancing_scan_period_min_ms": "1000\n",
    "/proc/sys/kernel/numa_balancing_scan_period_max_ms": "60000\n",
    "/proc/sys/kernel/numa_balancing_scan_size_mb": "256\n",
    "/proc/sys/vm/watermark_scale_factor": "10\n",
    "/proc/sys/vm/zone_reclaim_mode": "0\n",
}


def test_read_knobs_new_kernel(tmp_path):
    knobs = read_knobs(write_tree(tmp_path, NEW_KERNEL))
    assert list(knobs) == list(KNOBS)
    assert knobs["scan_size_mb"].path == "/sys/kernel/debug/sched/numa_balancing/scan_size_mb"
    assert knobs.as_json() == {
        "numa_balancing": 1, "numa_balancing_promote_rate_limit_MBps": 65536,
        "scan_delay_ms": 1000, "scan_period_min_ms": 1000, "scan_period_max_ms": 60000,
        "scan_size_mb": 256, "hot_threshold_ms": 1000, "demotion_enabled": False,
        "watermark_scale_factor": 10, "watermark_boost_factor": 15000,
        "min_free_kbytes": 67584, "zone_reclaim_mode": 0,
    }
    assert all(kv.error is None for kv in knobs.values())


def test_read_knobs_old_kernel(tmp_path):
    knobs = read_knobs(write_tree(tmp_path, OLD_KERNEL))
    assert knobs["scan_delay_ms"].path == "/proc/sys/kernel/numa_balancing_scan_delay_ms"
    assert knobs["scan_delay_ms"].value == 1000
    for absent in ("hot_threshold_ms", "demotion_enabled", "numa_balancing_promote_rate_limit_MBps"):
        kv = knobs[absent]
        assert (kv.path, kv.value, kv.raw, kv.error) == (None, None, None, None)
        assert not kv.present
    assert knobs.as_json()["demotion_enabled"] is None


def test_read_knobs_debugfs_unmounted(tmp_path):
    files = {k: v for k, v in NEW_KERNEL.items() if "/debug/" not in k}
    (tmp_path / "sys/kernel/debug").mkdir(parents=True)  # the mount point stays
    knobs = read_knobs(write_tree(tmp_path, files))
    assert knobs["scan_size_mb"].path is None
    assert knobs["numa_balancing"].value == 1


def test_read_knob_malformed_is_an_error_value(tmp_path):
    host = write_tree(tmp_path, {"/proc/sys/kernel/numa_balancing": "garbage\n"})
    kv = read_knob(host, KNOBS["numa_balancing"])
    assert kv.path == "/proc/sys/kernel/numa_balancing"
    assert kv.value is None
    assert kv.raw == "garbage\n"
    assert "not an integer" in kv.error


class LockedDownHost(Host):
    """debugfs under lockdown: the files exist but open() fails with EPERM."""

    def read_text(self, host_path: str) -> str:
        if host_path.startswith("/sys/kernel/debug/"):
            raise PermissionError(errno.EPERM, "Operation not permitted", host_path)
        return super().read_text(host_path)


def test_read_knobs_lockdown_reports_refusal(tmp_path):
    write_tree(tmp_path, NEW_KERNEL)
    knobs = read_knobs(LockedDownHost(tmp_path))
    kv = knobs["scan_delay_ms"]
    assert kv.path == "/sys/kernel/debug/sched/numa_balancing/scan_delay_ms"
    assert kv.value is None
    assert kv.error.startswith("EPERM")
    assert knobs["numa_balancing"].value == 1
