"""/proc/<pid>/statm: table-driven cases, robustness properties, the fake
host's copy, and the running kernel (statm's resident count is VmRSS)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad.errors import MalformedProcFile, ParseError, ProcessError, ProcessGone
from autonumad.sim.fakehost import ProcessSpec, ThreadSpec, VmaSpec, write_process
from autonumad.host import Host, LinuxHost
from autonumad.readers.proc_status import read_status
from autonumad.readers.statm import Statm, parse_statm, read_statm

# From a Linux 6.x kernel: `cat /proc/self/statm`, and kthreadd (no mm).
REAL_STATM = "2661 437 370 5 0 88 0\n"
KERNEL_THREAD_STATM = "0 0 0 0 0 0 0\n"

GOOD = [
    ("real", REAL_STATM, Statm(2661, 437, 370, 5, 0, 88, 0)),
    ("kernel-thread", KERNEL_THREAD_STATM, Statm(0, 0, 0, 0, 0, 0, 0)),
    ("no-newline", "10 4 1 1 0 3 0", Statm(10, 4, 1, 1, 0, 3, 0)),
    ("future-extra-field", "10 4 1 1 0 3 0 99\n", Statm(10, 4, 1, 1, 0, 3, 0)),
    ("largest-unsigned-long", f"{2**64 - 1} 1 0 0 0 0 0\n", Statm(2**64 - 1, 1, 0, 0, 0, 0, 0)),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_parse_statm(text, expected):
    assert parse_statm(text) == expected


BAD = [
    ("empty", ""),
    ("six-fields", "10 4 1 1 0 3\n"),
    ("negative", "10 -4 1 1 0 3 0\n"),
    ("plus-sign", "10 +4 1 1 0 3 0\n"),
    ("underscore", "10 4_0 1 1 0 3 0\n"),
    ("tab-separated", "10\t4\t1\t1\t0\t3\t0\n"),
    ("doubled-space", "10  4 1 1 0 3 0\n"),
    ("leading-space", " 10 4 1 1 0 3 0\n"),
    ("letters", "10 4 1 1 0 3 x\n"),
    ("glued-suffix", "10 4 1 1 0 3 0kB\n"),
    ("non-ascii-digit", "10 \u0664 1 1 0 3 0\n"),
    ("wider-than-unsigned-long", f"{2**64} 1 0 0 0 0 0\n"),
    ("thousands-of-digits", "9" * 5000 + " 1 0 0 0 0 0\n"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_parse_statm_malformed(text):
    with pytest.raises(ParseError):
        parse_statm(text)


def test_resident_bytes_in_host_pages():
    assert parse_statm(REAL_STATM).resident_bytes(4096) == 437 * 4096
    assert parse_statm(REAL_STATM).resident_bytes(65536) == 437 * 65536


def test_read_statm(tmp_path: Path):
    for pid, text in ((10, REAL_STATM), (11, "ten pages\n")):
        (tmp_path / f"proc/{pid}").mkdir(parents=True)
        (tmp_path / f"proc/{pid}/statm").write_text(text)
    host = Host(tmp_path)
    assert read_statm(host, 10).resident_pages == 437
    with pytest.raises(MalformedProcFile) as e:
        read_statm(host, 11)
    assert e.value.path == "/proc/11/statm"
    with pytest.raises(ProcessGone):
        read_statm(host, 12)


@pytest.mark.parametrize("kernel_thread", [False, True], ids=["process", "kernel-thread"])
def test_fake_host_statm_agrees_with_status(tmp_path: Path, kernel_thread):
    spec = ProcessSpec(7, "p", (ThreadSpec(7, 0),), vmas=(VmaSpec(0x1000, {0: 300, 1: 21}),),
                       kernel_thread=kernel_thread)
    write_process(tmp_path, spec, all_cpus=(0, 1), all_nodes=(0, 1))
    host = Host(tmp_path)
    statm, status = read_statm(host, 7), read_status(host, 7)
    if kernel_thread:
        assert statm == parse_statm(KERNEL_THREAD_STATM) and status.vm_rss_bytes is None
    else:
        assert statm.resident_bytes(host.page_size_bytes) == status.vm_rss_bytes == 321 * 4096


# --------------------------------------------------------------------------
# Properties: any text gives a Statm or a ParseError, never anything else.

SPECIAL = list(" \t\n-+_0123456789x") + ["\u0664", "\xa0"]
FUZZ = st.text(alphabet=st.sampled_from(SPECIAL) | st.characters(), max_size=200)


def statm_or_parse_error(text: str) -> None:
    try:
        s = parse_statm(text)
    except ParseError:
        return
    assert all(0 <= getattr(s, f) <= 2**64 - 1 for f in s.__dataclass_fields__)


@given(FUZZ)
@settings(max_examples=300)
def test_arbitrary_text(text):
    statm_or_parse_error(text)


@given(st.data())
def test_truncated_and_corrupted(data):
    i = data.draw(st.integers(0, len(REAL_STATM)), label="from")
    j = data.draw(st.integers(i, len(REAL_STATM)), label="to")
    junk = data.draw(st.text(alphabet=st.sampled_from(SPECIAL), max_size=6), label="junk")
    statm_or_parse_error(REAL_STATM[:i])
    statm_or_parse_error(REAL_STATM[:i] + junk + REAL_STATM[j:])


@given(st.lists(st.integers(0, 2**64 - 1), min_size=7, max_size=9), st.booleans())
def test_round_trip(numbers, newline):
    text = " ".join(map(str, numbers)) + ("\n" if newline else "")
    assert parse_statm(text) == Statm(*numbers[:7])


# --------------------------------------------------------------------------
# The running kernel: statm's resident count is the VmRSS of status
# (fs/proc/task_mmu.c task_statm and task_mem read the same mm counters).

live = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"),
                          reason="needs a Linux /proc")


@live
def test_live_statm_is_vmrss_of_every_process():
    host = LinuxHost()
    compared = 0
    for pid in host.pids():
        try:
            before = read_statm(host, pid)
            status = read_status(host, pid)
            after = read_statm(host, pid)
        except ProcessError:
            continue  # exited, or hidden from us
        if before.resident_pages != after.resident_pages:
            continue  # its RSS changed while we read: nothing to compare
        if status.vm_rss_bytes is None:
            assert before.resident_pages == 0  # kernel thread or zombie: no mm
        else:
            assert before.resident_bytes(host.page_size_bytes) == status.vm_rss_bytes, pid
            compared += 1
    assert compared >= 1  # at least this test process


@live
def test_live_page_size_is_the_kernels():
    # statm counts in the kernel's base pages: a fake host assumes 4 KiB,
    # the real one must ask.
    assert LinuxHost().page_size_bytes == os.sysconf("SC_PAGE_SIZE")
    assert Host("/").page_size_bytes == 4096
