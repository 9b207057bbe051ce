"""Where a process's memory lives: /proc/<pid>/numa_maps.

Format (proc(5) "numa_maps"; fs/proc/task_mmu.c `show_numa_map`): one line
per VMA, fields separated by single spaces:

    <start> <policy> [file=<path> | heap | stack] [huge] [anon=N] [dirty=N]
        [mapped=N] [mapmax=N] [swapcache=N] [active=N] [writeback=N]
        [N<node>=N ...] [kernelpagesize_kB=N]

    5584da8e1000 default file=/usr/bin/head mapped=2 N0=2 kernelpagesize_kB=4
    5584fb98b000 default heap anon=4 dirty=4 active=0 N0=4 kernelpagesize_kB=4
    7f0000000000 bind=static:1 huge anon=3 dirty=3 N1=3 kernelpagesize_kB=2048

- `<start>` is the VMA start address in hex ("%08lx"). numa_maps has no end
  address; /proc/<pid>/maps (`proc_maps`) has it.
- `<policy>` comes from mm/mempolicy.c `mpol_to_str`: a mode word, then
  optional flags after "=", then the node list after ":" in the kernel's list
  syntax. Modes: `default`, `local`, `prefer`, `bind`, `interleave`,
  `weighted interleave` (v6.9), `prefer (many)` (v5.15) -- the last two
  contain a space, so the policy can span two space-separated tokens. Flags:
  `static` or `relative`, and `balancing` (MPOL_F_NUMA_BALANCING, v5.14),
  joined by "|" when both are set: `bind=static|balancing:0-1`. The kernel
  prints `unknown` for a mode it cannot name. The policy is formatted into a
  64-byte buffer, so a very long node list is cut at 63 characters; a
  dangling "," or "-" is dropped, and the last node of such a list may be
  wrong (only pathological non-contiguous masks are that long).
- `file=` paths are escaped by seq_path(..., "\\n\\t= "): newline, tab, "=" and
  space become octal escapes (\\012 \\011 \\075 \\040), so no token contains a
  raw space or "=" beyond its first. A path is never split. We undo those
  four escapes; a file name that literally contains "\\040" is therefore
  misread, which the kernel format cannot disambiguate.
- The counts (anon, dirty, mapped, ..., N<node>) are in pages of the VMA's
  page size, `kernelpagesize_kB` (4 for normal memory, 2048 or 1048576 for
  hugetlbfs; THP inside a 4 kB VMA is still counted in 4 kB pages). The
  kernel prints every count only when non-zero, `mapped=` only when it
  differs from both `anon=` and `dirty=`, `active=` only when not all pages
  are active, and nothing at all -- not even kernelpagesize_kB -- for a VMA
  without resident pages.
- The N<node> counts sum to the VMA's resident pages (`Vma.total_pages`).

Tokens this module does not know are ignored (kernels add some now and
then); a line whose address, policy or known counts do not parse makes the
whole file malformed. Empty text (a kernel thread, or a process whose mm is
gone) is an empty `NumaMaps`.

Reading numa_maps makes the kernel walk the target's page tables under its
mmap lock: callers should read it only for processes worth it.

What a parse keeps: the daemon reads numa_maps of every large process in
every pass, tens of thousands of lines, and needs per-file sums (pages per
node, movable bytes, policies), not per-line objects. `parse_numa_maps`
checks every line, sums them into `NumaMapsTotals`, and keeps the text;
`NumaMaps.vmas` parses the lines again when iterated (`VmaLines`). Totals
are sums of per-line terms, so `reparse_numa_maps` brings last pass's
totals up to date by parsing only the lines that changed. Zero page counts
(never printed by the kernel) do not appear in the totals.

How the totals are read fast: a line in the kernel's field order is read by
one regular expression (`_FAST_LINE`, run over many lines at once, in C)
instead of token by token; a line in any other shape goes to the full
parser (`_parse_fields`), which alone decides what is malformed, so the two
give the same totals and the same errors (`parse_numa_maps_slowly` is the
reference the tests hold the fast path to). A re-parse takes out the lines
that went without parsing them when the file is of one policy mode and one
page class (`_subtract_known_lines`), and reads the lines that came with one
findall for the whole batch when they are of that class too (`_add_class_lines`).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress
from operator import itemgetter, ne

from autonumad.errors import MalformedProcFile, ParseError
from autonumad.model import DEFAULT_PAGE_BYTES
from autonumad.readers.lists import parse_list

# Policies that do not constrain which node memory comes from beyond "near
# the CPU that touches it". `local` (MPOL_LOCAL, numactl --localalloc) is an
# explicit choice, but it is the same placement rule as the default policy,
# and moving memory to where the task runs is exactly what it asks for, so it
# does not count as explicit: the balancer may act on such a process. Every
# other mode (bind, prefer, interleave, ...) expresses a node set the user
# chose, and the balancer must not fight it.
_NON_EXPLICIT_POLICIES = frozenset({"default", "local"})

# Second words of the two-word modes, keyed by the first word.
_TWO_WORD_MODES = {"weighted": "interleave", "prefer": "(many)"}

# Tokens that can never be a policy: seeing one in the policy position means
# the policy is missing.
_NOT_A_MODE = frozenset({"heap", "stack", "huge"})

# mpol_to_str() writes into a 64-byte buffer (fs/proc/task_mmu.c): a policy
# string this long may have been truncated.
_POLICY_BUFFER_CHARS = 63


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of numa_maps. Page counts are in units of `page_size_bytes`."""

    start: int
    policy: str  # mode word: "default", "local", "prefer", "bind", "interleave", ...
    policy_nodes: tuple[int, ...]
    path: str | None  # file path (unescaped), "[heap]", "[stack]", or None for anonymous
    anon_pages: int
    dirty_pages: int
    mapped_pages: int  # the raw `mapped=` count: 0 when the kernel omitted it (see module doc)
    huge: bool  # a hugetlbfs mapping
    page_size_bytes: int  # kernelpagesize_kB * 1024; the base page when the kernel printed none
    pages_by_node: tuple[tuple[int, int], ...]  # sorted (node, pages)
    is_file: bool
    policy_flags: str = ""  # "static", "relative", "balancing", "static|balancing", or ""
    mapmax: int = 0  # most processes mapping one page of this VMA (printed when > 1)
    swapcache_pages: int = 0
    active_pages: int | None = None  # None: not printed (all pages active, or hugetlb)
    writeback_pages: int = 0

    @property
    def total_pages(self) -> int:
        """Resident pages of this VMA in its own page size (the kernel's md->pages)."""
        return sum(pages for _, pages in self.pages_by_node)

    def base_pages_by_node(self, base_page_size: int = DEFAULT_PAGE_BYTES) -> dict[int, int]:
        """Pages per node in units of `base_page_size` bytes: a 2 MiB page counts 512."""
        scale = self.page_size_bytes
        return {node: pages * scale // base_page_size for node, pages in self.pages_by_node}


@dataclass(frozen=True, slots=True)
class NumaMapsTotals:
    """Sums over a numa_maps file: what the balancer needs without the VMA rows.

    Every field is a sum of one contribution per line, so the totals of a
    file that changed since the last pass follow from the old totals and
    the changed lines alone (`reparse_numa_maps`). Zero sums are left out,
    so equal files always give equal totals however they were computed.
    """

    vma_count: int
    # sorted (node, page_size_bytes, unmovable, pages): resident pages in the
    # VMAs' own page size, split by whether the balancer leaves them where
    # they are (see `unmovable_vma`).
    pages: tuple[tuple[int, int, bool, int], ...]
    policy_vmas: tuple[tuple[str, int], ...]  # sorted (policy mode, number of VMAs)


def unmovable_vma(huge: bool, is_file: bool, mapmax: int) -> bool:
    """Pages the balancer does not migrate.

    hugetlbfs pages belong to their pool; file pages that other processes map
    too (mapmax > 1: shared libraries) fail with EACCES without
    MPOL_MF_MOVE_ALL (move_pages(2)) and are not one process's to move.
    """
    return huge or (is_file and mapmax > 1)


def _unmovable(fields: tuple) -> bool:
    return unmovable_vma(fields[_F_HUGE], fields[_F_IS_FILE], fields[_F_MAPMAX])


class _TotalsBuilder:
    """Adds (or, for lines that went away, subtracts) VMAs into totals."""

    __slots__ = ("vma_count", "pages", "policy_vmas")

    def __init__(self, start: NumaMapsTotals | None = None):
        self.vma_count = start.vma_count if start else 0
        self.pages = {(n, size, huge): c for n, size, huge, c in start.pages} if start else {}
        self.policy_vmas = dict(start.policy_vmas) if start else {}

    def add(self, policy: str, page_size_bytes: int, unmovable: bool, pages_by_node: tuple[tuple[int, int], ...],
            times: int = 1) -> None:
        """Count one VMA `times` times (negative: take it out again)."""
        self.vma_count += times
        pages = self.pages
        for node, count in pages_by_node:
            key = (node, page_size_bytes, unmovable)
            pages[key] = pages.get(key, 0) + count * times
        self.policy_vmas[policy] = self.policy_vmas.get(policy, 0) + times

    def add_fields(self, fields: tuple, times: int = 1) -> None:
        """`add` for a line parsed by _parse_fields."""
        self.add(fields[_F_POLICY], fields[_F_PAGE_SIZE], _unmovable(fields), fields[_F_PAGES_BY_NODE], times)

    def totals(self) -> NumaMapsTotals:
        return NumaMapsTotals(
            self.vma_count,
            tuple(sorted((n, size, huge, c) for (n, size, huge), c in self.pages.items() if c)),
            tuple(sorted((mode, c) for mode, c in self.policy_vmas.items() if c)))


class VmaLines(Sequence[Vma]):
    """The VMAs of a numa_maps file, parsed from its text when read.

    `parse_numa_maps` checks every line and keeps the text instead of one
    `Vma` object per line: a daemon watching 150,000 VMAs holds about 75
    bytes of text per VMA instead of about 400 bytes of objects. A text of
    `_PACK_CHARS` or more (a process of some 15,000 VMAs and up) is held
    zlib-compressed, about a tenth of that, and unpacked when read: a host
    with a few processes of 100,000 VMAs would otherwise hold 7 MiB of text
    for each. Iterating parses the lines again (a few microseconds each);
    the daemon's hot path uses the totals and never does. Indexing parses
    the whole file each time: iterate once, or take `tuple(vmas)` for
    random access. Immutable, like the text.
    """

    __slots__ = ("_text", "_packed", "_count")

    def __init__(self, text: str, count: int):
        # Already checked by parse_numa_maps: every line parses.
        if len(text) >= _PACK_CHARS:
            # Level 1: ~450 MB/s on numa_maps text, and still ~20x smaller.
            # surrogatepass: the Host decodes names with surrogateescape.
            self._text, self._packed = None, zlib.compress(text.encode("utf-8", "surrogatepass"), 1)
        else:
            self._text, self._packed = text, None
        self._count = count

    @property
    def text(self) -> str:
        """The numa_maps text the VMAs were parsed from (unpacked again if held packed)."""
        if self._packed is None:
            return self._text
        return zlib.decompress(self._packed).decode("utf-8", "surrogatepass")

    def held_bytes(self) -> int:
        """Bytes of text (or of packed text) this holds."""
        return len(self._text) if self._packed is None else len(self._packed)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Vma]:
        # Line by line rather than split(): no list of 100,000 strings for a
        # large process while the executor walks its VMAs.
        text = self.text
        start, n = 0, len(text)
        while start < n:
            end = text.find("\n", start)
            if end < 0:
                end = n
            if end > start:
                yield _parse_vma(text[start:end])
            start = end + 1

    def __getitem__(self, index):
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VmaLines) and other.text == self.text:
            return True
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == self._count and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"VmaLines({tuple(self)!r})"


@dataclass(frozen=True, slots=True)
class NumaMaps:
    """A parsed numa_maps file: its VMAs and their totals.

    `vmas` is a tuple when built by hand, a `VmaLines` view of the text
    when parsed; `totals` is computed from `vmas` when not given.
    """

    vmas: Sequence[Vma]
    totals: NumaMapsTotals = None  # type: ignore[assignment]  # filled in by __post_init__

    def __post_init__(self) -> None:
        if self.totals is None:
            acc = _TotalsBuilder()
            for vma in self.vmas:
                acc.add(vma.policy, vma.page_size_bytes, unmovable_vma(vma.huge, vma.is_file, vma.mapmax),
                        vma.pages_by_node)
            object.__setattr__(self, "totals", acc.totals())

    def pages_by_node(self, base_page_size: int = DEFAULT_PAGE_BYTES) -> dict[int, int]:
        """Resident memory per node over all VMAs, in `base_page_size`-byte pages."""
        total: dict[int, int] = {}
        if any(size % base_page_size for _, size, _, _ in self.totals.pages):
            # VMA pages smaller than the unit: round down per VMA, as a VMA
            # cannot hold part of a unit-sized page. Never the case for the
            # default 4 KiB unit.
            for vma in self.vmas:
                scale = vma.page_size_bytes
                for node, pages in vma.pages_by_node:
                    total[node] = total.get(node, 0) + pages * scale // base_page_size
        else:
            for node, size, _, pages in self.totals.pages:
                total[node] = total.get(node, 0) + pages * (size // base_page_size)
        return dict(sorted(total.items()))

    def movable_bytes_off_node(self, node: int) -> int:
        """Bytes on nodes other than `node` in VMAs that are not hugetlbfs.

        What moving this process's memory to `node` would copy: hugetlbfs
        pages belong to their pool and are not moved (see policy.py).
        """
        return sum(size * pages for n, size, unmovable, pages in self.totals.pages if n != node and not unmovable)

    def policies(self) -> set[str]:
        """The distinct policy modes of this process's VMAs."""
        return {mode for mode, _ in self.totals.policy_vmas}

    def has_explicit_policy(self) -> bool:
        """True if any VMA has a policy other than `default` or `local`.

        `local` does not count: it places memory on the node of the CPU that
        touches it, which is what the balancer arranges anyway (see
        _NON_EXPLICIT_POLICIES).
        """
        return any(mode not in _NON_EXPLICIT_POLICIES for mode, _ in self.totals.policy_vmas)

    def first_explicit_policy(self) -> str | None:
        """The policy mode of the first VMA (by address) with an explicit policy, or None."""
        explicit = [mode for mode, _ in self.totals.policy_vmas if mode not in _NON_EXPLICIT_POLICIES]
        if len(explicit) < 2:
            return explicit[0] if explicit else None
        # Several explicit modes (rare: such a process is left alone anyway):
        # which comes first needs the rows.
        return next(v.policy for v in self.vmas if v.policy not in _NON_EXPLICIT_POLICIES)


@lru_cache(maxsize=512)
def _parse_policy(text: str) -> tuple[str, str, tuple[int, ...]]:
    """Split an mpol_to_str() string into (mode, flags, nodes).

    Cached: a process has a handful of distinct policy strings over hundreds
    of VMAs, and the cache is keyed by the exact text, so it stays pure.
    """
    head, colon, nodes_text = text.partition(":")
    mode, eq, flags = head.partition("=")
    if not mode or mode in _NOT_A_MODE or not all(c.islower() or c in " ()" for c in mode):
        raise ParseError(f"bad policy {text[:40]!r}")
    if eq and (not flags or not all(c.islower() or c == "|" for c in flags)):
        raise ParseError(f"bad policy flags {text[:40]!r}")
    if colon:
        if len(text) >= _POLICY_BUFFER_CHARS:
            nodes_text = nodes_text.rstrip(",-")
        if not nodes_text:
            raise ParseError(f"empty node list in policy {text[:40]!r}")
        nodes = parse_list(nodes_text)
    else:
        nodes = ()
    return mode, flags, nodes


def _unescape_path(path: str) -> str:
    # Only the four characters seq_path() was asked to escape (see module doc).
    return (path.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\075", "="))


# Tokens counted in pages, and where _parse_fields keeps them.
_COUNT_SLOTS = {"anon": 0, "dirty": 1, "mapped": 2, "mapmax": 3, "swapcache": 4, "writeback": 5, "active": 6}

# Positions in the tuple _parse_fields returns (Vma's field order) that the
# totals read.
_F_POLICY, _F_HUGE, _F_PAGE_SIZE, _F_PAGES_BY_NODE, _F_IS_FILE, _F_MAPMAX = 1, 7, 8, 9, 10, 12


def _parse_vma(line: str) -> Vma:
    return Vma(*_parse_fields(line))


def _parse_head(tokens: list[str], line: str) -> tuple[int, tuple, int]:
    """The start address and the policy of a split numa_maps line, and the index of the next token.

    The policy is one token ("default", "bind:0-1") or, for the modes
    _TWO_WORD_MODES lists, two ("weighted interleave=0-1").
    """
    if len(tokens) < 2:
        raise ParseError(f"expected '<start> <policy> ...', got {line[:60]!r}")
    try:
        start = int(tokens[0], 16)
    except ValueError:
        raise ParseError(f"bad start address {tokens[0][:30]!r}") from None
    if start < 0:
        raise ParseError(f"bad start address {tokens[0][:30]!r}")
    policy_text = tokens[1]
    rest = 2
    second = _TWO_WORD_MODES.get(policy_text)
    if second is not None and len(tokens) > 2 and tokens[2].startswith(second):
        policy_text = f"{policy_text} {tokens[2]}"
        rest = 3
    return start, _parse_policy(policy_text), rest


def _parse_fields(line: str) -> tuple:
    """One numa_maps line as the tuple of Vma's fields, in order.

    A tuple rather than a Vma: building a frozen dataclass costs a quarter
    of the parse, and the totals need only four of the sixteen fields.
    """
    # Split on " " only: the kernel separates fields with single spaces, and
    # str.split() would also break file names containing other Unicode
    # whitespace (form feed, U+00A0, U+2028, ...), which seq_path leaves raw.
    tokens = line.split(" ")
    start, (policy, policy_flags, policy_nodes), rest = _parse_head(tokens, line)

    path: str | None = None
    is_file = huge = False
    # anon, dirty, mapped, mapmax, swapcache, writeback, active (None: not printed)
    counts: list[int | None] = [0, 0, 0, 0, 0, 0, None]
    page_size_bytes = DEFAULT_PAGE_BYTES
    by_node: dict[int, int] = {}
    # Ordered by how often each token occurs: N<node> is on every populated
    # line, then the counts, then kernelpagesize_kB once per line.
    try:
        for token in tokens[rest:]:
            key, eq, value = token.partition("=")
            if not eq:
                if token == "heap":
                    path = "[heap]"
                elif token == "stack":
                    path = "[stack]"
                elif token == "huge":
                    huge = True
                # Anything else is a flag word from a newer kernel (or an empty
                # token from doubled spaces): ignored.
                continue
            # isdecimal() rejects the signs, underscores and whitespace int()
            # would accept: the kernel prints these with %lu.
            if key[:1] == "N" and key[1:].isdecimal():
                # %lu: at most 20 digits. A longer count (a fake tree's 300
                # digits) would overflow every float the views compute.
                if not value.isdecimal() or len(value) > 20:
                    raise ParseError(f"{key}: bad count {value[:30]!r}")
                node = int(key[1:])
                by_node[node] = by_node.get(node, 0) + int(value)
                continue
            slot = _COUNT_SLOTS.get(key)
            if slot is not None:
                if not value.isdecimal() or len(value) > 20:
                    raise ParseError(f"{key}: bad count {value[:30]!r}")
                counts[slot] = int(value)
            elif key == "kernelpagesize_kB":
                page_size_bytes = int(value) * 1024 if value.isdecimal() else 0
                if not page_size_bytes:
                    raise ParseError(f"{key}: bad page size {value[:30]!r}")
            elif key == "file":
                path = _unescape_path(value) if "\\" in value else value
                is_file = True
            # Unknown key=value tokens are tolerated.
    except ValueError:
        # int() refuses decimal strings of thousands of digits; %lu never
        # prints more than 20.
        raise ParseError(f"number too long in {line[:60]!r}") from None

    anon, dirty, mapped, mapmax, swapcache, writeback, active = counts
    return (start, policy, policy_nodes, path, anon, dirty, mapped, huge, page_size_bytes,
            # The kernel prints nodes in ascending order; sorting keeps
            # hand-written or rewritten (fake host) files canonical too.
            tuple(sorted(by_node.items())) if len(by_node) > 1 else tuple(by_node.items()),
            is_file, policy_flags, mapmax, swapcache, active, writeback)


# --------------------------------------------------------------------------
# The fast path for totals
#
# `_parse_fields` costs a few microseconds a line in Python, and a pass under
# churn parses tens of thousands of lines. The totals need only the policy
# mode, the page size, whether the VMA is movable and the N<node> counts, and
# the kernel prints every line in one order (show_numa_map). _FAST_LINE
# matches exactly the lines in that order whose fields the full parser
# accepts (numbers in ASCII digits, at most 20 of them: what %lu prints), in
# C; everything else -- tokens it does not know, odd spacing, two-word
# policy modes, a bad line -- goes to `_parse_fields`, which decides. So a
# line the fast path reads is a line the full parser reads, to the same
# contribution (tested with hypothesis against `parse_numa_maps_slowly`).
# The policy token is checked by the same cached `_parse_policy` as in the
# full parser.
_FAST_LINE = re.compile(
    r"^[0-9a-f]{1,16} ([^ \n]+)"  # start; policy (one token: see _fast_class)
    r"(?: (?:(file)=[^ \n]*|heap|stack))?"
    r"( huge)?"
    r"(?: anon=[0-9]{1,20})?(?: dirty=[0-9]{1,20})?(?: mapped=[0-9]{1,20})?"
    r"(?: mapmax=([0-9]{1,20}))?"
    r"(?: swapcache=[0-9]{1,20})?(?: active=[0-9]{1,20})?(?: writeback=[0-9]{1,20})?"
    r"((?: N[0-9]{1,5}=[0-9]{1,20})*)"
    r"(?: kernelpagesize_kB=([0-9]{1,20}))?$", re.M)
# A match's groups: (policy, "file" or "", " huge" or "", mapmax, N<node> tokens, page size in kB).
_ROW_CLASS = itemgetter(0, 1, 2, 3, 5)
_ROW_NODES = itemgetter(4)

# Texts at least this long are held compressed (VmaLines).
_PACK_CHARS = 1 << 20

# Characters of text one findall reads: bounds its match tuples (about 400
# bytes a line) on files of 100,000 VMAs.
_CHUNK_CHARS = 1 << 18
# Lines of a list one findall reads, for the same reason.
_CHUNK_LINES = 4096


@lru_cache(maxsize=1024)
def _fast_class(key: tuple[str, str, str, str, str]) -> tuple[str, int, bool] | None:
    """(mode, page size, unmovable) of a fast-path row's class; None if the full parser must decide.

    A handful of classes per process: cached by the exact text, so pure.
    """
    policy_text, file, huge, mapmax, page_kb = key
    # A two-word mode's second word is not a token _FAST_LINE allows after
    # the policy, so a matched line's policy is one token, as the full parser
    # reads it too.
    try:
        mode = _parse_policy(policy_text)[0]
    except ParseError:
        return None
    page_size_bytes = int(page_kb) * 1024 if page_kb else DEFAULT_PAGE_BYTES
    if not page_size_bytes:
        return None  # kernelpagesize_kB=0: the full parser's error
    return mode, page_size_bytes, unmovable_vma(bool(huge), bool(file), int(mapmax) if mapmax else 0)


def _fast_row(line: str) -> tuple | None:
    """One line's match groups, if the fast path reads it."""
    m = _FAST_LINE.match(line)
    if m is None:
        return None
    row = m.groups(default="")
    return row if _fast_class(_ROW_CLASS(row)) is not None else None


def _add_fast_rows(acc: _TotalsBuilder, rows: list[tuple], times: int) -> bool:
    """Add matched lines to `acc`; False, with nothing added, if one of them needs the full parser."""
    classes = {}
    for key in set(map(_ROW_CLASS, rows)):
        cls = _fast_class(key)
        if cls is None:
            return False
        classes[key] = cls
    if len(classes) == 1:
        groups = {key: rows for key in classes}
    else:
        groups = {}
        for row in rows:
            key = _ROW_CLASS(row)
            group = groups.get(key)
            if group is None:
                groups[key] = [row]
            else:
                group.append(row)
    pages, policy_vmas = acc.pages, acc.policy_vmas
    for key, group in groups.items():
        mode, page_size_bytes, unmovable = classes[key]
        n = len(group) * times
        acc.vma_count += n
        policy_vmas[mode] = policy_vmas.get(mode, 0) + n
        # All the class's N<node>=count tokens in one string.
        sums = _node_sums("".join(map(_ROW_NODES, group)), {n for n, _, _ in pages})
        for node, count in sums.items():
            k = (node, page_size_bytes, unmovable)
            pages[k] = pages.get(k, 0) + count * times
    return True


@lru_cache(maxsize=256)
def _node_pattern(node: int) -> re.Pattern:
    # With the leading zeros int() reads too ("N01=").
    return re.compile(rf" N0*{node}=([0-9]+)" if node else r" N0+=([0-9]+)")


def _node_sums(tokens: str, nodes) -> dict[int, int]:
    """Sum the " N<node>=<count>" tokens of `tokens`, by node.

    Where `nodes` names every node the tokens have (the nodes the file had
    pages on, the usual case), one findall per node and a sum() in C read
    them; else (or if there are " N" tokens of other nodes) one findall
    and a loop over every token.
    """
    sums: dict[int, int] = {}
    found = 0
    for node in nodes:
        counts = _node_pattern(node).findall(tokens)
        if counts:
            found += len(counts)
            sums[node] = sum(map(int, counts))
    if found == tokens.count(" N"):
        return sums
    sums = {}
    for node, count in _NODE_TOKEN.findall(tokens):
        n = int(node)
        sums[n] = sums.get(n, 0) + int(count)
    return sums


def _add_lines(acc: _TotalsBuilder, lines: list[str], times: int) -> list[str]:
    """Add `times` the non-empty `lines` the fast path reads; return the others, in order."""
    rest: list[str] = []
    for i in range(0, len(lines), _CHUNK_LINES):
        chunk = lines[i:i + _CHUNK_LINES]
        rows = _FAST_LINE.findall("\n".join(chunk))
        if len(rows) == len(chunk) and _add_fast_rows(acc, rows, times):
            continue
        rows = []
        for line in chunk:
            row = _fast_row(line)
            if row is None:
                rest.append(line)
            else:
                rows.append(row)
        _add_fast_rows(acc, rows, times)
    return rest


# In a line the full parser accepts, a space-delimited token "N<digits>=<digits>"
# is an N<node> count and nothing else can look like one: the address token
# has no "=", a policy "N..." is refused, a file path has its spaces escaped,
# and a value with anything after its digits is refused.
_NODE_TOKEN = re.compile(r" N([0-9]+)=([0-9]+)")


def _subtract_known_lines(acc: _TotalsBuilder, lines: list[str], totals: NumaMapsTotals) -> bool:
    """Take out lines of the file `totals` was summed from, without parsing them; False if it cannot.

    Those lines were checked when they were added, so only their
    contribution is needed. When all the file's VMAs are of one policy mode
    and all its pages of one (page size, movable) class -- a process whose
    changing lines are its anonymous memory, the usual case -- each line's
    contribution is one VMA of that mode plus its N<node> counts in that
    class, and one findall reads the counts of all the lines.
    """
    if len(totals.policy_vmas) != 1 or len({(size, unmovable) for _, size, unmovable, _ in totals.pages}) > 1:
        return False
    joined = "\n".join(lines)
    if not joined.isascii():
        return False  # a Unicode digit is a digit to the full parser, not to [0-9]
    sums = _node_sums(joined, {n for n, _, _, _ in totals.pages})
    pages = acc.pages
    if totals.pages:
        _, page_size_bytes, unmovable, _ = totals.pages[0]
        for node, count in sums.items():
            key = (node, page_size_bytes, unmovable)
            pages[key] = pages.get(key, 0) - count
    elif any(sums.values()):
        return False  # cannot be: the file had no pages
    mode = totals.policy_vmas[0][0]
    acc.vma_count -= len(lines)
    acc.policy_vmas[mode] = acc.policy_vmas.get(mode, 0) - len(lines)
    return True


def _single_class(totals: NumaMapsTotals) -> tuple[str, int, bool] | None:
    """(mode, page size, unmovable) of a file whose VMAs are all of one mode and whose pages are all
    of one class; None for any other file (or one without pages)."""
    if len(totals.policy_vmas) != 1 or not totals.pages:
        return None
    _, size, unmovable, _ = totals.pages[0]
    if any(s != size or u != unmovable for _, s, u, _ in totals.pages):
        return None
    return totals.policy_vmas[0][0], size, unmovable


@lru_cache(maxsize=64)
def _anon_lines(policy_text: str, page_kb: int) -> re.Pattern:
    """Lines of non-file, non-hugetlbfs memory under exactly this policy token and page size, in
    _FAST_LINE's field order, their N<node> tokens captured as one group.

    A subset of the lines _FAST_LINE reads (same fields, same digit bounds), all of one class:
    no file= and no huge means movable (`unmovable_vma`), whatever mapmax says. A line without
    kernelpagesize_kB is read in base pages, so it is of the class only when the class's page
    is the base page.
    """
    digits = "[0-9]{1,20}"
    counts = "".join(f"(?: {name}={digits})?" for name in
                     ("anon", "dirty", "mapped", "mapmax", "swapcache", "active", "writeback"))
    optional = "?" if page_kb * 1024 == DEFAULT_PAGE_BYTES else ""
    return re.compile(rf"^[0-9a-f]{{1,16}} {re.escape(policy_text)}(?: heap| stack)?{counts}"
                      rf"((?: N[0-9]{{1,5}}={digits})*)(?: kernelpagesize_kB={page_kb}){optional}$", re.M)


def _add_class_lines(acc: _TotalsBuilder, lines: list[str], totals: NumaMapsTotals) -> bool:
    """Add new lines of a single-class file that are of its class, all read by one findall;
    False, with nothing added, if the file is not single-class or a line is not of its class.

    The usual churn: a process's anonymous VMAs changing their counts. One findall with one
    group (a string per line, no tuples) checks every line and hands back only its N<node>
    tokens, which are then summed per node over a string a quarter of the lines' size.
    """
    cls = _single_class(totals)
    if cls is None or cls[2] or cls[1] % 1024 or not lines:
        return False
    first = lines[0]
    start = first.find(" ") + 1
    end = first.find(" ", start)
    policy_text = first[start:end if end > 0 else len(first)]
    if not start or not policy_text or _fast_class((policy_text, "", "", "", str(cls[1] // 1024))) != cls:
        return False
    regions = _anon_lines(policy_text, cls[1] // 1024).findall("\n".join(lines))
    if len(regions) != len(lines):
        return False
    mode, page_size_bytes, _ = cls
    sums = _node_sums("".join(regions), {n for n, _, _, _ in totals.pages})
    pages = acc.pages
    for node, count in sums.items():
        key = (node, page_size_bytes, False)
        pages[key] = pages.get(key, 0) + count
    acc.vma_count += len(lines)
    acc.policy_vmas[mode] = acc.policy_vmas.get(mode, 0) + len(lines)
    return True


def parse_numa_maps(text: str) -> NumaMaps:
    """Parse a whole numa_maps file; any malformed line raises ParseError."""
    acc = _TotalsBuilder()
    # Most files are read whole by the fast path, a chunk of lines at a time
    # (a chunk's match tuples are the transient memory). Anything else goes
    # line by line, in order, so the first bad line is the one named.
    start = 0
    end = len(text)
    while start < end:
        stop = text.find("\n", start + _CHUNK_CHARS)
        stop = end if stop < 0 else stop + 1
        chunk = text[start:stop] if start or stop < end else text
        rows = _FAST_LINE.findall(chunk)
        # _FAST_LINE matches whole non-empty lines only, at most one per line:
        # as many matches as lines means every line matched.
        if len(rows) != chunk.count("\n") + (chunk[-1] != "\n") or not _add_fast_rows(acc, rows, 1):
            return _parse_line_by_line(text)
        start = stop
    return NumaMaps(VmaLines(text, acc.vma_count), acc.totals())


def _parse_line_by_line(text: str) -> NumaMaps:
    """`parse_numa_maps` for a file the fast path cannot read whole."""
    acc = _TotalsBuilder()
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line:
            row = _fast_row(line)
            if row is not None:
                rows.append(row)
            else:
                acc.add_fields(_parse_line(lineno, line))
    _add_fast_rows(acc, rows, 1)
    return NumaMaps(VmaLines(text, acc.vma_count), acc.totals())


def parse_numa_maps_slowly(text: str) -> NumaMaps:
    """`parse_numa_maps` without the fast path: every line through `_parse_fields`.

    The reference the fast path is tested against.
    """
    acc = _TotalsBuilder()
    for lineno, line in enumerate(text.split("\n"), 1):
        if line:
            acc.add_fields(_parse_line(lineno, line))
    return NumaMaps(VmaLines(text, acc.vma_count), acc.totals())


def reparse_numa_maps(text: str, previous_text: str, previous: NumaMaps) -> NumaMaps:
    """`parse_numa_maps(text)`, given `previous == parse_numa_maps(previous_text)`.

    A pass sees the same numa_maps again with a few lines changed (counts
    of the VMAs the process touched, a new mapping). Lines that were in the
    previous text are already in its totals: only lines added and lines gone
    are read, the first added and the second subtracted. Any split of the
    two texts into "kept", "gone" and "added" gives the same sums, so the
    cheapest one that is small wins: line by line when the number of lines
    is unchanged (a plain string compare per line), else lines matched as a
    multiset (a VMA mapped or unmapped shifts the lines after it). When
    most lines of a small file changed, a plain parse is cheaper and is what
    this does.

    A large file is compared a chunk at a time (`_chunk_pairs`), so the
    lists of lines this makes stay small for a process of 100,000 VMAs, and
    a chunk equal to its old one is skipped with one string compare.
    """
    if text == previous_text:
        return previous
    acc = _TotalsBuilder(previous.totals)
    whole = len(text) <= _DIFF_CHUNK_CHARS and len(previous_text) <= _DIFF_CHUNK_CHARS
    for new_chunk, old_chunk in ((text, previous_text),) if whole else _chunk_pairs(text, previous_text):
        if new_chunk == old_chunk:
            continue
        new_lines = new_chunk.split("\n")
        old_lines = old_chunk.split("\n")
        if len(new_lines) == len(old_lines):
            # One string compare per line, in C (map/compress): most are equal.
            changed = list(compress(range(len(new_lines)), map(ne, old_lines, new_lines)))
            added = [new_lines[i] for i in changed if new_lines[i]]
            gone = [old_lines[i] for i in changed if old_lines[i]]
        else:
            unmatched = Counter(line for line in old_lines if line)
            added = []
            for line in new_lines:
                if unmatched[line]:
                    unmatched[line] -= 1
                elif line:
                    added.append(line)
            gone = list(unmatched.elements())
        if whole and len(added) + len(gone) >= len(new_lines):
            return parse_numa_maps(text)
        del new_lines, old_lines
        try:
            for line in () if _add_class_lines(acc, added, previous.totals) else _add_lines(acc, added, 1):
                acc.add_fields(_parse_fields(line))
        except ParseError:
            # Name the line as parse_numa_maps would: the first bad one in the file.
            return parse_numa_maps(text)
        if not _subtract_known_lines(acc, gone, previous.totals):
            for line in _add_lines(acc, gone, -1):
                # Parsed before, so it parses again (the parser is pure).
                acc.add_fields(_parse_fields(line), -1)
    return NumaMaps(VmaLines(text, acc.vma_count), acc.totals())


# Files longer than this are compared a chunk of about this many characters
# at a time (3,500 lines of a typical 75 characters).
_DIFF_CHUNK_CHARS = 1 << 18


def _chunk_pairs(text: str, previous_text: str) -> Iterator[tuple[str, str]]:
    """Cut both texts into pairs of chunks of whole lines, in order, covering both.

    Any such cut gives the right totals (module doc); a good one pairs
    chunks that hold the same VMAs, so the kernel's lines line up. A new
    chunk ends before a line whose address (unique in a real file) is found
    in the old text at or after the old chunk's start, and the old chunk
    ends there too. When no address near the cut is found (VMAs unmapped
    there), the rest of both texts is the last pair.
    """
    i = j = 0
    n = len(text)
    while n - i > _DIFF_CHUNK_CHARS:
        cut = text.find("\n", i + _DIFF_CHUNK_CHARS)
        old_cut = -1
        for _ in range(8):  # try a few lines: one may be a new VMA
            if cut < 0 or cut + 1 >= n:
                break
            space = text.find(" ", cut + 1, cut + 40)
            if space < 0:
                break
            old_cut = previous_text.find(text[cut:space + 1], max(j - 1, 0))
            if old_cut >= 0:
                break
            cut = text.find("\n", cut + 1)
        if old_cut < 0 or cut < 0:
            break
        yield text[i:cut + 1], previous_text[j:old_cut + 1]
        i, j = cut + 1, old_cut + 1
    yield text[i:], previous_text[j:]


def _parse_line(lineno: int, line: str) -> tuple:
    try:
        return _parse_fields(line)
    except ParseError as e:
        raise ParseError(f"line {lineno}: {e}") from None


def read_numa_maps(host, pid: int) -> NumaMaps:
    """Read /proc/<pid>/numa_maps through `host`.

    Raises ProcessGone / AccessDenied (from the host) and MalformedProcFile.
    """
    text = host.read_proc_text(pid, "numa_maps")
    try:
        return parse_numa_maps(text)
    except ParseError as e:
        raise MalformedProcFile(pid, f"/proc/{pid}/numa_maps", str(e)) from None
