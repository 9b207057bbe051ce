"""numa_maps totals, the lazily parsed VMA rows, and re-parsing only the
lines that changed: each must agree with a plain parse of the same text."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad.errors import ParseError
from autonumad.model import VmaMove
from autonumad.plan.policy import VmaMoves
from autonumad.readers.numa_maps import NumaMaps, VmaLines, parse_numa_maps, reparse_numa_maps

SAMPLE = """\
00400000 default file=/usr/bin/app mapped=10 mapmax=2 N0=6 N1=4 kernelpagesize_kB=4
01a2b000 default heap anon=300 dirty=300 active=100 N0=100 N1=200 kernelpagesize_kB=4
7f0000000000 interleave:0-1 anon=1024 dirty=1024 N0=512 N1=512 kernelpagesize_kB=4
7f0040000000 bind:1 file=/dev/hugepages/db\\040buffer huge dirty=3 N1=3 kernelpagesize_kB=2048
7f00a0000000 local
7ffd1e5f2000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
"""


def same_parse(a: NumaMaps, b: NumaMaps) -> None:
    """Equal as values, and equal in everything the daemon asks of them."""
    assert a == b
    assert tuple(a.vmas) == tuple(b.vmas)
    assert a.totals == b.totals
    assert a.pages_by_node() == b.pages_by_node()
    assert a.first_explicit_policy() == b.first_explicit_policy()
    for node in range(3):
        assert a.movable_bytes_off_node(node) == b.movable_bytes_off_node(node)


# --------------------------------------------------------------------------
# Totals and the queries built on them

def test_totals_of_the_sample():
    nm = parse_numa_maps(SAMPLE)
    assert nm.totals.vma_count == len(nm.vmas) == 6
    assert nm.totals.policy_vmas == (("bind", 1), ("default", 3), ("interleave", 1), ("local", 1))
    assert nm.pages_by_node() == {0: 6 + 100 + 512 + 33, 1: 4 + 200 + 512 + 3 * 512}
    # Not movable: hugetlbfs pages (3 huge pages on node 1) and the file pages
    # another process maps too (/usr/bin/app, mapmax=2).
    assert nm.movable_bytes_off_node(0) == (200 + 512) * 4096
    assert nm.movable_bytes_off_node(1) == (100 + 512 + 33) * 4096


def test_totals_of_hand_built_vmas_equal_the_parsed_ones():
    parsed = parse_numa_maps(SAMPLE)
    by_hand = NumaMaps(tuple(parsed.vmas))
    assert isinstance(by_hand.vmas, tuple) and isinstance(parsed.vmas, VmaLines)
    same_parse(by_hand, parsed)


FIRST_EXPLICIT = [
    ("none", "1000 default N0=1\n2000 local N0=1\n", None),
    ("one-mode", "1000 default N0=1\n2000 bind:1 N1=1\n3000 bind:0 N0=1\n", "bind"),
    ("first-by-address-of-two", "1000 default N0=1\n2000 interleave:0-1 N1=1\n3000 bind:1 N1=1\n", "interleave"),
    ("other-order", "1000 bind:1 N1=1\n2000 interleave:0-1 N1=1\n", "bind"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in FIRST_EXPLICIT], ids=[c[0] for c in FIRST_EXPLICIT])
def test_first_explicit_policy(text, expected):
    assert parse_numa_maps(text).first_explicit_policy() == expected
    assert NumaMaps(tuple(parse_numa_maps(text).vmas)).first_explicit_policy() == expected


def test_parse_keeps_no_object_per_vma():
    # The point of VmaLines: a parsed file costs its text and a few totals,
    # not ~400 bytes of objects for each of its lines.
    text = "".join(f"{0x7f0000000000 + i * 0x1000:x} default anon=87 dirty=87 N0=21 N1=66 kernelpagesize_kB=4\n"
                   for i in range(3000))
    parse_numa_maps(text)  # warm the policy cache
    tracemalloc.start()
    try:
        nm = parse_numa_maps(text)
        # The parse's temporary tuples sit in the interpreter's free lists
        # (bounded, whatever the file's size); a full collection empties them.
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(nm.vmas) == 3000
    assert held < 16 * 1024, f"{held} bytes held for 3000 VMAs"


# --------------------------------------------------------------------------
# VmaLines behaves like the tuple of Vmas it stands for

def test_vma_lines_is_a_sequence_of_vmas():
    nm = parse_numa_maps(SAMPLE)
    rows = tuple(nm.vmas)
    assert len(rows) == 6 and rows[3].huge and rows[4].policy == "local"
    assert nm.vmas[3] == rows[3] and nm.vmas[-1] == rows[-1] and nm.vmas[1:3] == rows[1:3]
    assert nm.vmas == rows and rows == nm.vmas
    assert nm.vmas == parse_numa_maps(SAMPLE).vmas
    assert nm.vmas != rows[:-1]
    assert hash(nm.vmas) == hash(rows)
    assert rows[0] in nm.vmas
    assert repr(nm.vmas).startswith("VmaLines((Vma(")
    assert parse_numa_maps("") == NumaMaps(()) and parse_numa_maps("").vmas == ()


def test_vma_moves_are_the_off_node_vmas():
    nm = parse_numa_maps(SAMPLE)
    moves = VmaMoves(nm, 0)
    expected = (VmaMove(0x01a2b000, 4096, 200), VmaMove(0x7f0000000000, 4096, 512))
    assert tuple(moves) == expected and moves == expected and len(moves) == 2 and moves[1] == expected[1]
    assert sum(m.pages * m.page_size_bytes for m in moves) == nm.movable_bytes_off_node(0)
    assert hash(moves) == hash(expected)


# --------------------------------------------------------------------------
# reparse_numa_maps == parse_numa_maps, whatever changed

def test_reparse_of_the_same_text_is_the_same_object():
    text = SAMPLE
    nm = parse_numa_maps(text)
    assert reparse_numa_maps(str(text), text, nm) is nm


def test_reparse_one_changed_line():
    old = parse_numa_maps(SAMPLE)
    new_text = SAMPLE.replace("N0=100 N1=200", "N0=250 N1=50")
    same_parse(reparse_numa_maps(new_text, SAMPLE, old), parse_numa_maps(new_text))


@pytest.mark.parametrize("bad_line", ["01a2b000 default heap anon=300 N0=x", "garbage"])
def test_reparse_reports_a_bad_line_like_parse(bad_line):
    lines = SAMPLE.splitlines()
    lines[1] = bad_line
    new_text = "\n".join(lines) + "\n"
    with pytest.raises(ParseError) as plain:
        parse_numa_maps(new_text)
    with pytest.raises(ParseError) as incremental:
        reparse_numa_maps(new_text, SAMPLE, parse_numa_maps(SAMPLE))
    assert str(incremental.value) == str(plain.value) and "line 2" in str(plain.value)


ADDRESS = st.integers(0, 2**48).map(lambda a: f"{a:x}")
POLICY = st.sampled_from(["default", "local", "bind:1", "interleave:0-2", "prefer (many):0-1", "weighted interleave:1"])
KIND = st.sampled_from(["", " heap", " stack", " file=/lib/x.so", " file=/dev/hugepages/h huge"])
NODES = st.dictionaries(st.integers(0, 3), st.integers(1, 10**6), max_size=3)
PAGE_KB = st.sampled_from([4, 64, 2048])


@st.composite
def lines(draw):
    nodes = " ".join(f"N{n}={c}" for n, c in sorted(draw(NODES).items()))
    tail = f" {nodes} kernelpagesize_kB={draw(PAGE_KB)}" if nodes else ""
    return f"{draw(ADDRESS)} {draw(POLICY)}{draw(KIND)}{tail}"


@st.composite
def edits(draw):
    """An old file and a new one made from it by the edits a pass can see."""
    old = draw(st.lists(lines(), max_size=12))
    new = list(old)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["change", "insert", "delete", "duplicate", "swap"]))
        if op == "insert" or not new:
            new.insert(draw(st.integers(0, len(new))), draw(lines()))
        else:
            i = draw(st.integers(0, len(new) - 1))
            if op == "change":
                new[i] = draw(lines())
            elif op == "delete":
                del new[i]
            elif op == "duplicate":
                new.insert(i, new[i])
            else:
                j = draw(st.integers(0, len(new) - 1))
                new[i], new[j] = new[j], new[i]
    return "".join(x + "\n" for x in old), "".join(x + "\n" for x in new)


@given(edits())
@settings(max_examples=300)
def test_reparse_equals_parse(texts):
    old_text, new_text = texts
    same_parse(reparse_numa_maps(new_text, old_text, parse_numa_maps(old_text)), parse_numa_maps(new_text))


@given(edits(), st.data())
@settings(max_examples=100)
def test_reparse_with_a_corrupted_new_line_fails_like_parse(texts, data):
    old_text, new_text = texts
    new_lines = new_text.splitlines()
    i = data.draw(st.integers(0, len(new_lines)), label="at")
    new_lines.insert(i, data.draw(st.sampled_from(["1000 default N0=-1", "zz default", "1000 bind: N0=1"])))
    new_text = "\n".join(new_lines) + "\n"
    with pytest.raises(ParseError) as plain:
        parse_numa_maps(new_text)
    with pytest.raises(ParseError) as incremental:
        reparse_numa_maps(new_text, old_text, parse_numa_maps(old_text))
    assert str(incremental.value) == str(plain.value)


# --------------------------------------------------------------------------
# A large file's text is held packed, and reads back exactly

def test_large_text_is_held_packed_and_reads_back_exactly(monkeypatch):
    from autonumad.readers import numa_maps as nm_mod
    # A file name the Host decoded with surrogateescape (a byte that is not UTF-8).
    text = SAMPLE + "7f00c0000000 default file=/tmp/\udcff\udce9 mapped=1 N0=1 kernelpagesize_kB=4\n"
    small = parse_numa_maps(text)
    monkeypatch.setattr(nm_mod, "_PACK_CHARS", 100)
    packed = parse_numa_maps(text)
    assert packed.vmas._text is None and packed.vmas.held_bytes() < len(text)
    assert packed.vmas.text == text
    same_parse(packed, small)
    assert tuple(packed.vmas)[-1].path == "/tmp/\udcff\udce9"
    # and a re-parse against a packed previous file
    new_text = text.replace("N0=100 N1=200", "N0=250 N1=50")
    same_parse(reparse_numa_maps(new_text, packed.vmas.text, packed), parse_numa_maps(new_text))


def test_a_large_file_held_packed_is_much_smaller():
    text = "".join(f"{0x7f0000000000 + i * 0x1000:x} default anon={i % 97} dirty={i % 97} N0={i % 89} N1={i % 13} "
                   f"kernelpagesize_kB=4\n" for i in range(1, 30_000))
    nm = parse_numa_maps(text)
    assert len(text) > 2**20 and nm.vmas.held_bytes() < len(text) // 5


def test_snapshot_cache_lets_an_old_text_go_once_the_new_one_is_parsed():
    # Under churn every text changes: holding the old ones until the end of
    # the snapshot would hold two passes' texts at once.
    from autonumad.observe.snapshot import SnapshotCache
    cache = SnapshotCache()
    cache.begin()
    cache.parse_numa_maps((1, 10), SAMPLE)
    cache.parse_numa_maps((2, 20), SAMPLE)
    cache.commit()
    cache.begin()
    new_text = SAMPLE.replace("N0=100 N1=200", "N0=250 N1=50")
    nm = cache.parse_numa_maps((1, 10), new_text)
    held = [e.numa_maps.vmas.text for e in cache._entries.values()]
    assert held == [SAMPLE]  # pid 2's, not yet read in this snapshot; pid 1's old text is gone
    same_parse(nm, parse_numa_maps(new_text))
    cache.commit()
    assert len(cache) == 1 and cache.changed == 1
