"""Property tests for the procfs parsers.

1. Robustness: arbitrary, truncated and corrupted text makes every parser
   either succeed or raise ParseError -- never IndexError, KeyError, a bare
   ValueError or anything else -- and a success still satisfies the
   parser's invariants (counts non-negative, fractions in range, ...).
2. Round trips: text generated in the kernel's format from random values
   parses back to those values.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad.errors import ParseError
from autonumad.readers.cgroup import parse_cgroup
from autonumad.readers.meminfo import parse_meminfo
from autonumad.readers.numa_maps import parse_numa_maps
from autonumad.readers.proc_maps import parse_maps
from autonumad.readers.proc_stat import CpuTimes, cpu_busy_fraction, parse_proc_stat
from autonumad.readers.proc_status import parse_status
from autonumad.readers.task_stat import parse_stat
from autonumad.readers.vmstat import parse_vmstat
from autonumad.readers.zoneinfo import node_watermarks, parse_zoneinfo
# pytest puts tests/ on sys.path (rootdir-less "prepend" import mode).
from test_readers_proc import (
    REAL_HYBRID_CGROUP,
    REAL_MAPS,
    REAL_MEMINFO,
    REAL_NODE_MEMINFO,
    REAL_PROC_STAT,
    REAL_STAT,
    REAL_STATUS,
    REAL_VMSTAT,
    REAL_ZONEINFO,
    TWO_NODE_NUMA_MAPS,
)

# Characters that mean something to at least one of these formats, plus
# Unicode whitespace and digits that str methods treat specially.
SPECIAL = list(" \t\n:=-,()|\\/[]kBN0123456789abcdefx_") + ["\x0c", "\xa0", "\u2028", "\u0663", "\xb2"]
FUZZ_TEXT = st.text(alphabet=st.sampled_from(SPECIAL) | st.characters(), max_size=300)


def check_numa_maps(text):
    nm = parse_numa_maps(text)
    for vma in nm.vmas:
        assert vma.start >= 0 and vma.page_size_bytes > 0
        assert all(n >= 0 and c >= 0 for n, c in vma.pages_by_node)
        assert [n for n, _ in vma.pages_by_node] == sorted({n for n, _ in vma.pages_by_node})
        assert min(vma.anon_pages, vma.dirty_pages, vma.mapped_pages, vma.mapmax) >= 0
    assert all(c >= 0 for c in nm.pages_by_node().values())


def check_maps(text):
    for r in parse_maps(text):
        assert 0 <= r.start <= r.end and r.offset >= 0 and r.inode >= 0 and len(r.perms) == 4


def check_status(text):
    s = parse_status(text)
    assert len(s.state) == 1 and s.uids
    assert s.vm_rss_bytes is None or s.vm_rss_bytes % 1024 == 0


def check_stat(text):
    assert len(parse_stat(text).state) == 1


def check_vmstat(text):
    assert all(isinstance(v, int) for v in parse_vmstat(text).values())


def check_meminfo(text):
    assert all(isinstance(v, int) for v in parse_meminfo(text).values())


def check_zoneinfo(text):
    zones = parse_zoneinfo(text)
    for z in zones:
        assert min(z.free_pages, z.min_pages, z.low_pages, z.high_pages, z.managed_pages) >= 0
    for wm in node_watermarks(zones).values():
        assert min(wm[:4]) >= 0


def check_proc_stat(text):
    cpus = parse_proc_stat(text)
    assert cpus
    for t in cpus.values():
        assert 0 <= t.busy_ticks <= t.total_ticks


def check_cgroup(text):
    assert isinstance(parse_cgroup(text), str)


PARSERS = [
    (check_numa_maps, TWO_NODE_NUMA_MAPS),
    (check_maps, REAL_MAPS),
    (check_status, REAL_STATUS),
    (check_stat, REAL_STAT),
    (check_vmstat, REAL_VMSTAT),
    (check_meminfo, REAL_MEMINFO + REAL_NODE_MEMINFO),
    (check_zoneinfo, REAL_ZONEINFO),
    (check_proc_stat, REAL_PROC_STAT),
    (check_cgroup, REAL_HYBRID_CGROUP),
]
IDS = [check.__name__.removeprefix("check_") for check, _ in PARSERS]


def succeeds_or_parse_error(check, text) -> None:
    try:
        check(text)
    except ParseError:
        pass


@pytest.mark.parametrize("check,sample", PARSERS, ids=IDS)
@given(text=FUZZ_TEXT)
@settings(max_examples=150)
def test_arbitrary_text(check, sample, text):
    succeeds_or_parse_error(check, text)


@pytest.mark.parametrize("check,sample", PARSERS, ids=IDS)
@given(data=st.data())
@settings(max_examples=100)
def test_truncated_sample(check, sample, data):
    cut = data.draw(st.integers(0, len(sample)), label="cut")
    succeeds_or_parse_error(check, sample[:cut])


@pytest.mark.parametrize("check,sample", PARSERS, ids=IDS)
@given(data=st.data())
@settings(max_examples=200)
def test_corrupted_sample(check, sample, data):
    i = data.draw(st.integers(0, len(sample)), label="from")
    j = data.draw(st.integers(i, min(len(sample), i + 12)), label="to")
    junk = data.draw(st.text(alphabet=st.sampled_from(SPECIAL), max_size=8), label="junk")
    succeeds_or_parse_error(check, sample[:i] + junk + sample[j:])


@pytest.mark.parametrize("check,sample", PARSERS, ids=IDS)
def test_samples_parse(check, sample):
    # The base samples themselves must parse, or the properties above
    # would only ever exercise the error path.
    check(sample)


# --------------------------------------------------------------------------
# Round trips

POLICIES = st.sampled_from(["default", "local", "prefer", "bind", "interleave",
                            "weighted interleave", "prefer (many)"])
FLAGS = st.sampled_from(["", "static", "relative", "balancing", "static|balancing", "relative|balancing"])
NODE_SET = st.frozensets(st.integers(0, 63), min_size=1, max_size=6)
# File names: anything but "/" and NUL is legal; backslash is left out
# because "\040" written literally in a name is indistinguishable from an
# escaped space (see the numa_maps module doc).
PATH_CHARS = st.characters(blacklist_characters="\\/\x00", blacklist_categories=("Cs",)) | st.sampled_from(
    [" ", "\t", "\n", "=", "\x0c", "\xa0", "\u2028"])
PATHS = st.lists(st.text(PATH_CHARS, min_size=1, max_size=12), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts))
COUNT = st.integers(0, 10**12)


def format_list(nodes) -> str:
    return ",".join(str(n) for n in sorted(nodes))


def escape(path: str) -> str:
    return path.replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012").replace("=", "\\075")


@st.composite
def vma_specs(draw):
    mode = draw(POLICIES)
    flags = "" if mode in ("default", "local") else draw(FLAGS)
    nodes = () if mode in ("default", "local") else tuple(sorted(draw(NODE_SET)))
    return dict(
        start=draw(st.integers(0, 2**64 - 1)),
        policy=mode, policy_flags=flags, policy_nodes=nodes,
        kind=draw(st.sampled_from(["anon", "heap", "stack", "file"])),
        path=draw(PATHS),
        huge=draw(st.booleans()),
        anon=draw(COUNT), dirty=draw(COUNT), mapped=draw(COUNT), mapmax=draw(COUNT),
        swapcache=draw(COUNT), writeback=draw(COUNT), active=draw(st.none() | COUNT),
        by_node=draw(st.dictionaries(st.integers(0, 1023), st.integers(1, 10**12), max_size=4)),
        page_kb=draw(st.sampled_from([4, 16, 64, 2048, 1048576])),
        unknown=draw(st.lists(st.sampled_from(["future=1", "shiny", "kernelpage", "N=3", "Nx=2"]), max_size=2)),
    )


def numa_maps_line(v) -> str:
    """A line in show_numa_map()'s order; zero counts are omitted like the kernel does."""
    policy = v["policy"] + (f"={v['policy_flags']}" if v["policy_flags"] else "")
    if v["policy_nodes"]:
        policy += ":" + format_list(v["policy_nodes"])
    toks = [f"{v['start']:x}", policy]
    toks += {"anon": [], "heap": ["heap"], "stack": ["stack"], "file": [f"file={escape(v['path'])}"]}[v["kind"]]
    if v["huge"]:
        toks.append("huge")
    for key in ("anon", "dirty", "mapped", "mapmax", "swapcache"):
        if v[key]:
            toks.append(f"{key}={v[key]}")
    if v["active"] is not None:
        toks.append(f"active={v['active']}")
    if v["writeback"]:
        toks.append(f"writeback={v['writeback']}")
    toks += [f"N{n}={c}" for n, c in sorted(v["by_node"].items())]
    toks.append(f"kernelpagesize_kB={v['page_kb']}")
    toks += v["unknown"]
    return " ".join(toks)


@given(st.lists(vma_specs(), max_size=8))
@settings(max_examples=200)
def test_numa_maps_round_trip(specs):
    nm = parse_numa_maps("".join(numa_maps_line(v) + "\n" for v in specs))
    assert len(nm.vmas) == len(specs)
    expected_total: dict[int, int] = {}
    for v, vma in zip(specs, nm.vmas):
        assert vma.start == v["start"]
        assert (vma.policy, vma.policy_flags, vma.policy_nodes) == (v["policy"], v["policy_flags"], v["policy_nodes"])
        assert vma.path == {"anon": None, "heap": "[heap]", "stack": "[stack]", "file": v["path"]}[v["kind"]]
        assert vma.is_file == (v["kind"] == "file")
        assert vma.huge == v["huge"]
        assert (vma.anon_pages, vma.dirty_pages, vma.mapped_pages, vma.mapmax) == (
            v["anon"], v["dirty"], v["mapped"], v["mapmax"])
        assert (vma.swapcache_pages, vma.writeback_pages, vma.active_pages) == (
            v["swapcache"], v["writeback"], v["active"])
        assert dict(vma.pages_by_node) == v["by_node"]
        assert vma.page_size_bytes == v["page_kb"] * 1024
        for n, c in v["by_node"].items():
            expected_total[n] = expected_total.get(n, 0) + c * v["page_kb"] // 4
    assert nm.pages_by_node() == expected_total
    assert nm.has_explicit_policy() == any(v["policy"] not in ("default", "local") for v in specs)


MAPS_PATHS = st.none() | st.text(st.characters(blacklist_characters="\\\x00", blacklist_categories=("Cs",)),
                                  min_size=1, max_size=20).filter(lambda p: not p.startswith(" "))


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**40), st.sampled_from(["r-xp", "rw-s", "---p"]),
                          st.integers(0, 2**40), st.integers(0, 255), st.integers(0, 255),
                          st.integers(0, 2**63), MAPS_PATHS), max_size=6))
def test_maps_round_trip(rows):
    text = ""
    for start, size, perms, offset, major, minor, inode, path in rows:
        prefix = f"{start:08x}-{start + size:08x} {perms} {offset:08x} {major:02x}:{minor:02x} {inode} "
        # Kernel: pad to a fixed column before a path, nothing after an anonymous one.
        text += (prefix.ljust(73) + path.replace("\n", "\\012") if path is not None else prefix) + "\n"
    ranges = parse_maps(text)
    assert [(r.start, r.size_bytes, r.perms, r.offset, r.dev, r.inode, r.path) for r in ranges] == [
        (s, size, p, o, f"{ma:02x}:{mi:02x}", i, path) for s, size, p, o, ma, mi, i, path in rows]


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True), st.integers(0, 2**64 - 1)))
def test_vmstat_round_trip(counters):
    assert dict(parse_vmstat("".join(f"{k} {v}\n" for k, v in counters.items()))) == counters


@given(st.dictionaries(st.from_regex(r"[A-Z][A-Za-z0-9_()]{0,20}", fullmatch=True),
                       st.tuples(st.integers(0, 2**50), st.booleans())),
       st.none() | st.integers(0, 1023))
def test_meminfo_round_trip(fields, node):
    prefix = "" if node is None else f"Node {node} "
    text = "".join(f"{prefix}{k + ':':<16}{v:>8}{' kB' if kb else ''}\n" for k, (v, kb) in fields.items())
    assert dict(parse_meminfo(text)) == {k: v * 1024 if kb else v for k, (v, kb) in fields.items()}


COMM = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(COMM, st.lists(st.integers(0, 2**63), min_size=50, max_size=50), st.sampled_from("RSDZTtXIP"))
def test_stat_round_trip(comm, numbers, state):
    fields = [str(numbers[0]), f"({comm})", state] + [str(n) for n in numbers[3:]]
    s = parse_stat(" ".join(fields) + "\n")
    # proc(5) positions, 1-based.
    assert (s.tid, s.comm, s.state, s.ppid) == (numbers[0], comm, state, numbers[3])
    assert (s.utime_ticks, s.stime_ticks, s.num_threads, s.starttime_ticks, s.rss_pages, s.processor) == (
        numbers[13], numbers[14], numbers[19], numbers[21], numbers[23], numbers[38])


@given(st.dictionaries(st.integers(0, 4095), st.lists(st.integers(0, 2**40), min_size=4, max_size=10), min_size=1))
def test_proc_stat_round_trip(cpus):
    text = "cpu  0 0 0 0\n" + "".join(f"cpu{c} " + " ".join(map(str, t)) + "\n" for c, t in cpus.items())
    parsed = parse_proc_stat(text)
    assert set(parsed) == set(cpus)
    for c, t in cpus.items():
        busy = sum(t[i] for i in (0, 1, 2, 5, 6, 7) if i < len(t))
        assert parsed[c] == CpuTimes(c, busy, busy + t[3] + (t[4] if len(t) > 4 else 0))


TIMES = st.builds(lambda b, i: (b, b + i), st.integers(0, 2**40), st.integers(0, 2**40))


@given(st.dictionaries(st.integers(0, 7), TIMES), st.dictionaries(st.integers(0, 7), TIMES))
def test_cpu_busy_fraction_in_range(prev, cur):
    out = cpu_busy_fraction({c: CpuTimes(c, *t) for c, t in prev.items()},
                            {c: CpuTimes(c, *t) for c, t in cur.items()})
    assert set(out) == set(prev) & set(cur)
    assert all(0.0 <= f <= 1.0 for f in out.values())
