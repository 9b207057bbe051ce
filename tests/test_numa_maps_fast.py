"""The numa_maps fast path (a regular expression for kernel-shaped lines, and
the bulk subtraction of known lines in a re-parse) against the full,
token-by-token parser: same totals, same rows, same errors, on valid and
malformed input alike."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad.errors import ParseError
from autonumad.readers import numa_maps as nm_mod
from autonumad.readers.numa_maps import parse_numa_maps, parse_numa_maps_slowly, reparse_numa_maps

# --------------------------------------------------------------------------
# Lines: mostly in the kernel's order with plausible values, with every
# field now and then replaced by something the full parser refuses or reads
# differently (the cases a fast path gets wrong first).

def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """`usual` seven times in eight, else `odd`: most lines stay valid, so files of ten lines often are."""
    return st.integers(0, 7).flatmap(lambda i: odd if i == 0 else usual)


def often(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """`odd` one time in three: for single lines, where a broken field is the point."""
    return st.integers(0, 2).flatmap(lambda i: odd if i == 0 else usual)


ODD_DIGITS = ["0", "00", "007", "", "-1", "+1", "1_0", "0x10", " 5", "٣", "１", "5x", "1=2", "9" * 21, "9" * 4301]


def digits(max_value: int = 10**22, mix=mostly) -> st.SearchStrategy[str]:
    return mix(st.integers(0, max_value).map(str),
               st.sampled_from(ODD_DIGITS))


ADDRESS = mostly(st.integers(0, 2**64 - 1).map(lambda a: f"{a:x}"),
                 st.sampled_from(["0", "7F00", "0x7f", "-1", "", "zz", "1" * 17, "٣"]))
POLICY = mostly(st.sampled_from(["default", "local", "bind:1", "bind=static:0-1", "interleave:0-3", "prefer:2"]),
                st.sampled_from([
                    "prefer", "prefer (many):0-1", "prefer (many)=static:1", "weighted interleave:1", "weighted",
                    "interleave=relative|balancing:0,2", "bind:", "bind:1-0", "bind=:1", "bind=STATIC:1", "Default",
                    "heap", "huge", "N0=1", "unknown", "file=x", "(many)",
                    "bind:" + ",".join(str(n) for n in range(0, 40, 2))]))
KIND = mostly(st.sampled_from(["", "heap", "stack", "file=/usr/lib/libc.so.6"]),
              st.sampled_from(["file=", "file=/a\\040b", "file=/x=y", "file=/N0=5", "file=/é", "file", "heap stack"]))
COUNT_KEYS = ["anon", "dirty", "mapped", "mapmax", "swapcache", "active", "writeback"]
PAGE_KB = st.one_of(st.sampled_from(["4", "2048", "1048576", "64"]), digits(4096))


@st.composite
def line_tokens(draw, mix=mostly) -> list[str]:
    tokens = [draw(ADDRESS), draw(POLICY)]
    kind = draw(KIND)
    if kind:
        tokens.append(kind)
    if draw(st.booleans()):
        tokens.append("huge")
    for key in COUNT_KEYS:
        if draw(st.integers(0, 3)) == 0:
            tokens.append(f"{key}={draw(digits(mix=mix))}")
    # mapmax decides whether a file VMA's pages are movable: make it common.
    if draw(st.booleans()):
        tokens.append(f"mapmax={draw(st.sampled_from(['1', '2', '01', '02', '0']))}")
    nodes = draw(st.lists(mostly(st.integers(0, 3).map(str), st.sampled_from(["", "00", "1024", "x", "٠"])),
                          max_size=4))
    tokens += [f"N{n}={draw(digits(10**12, mix))}" for n in nodes]
    if draw(st.integers(0, 4)):
        tokens.append(f"kernelpagesize_kB={draw(PAGE_KB)}")
    if draw(st.integers(0, 5)) == 0:
        tokens.insert(draw(st.integers(2, len(tokens))), draw(st.sampled_from(["future=1", "shiny", "", "N=3", "kernelpage"])))
    if draw(st.integers(0, 5)) == 0:
        i, j = draw(st.integers(0, len(tokens) - 1)), draw(st.integers(0, len(tokens) - 1))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return tokens


@st.composite
def lines(draw, mix=mostly) -> str:
    tokens = draw(line_tokens(mix))
    sep = draw(mostly(st.just(" "), st.sampled_from(["  ", "\t", " \r"])))
    return sep.join(tokens) + draw(mostly(st.just(""), st.sampled_from([" ", "\r"])))


@st.composite
def texts(draw) -> str:
    rows = draw(st.lists(lines(), max_size=10))
    if rows and draw(st.integers(0, 4)) == 0:
        rows.insert(draw(st.integers(0, len(rows))), "")  # an empty line
    return "\n".join(rows) + draw(st.sampled_from(["\n", ""]))


def outcome(parse, *args):
    """What a parse gives: its totals and rows, or its error message."""
    try:
        nm = parse(*args)
    except ParseError as e:
        return ("error", str(e))
    return ("ok", nm.totals, tuple(nm.vmas))


# --------------------------------------------------------------------------
# The fast path agrees with the full parser

@given(texts())
@settings(max_examples=400)
def test_parse_agrees_with_the_full_parser(text):
    assert outcome(parse_numa_maps, text) == outcome(parse_numa_maps_slowly, text)


@given(lines(often))
@settings(max_examples=1000)
def test_a_line_the_fast_path_reads_is_read_alike_by_the_full_parser(line):
    row = nm_mod._fast_row(line)
    try:
        fields = nm_mod._parse_fields(line)
    except ParseError:
        assert row is None, "the fast path read a line the full parser refuses"
        return
    if row is None:
        return  # left to the full parser: always allowed
    mode, page_size_bytes, unmovable = nm_mod._fast_class(nm_mod._ROW_CLASS(row))
    assert mode == fields[nm_mod._F_POLICY]
    assert unmovable == nm_mod._unmovable(fields)
    by_node: dict[int, int] = {}
    for node, count in nm_mod._NODE_TOKEN.findall(nm_mod._ROW_NODES(row)):
        by_node[int(node)] = by_node.get(int(node), 0) + int(count)
    assert tuple(sorted(by_node.items())) == fields[nm_mod._F_PAGES_BY_NODE]
    if by_node:  # the page size matters only where there are pages
        assert page_size_bytes == fields[nm_mod._F_PAGE_SIZE]


@st.composite
def edits(draw):
    """An old file that parses and a new one made from it by a pass's edits (which may break it)."""
    old = draw(st.lists(lines().filter(lambda x: outcome(parse_numa_maps_slowly, x)[0] == "ok"), max_size=10))
    new = list(old)
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["change", "insert", "delete", "duplicate"]))
        if op == "insert" or not new:
            new.insert(draw(st.integers(0, len(new))), draw(lines()))
        else:
            i = draw(st.integers(0, len(new) - 1))
            if op == "change":
                new[i] = draw(lines())
            elif op == "delete":
                del new[i]
            else:
                new.insert(i, new[i])
    return "".join(x + "\n" for x in old), "".join(x + "\n" for x in new)


@given(edits())
@settings(max_examples=200)
def test_reparse_agrees_with_the_full_parser(texts_):
    old_text, new_text = texts_
    previous = parse_numa_maps(old_text)
    assert outcome(reparse_numa_maps, new_text, old_text, previous) == outcome(parse_numa_maps_slowly, new_text)


# Files of one policy mode and one page class, as most processes' changing
# lines are: the case the bulk subtraction of known lines takes.
# Non-ASCII decimal digits are digits to the full parser (str.isdecimal, int).
VALID_COUNT = mostly(st.integers(0, 10**6).map(str), st.sampled_from(["٣", "１٠", "007"]))
ANON_LINE = st.builds(
    lambda a, anon, nodes, extra: f"{a:x} default{extra} anon={anon} dirty={anon}"
                                  + "".join(f" N{n}={c}" for n, c in sorted(nodes.items())) + " kernelpagesize_kB=4",
    st.integers(0, 2**48), st.integers(1, 10**6),
    st.dictionaries(mostly(st.sampled_from("0123"), st.just("٠")), VALID_COUNT, max_size=3),
    st.sampled_from(["", " heap", " stack", " file=/tmp/x", " file=/tmp/N0=9"]))


@st.composite
def one_class_edits(draw):
    old = draw(st.lists(ANON_LINE, max_size=12))
    new = [draw(ANON_LINE) if draw(st.integers(0, 2)) == 0 else x for x in old]
    if draw(st.booleans()):
        new.insert(draw(st.integers(0, len(new))), draw(ANON_LINE | lines()))
    return "".join(x + "\n" for x in old), "".join(x + "\n" for x in new)


@given(one_class_edits())
@settings(max_examples=300)
def test_reparse_of_one_class_files_agrees_with_the_full_parser(texts_):
    old_text, new_text = texts_
    previous = parse_numa_maps(old_text)
    assert outcome(reparse_numa_maps, new_text, old_text, previous) == outcome(parse_numa_maps_slowly, new_text)


# Files of one class other than the default one: a policy token of their own
# (two tokens of one mode are one class), a page size of their own, and now
# and then a line of another kind, without its page size, or with its own
# policy token: the cases the class-wide read of new lines (_add_class_lines)
# must leave to the per-line path.
CLASS_POLICY = st.sampled_from(["default", "local", "bind:1", "bind=static:0-1", "interleave:0-3"])
CLASS_PAGE_KB = st.sampled_from(["4", "2048", "64"])


@st.composite
def class_line(draw, policy: str, page_kb: str) -> str:
    tokens = [f"{draw(st.integers(0, 2**48)):x}", draw(mostly(st.just(policy), CLASS_POLICY))]
    tokens += [draw(mostly(st.sampled_from(["", "heap", "stack"]), st.sampled_from(["file=/x", "huge"])))]
    for key in COUNT_KEYS:
        if draw(st.integers(0, 3)) == 0:
            tokens.append(f"{key}={draw(VALID_COUNT)}")
    tokens += [f"N{n}={draw(VALID_COUNT)}" for n in sorted(draw(st.sets(st.sampled_from("0123"), max_size=3)))]
    tokens.append(draw(mostly(st.just(f"kernelpagesize_kB={page_kb}"), st.sampled_from(["", "kernelpagesize_kB=4"]))))
    return " ".join(t for t in tokens if t)


@st.composite
def other_class_edits(draw):
    policy, page_kb = draw(CLASS_POLICY), draw(CLASS_PAGE_KB)
    line = class_line(policy, page_kb)
    old = draw(st.lists(line, min_size=1, max_size=12))
    new = [draw(line | lines()) if draw(st.integers(0, 2)) == 0 else x for x in old]
    return "".join(x + "\n" for x in old), "".join(x + "\n" for x in new)


@given(other_class_edits())
@settings(max_examples=400)
def test_reparse_of_other_one_class_files_agrees_with_the_full_parser(texts_):
    old_text, new_text = texts_
    previous = parse_numa_maps(old_text)
    assert outcome(reparse_numa_maps, new_text, old_text, previous) == outcome(parse_numa_maps_slowly, new_text)


def test_one_odd_field_in_a_line_of_a_one_class_file_is_read_as_the_full_parser_reads_it():
    previous_text = "".join(f"{0x1000 * (i + 1):x} default anon=9 dirty=9 N0={i} N1=9 kernelpagesize_kB=4\n"
                            for i in range(20))
    previous = parse_numa_maps(previous_text)
    for line in one_field_variants():
        for at in (0, 7):  # the first new line names the policy token the class read expects
            new_text = previous_text.replace(previous_text.split("\n")[at], line)
            assert outcome(reparse_numa_maps, new_text, previous_text, previous) == \
                outcome(parse_numa_maps_slowly, new_text), line


# --------------------------------------------------------------------------
# The fast path is taken where it should be (else the tests above prove
# nothing about it)

KERNEL_TEXT = "".join(
    f"{0x7f0000000000 + i * 0x200000:x} default anon={i + 1} dirty={i + 1} N0={i} N1=1 kernelpagesize_kB=4\n"
    for i in range(5000)) + (
    "55d0c8a00000 default file=/usr/bin/app mapped=10 mapmax=3 N0=6 N1=4 kernelpagesize_kB=4\n"
    "55d0c9000000 default heap anon=300 dirty=300 active=100 N0=100 N1=200 kernelpagesize_kB=4\n"
    "7f1000000000 bind:1 file=/dev/hugepages/db\\040buffer huge dirty=3 N1=3 kernelpagesize_kB=2048\n"
    "7f2000000000 local\n"
    "7ffd1e5f2000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4\n")


@pytest.fixture
def no_full_parser(monkeypatch):
    def refuse(line):
        raise AssertionError(f"the full parser was asked to read {line!r}")
    monkeypatch.setattr(nm_mod, "_parse_fields", refuse)


def test_kernel_lines_need_no_full_parse(no_full_parser):
    nm = parse_numa_maps(KERNEL_TEXT)
    assert nm.totals.vma_count == 5005
    assert nm.totals.policy_vmas == (("bind", 1), ("default", 5003), ("local", 1))


def test_reparse_of_changed_kernel_lines_needs_no_full_parse(no_full_parser):
    previous = parse_numa_maps(KERNEL_TEXT)
    lines_ = KERNEL_TEXT.split("\n")
    for i in range(0, 5000, 10):
        lines_[i] = lines_[i].replace(" N1=1 ", " N1=2 ")
    del lines_[7]
    new_text = "\n".join(lines_)
    assert reparse_numa_maps(new_text, KERNEL_TEXT, previous).totals == parse_numa_maps(new_text).totals


def test_new_lines_of_a_one_class_file_are_read_by_one_class_wide_findall(monkeypatch):
    old_text = "".join(f"{0x1000 * (i + 1):x} bind:1 anon=9 dirty=9 N1={i} kernelpagesize_kB=2048\n"
                       for i in range(100))
    new_text = old_text.replace("dirty=9 N1=", "dirty=8 N1=1", 30)
    expected = parse_numa_maps_slowly(new_text).totals
    previous = parse_numa_maps(old_text)
    monkeypatch.setattr(nm_mod, "_add_lines", lambda *a: pytest.fail("per-line read of new lines"))
    monkeypatch.setattr(nm_mod, "_parse_fields", lambda line: pytest.fail(f"full parse of {line!r}"))
    assert reparse_numa_maps(new_text, old_text, previous).totals == expected


@pytest.mark.parametrize("line", [
    "3000 bind:1 anon=9 N1=4",  # no page size: base pages, another class
    "3000 bind:1 anon=9",  # no pages at all: one VMA of the mode
    "3000 bind:1 anon=9 N1=4 kernelpagesize_kB=4",
    "3000 bind:1 huge anon=9 N1=4 kernelpagesize_kB=2048",
    "3000 bind:1 file=/x mapmax=2 N1=4 kernelpagesize_kB=2048",
    "3000 bind:0 anon=9 N0=4 kernelpagesize_kB=2048",  # the same mode, another token
    "3000 interleave:1 anon=9 N1=4 kernelpagesize_kB=2048",
    "3000 bind:1 heap anon=9 N01=4 N3=1 kernelpagesize_kB=2048",  # a node the file had no pages on
    "3000 bind:1 anon=9 N1=٣ kernelpagesize_kB=2048",
])
def test_a_new_line_off_a_one_class_file_class_is_read_as_the_full_parser_reads_it(line):
    old_text = "".join(f"{0x1000 * (i + 1):x} bind:1 anon=9 N1={i + 1} kernelpagesize_kB=2048\n" for i in range(10))
    for at in (0, 5):  # as the first new line and as a later one
        rows = old_text.split("\n")
        rows[at] = line
        rows[7] = rows[7].replace("anon=9", "anon=8")
        new_text = "\n".join(rows)
        assert outcome(reparse_numa_maps, new_text, old_text, parse_numa_maps(old_text)) == \
            outcome(parse_numa_maps_slowly, new_text)


def test_known_lines_of_a_one_class_file_are_subtracted_unparsed(monkeypatch):
    # Only the bulk subtraction may read the lines that went: _add_lines
    # (the per-line fast path) may read only the lines that came.
    old_text = "".join(f"{0x1000 * (i + 1):x} default anon=9 dirty=9 N0={i} N1=9 kernelpagesize_kB=4\n"
                       for i in range(100))
    new_text = old_text.replace("N1=9 ", "N1=8 ", 30)
    came = [x for x in new_text.split("\n") if x and x not in old_text]
    expected = nm_mod.NumaMaps(tuple(nm_mod.VmaLines(new_text, 100))).totals  # rows parsed before the patch
    add_lines = nm_mod._add_lines

    def only_added(acc, lines_, times):
        assert times == 1 and lines_ == came
        return add_lines(acc, lines_, times)
    previous = parse_numa_maps(old_text)
    monkeypatch.setattr(nm_mod, "_add_lines", only_added)
    monkeypatch.setattr(nm_mod, "_parse_fields", lambda line: pytest.fail(f"full parse of {line!r}"))
    assert reparse_numa_maps(new_text, old_text, previous).totals == expected


def test_a_bad_line_among_kernel_lines_is_named_as_the_full_parser_names_it():
    lines_ = KERNEL_TEXT.split("\n")
    lines_[4321] = lines_[4321].replace("N0=", "N0=-")
    text = "\n".join(lines_)
    with pytest.raises(ParseError) as fast:
        parse_numa_maps(text)
    with pytest.raises(ParseError) as full:
        parse_numa_maps_slowly(text)
    assert str(fast.value) == str(full.value) and str(fast.value).startswith("line 4322:")


# Every field of kernel-shaped lines, one at a time, given each value the
# fast path must not read differently from the full parser: a table, since
# random lines rarely hold just one bad field in an otherwise kernel-shaped line.
BASE_LINES = [
    "7f0000000000 default anon=87 dirty=87 mapped=90 mapmax=2 swapcache=1 active=3 writeback=1 N0=21 N1=66 "
    "kernelpagesize_kB=4",
    "55d0c8a00000 bind=static:0-1 file=/usr/bin/app huge mapmax=3 N1=4 kernelpagesize_kB=2048",
    "7ffd1e5f2000 interleave:0,2 stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4",
]
ODD_TOKENS = ["", "x", "N0=1", "N=1", "Nx=1", "heap", "huge", "file=/z", "file", "(many)", "(many):1", "interleave:1",
              "kernelpagesize_kB=0", "mapmax=9", "future=1"]


def one_field_variants():
    for line in BASE_LINES:
        tokens = line.split(" ")
        for i, token in enumerate(tokens):
            key, eq, _ = token.partition("=")
            values = ODD_DIGITS + ["ffff", "1" * 17] if eq else []
            for v in values:
                yield " ".join(tokens[:i] + [f"{key}={v}"] + tokens[i + 1:])
            for odd in ODD_TOKENS + ODD_DIGITS[:6]:
                yield " ".join(tokens[:i] + [odd] + tokens[i + 1:])  # replaced
                yield " ".join(tokens[:i] + [odd] + tokens[i:])  # inserted before


def test_one_odd_field_in_a_kernel_line_is_read_as_the_full_parser_reads_it():
    for line in one_field_variants():
        for text in (line, line + "\n", BASE_LINES[0] + "\n" + line + "\n"):
            assert outcome(parse_numa_maps, text) == outcome(parse_numa_maps_slowly, text), text
        previous_text = "\n".join(BASE_LINES) + "\n"
        new_text = previous_text.replace(BASE_LINES[2], line)
        assert outcome(reparse_numa_maps, new_text, previous_text, parse_numa_maps(previous_text)) == \
            outcome(parse_numa_maps_slowly, new_text), line


# --------------------------------------------------------------------------
# Large files are compared a chunk at a time: the same totals, whatever the cut

@given(edits(), st.sampled_from([1, 30, 80, 200]))
@settings(max_examples=150)
def test_chunked_reparse_agrees_with_the_full_parser(texts_, chunk_chars):
    old_text, new_text = texts_
    previous = parse_numa_maps(old_text)
    with patch.object(nm_mod, "_DIFF_CHUNK_CHARS", chunk_chars):
        assert outcome(reparse_numa_maps, new_text, old_text, previous) == outcome(parse_numa_maps_slowly, new_text)


@given(one_class_edits(), st.sampled_from([1, 50, 120]))
@settings(max_examples=200)
def test_chunk_pairs_cover_both_texts_in_whole_lines(texts_, chunk_chars):
    old_text, new_text = texts_
    with patch.object(nm_mod, "_DIFF_CHUNK_CHARS", chunk_chars):
        pairs = list(nm_mod._chunk_pairs(new_text, old_text))
    assert "".join(n for n, _ in pairs) == new_text and "".join(o for _, o in pairs) == old_text
    for n, o in pairs[:-1]:
        assert n.endswith("\n") and (o == "" or o.endswith("\n"))


def test_a_large_file_is_compared_in_chunks_that_line_up():
    lines_ = KERNEL_TEXT.split("\n")
    lines_.insert(1000, "7e0000000000 default anon=1 dirty=1 N0=1 kernelpagesize_kB=4")  # a VMA mapped
    del lines_[3000]  # and one unmapped
    lines_[4000] = lines_[4000].replace(" N1=1 ", " N1=7 ")
    new_text = "\n".join(lines_)
    with patch.object(nm_mod, "_DIFF_CHUNK_CHARS", 20_000):
        pairs = list(nm_mod._chunk_pairs(new_text, KERNEL_TEXT))
        assert len(pairs) > 10
        # Lined up: only the chunks holding the three edits differ.
        assert sum(n != o for n, o in pairs) == 3
        assert reparse_numa_maps(new_text, KERNEL_TEXT, parse_numa_maps(KERNEL_TEXT)).totals == \
            parse_numa_maps_slowly(new_text).totals
