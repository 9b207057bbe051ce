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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from autonumad.errors import MalformedProcFile, ParseError
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
    page_size_bytes: int  # kernelpagesize_kB * 1024; 4096 when the kernel printed none
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

    def base_pages_by_node(self, base_page_size: int = 4096) -> dict[int, int]:
        """Pages per node in units of `base_page_size` bytes: a 2 MiB page counts 512."""
        scale = self.page_size_bytes
        return {node: pages * scale // base_page_size for node, pages in self.pages_by_node}


@dataclass(frozen=True, slots=True)
class NumaMaps:
    vmas: tuple[Vma, ...]

    def pages_by_node(self, base_page_size: int = 4096) -> dict[int, int]:
        """Resident memory per node over all VMAs, in `base_page_size`-byte pages."""
        total: dict[int, int] = {}
        for vma in self.vmas:
            scale = vma.page_size_bytes
            for node, pages in vma.pages_by_node:
                total[node] = total.get(node, 0) + pages * scale // base_page_size
        return dict(sorted(total.items()))

    def policies(self) -> set[str]:
        """The distinct policy modes of this process's VMAs."""
        return {vma.policy for vma in self.vmas}

    def has_explicit_policy(self) -> bool:
        """True if any VMA has a policy other than `default` or `local`.

        `local` does not count: it places memory on the node of the CPU that
        touches it, which is what the balancer arranges anyway (see
        _NON_EXPLICIT_POLICIES).
        """
        return any(vma.policy not in _NON_EXPLICIT_POLICIES for vma in self.vmas)


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


def _count(key: str, value: str) -> int:
    # isdecimal() rejects the signs, underscores and whitespace int() would
    # accept: the kernel prints these with %lu.
    if not value.isdecimal():
        raise ParseError(f"{key}: bad count {value[:30]!r}")
    return int(value)


def _unescape_path(path: str) -> str:
    # Only the four characters seq_path() was asked to escape (see module doc).
    return (path.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\075", "="))


def _parse_vma(line: str) -> Vma:
    # Split on " " only: the kernel separates fields with single spaces, and
    # str.split() would also break file names containing other Unicode
    # whitespace (form feed, U+00A0, U+2028, ...), which seq_path leaves raw.
    tokens = line.split(" ")
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
    policy, policy_flags, policy_nodes = _parse_policy(policy_text)

    path: str | None = None
    is_file = huge = False
    anon = dirty = mapped = mapmax = swapcache = writeback = 0
    active: int | None = None
    page_size_bytes = 4096
    by_node: dict[int, int] = {}
    # Ordered by how often each token occurs: N<node> and kernelpagesize_kB
    # are on every populated line.
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
        if key[:1] == "N" and key[1:].isdecimal():
            # _count() inlined on the two tokens every line has.
            if not value.isdecimal():
                raise ParseError(f"{key}: bad count {value[:30]!r}")
            node = int(key[1:])
            by_node[node] = by_node.get(node, 0) + int(value)
        elif key == "kernelpagesize_kB":
            page_size_bytes = int(value) * 1024 if value.isdecimal() else 0
            if not page_size_bytes:
                raise ParseError(f"{key}: bad page size {value[:30]!r}")
        elif key == "file":
            path = _unescape_path(value) if "\\" in value else value
            is_file = True
        elif key == "anon":
            anon = _count(key, value)
        elif key == "dirty":
            dirty = _count(key, value)
        elif key == "mapped":
            mapped = _count(key, value)
        elif key == "mapmax":
            mapmax = _count(key, value)
        elif key == "active":
            active = _count(key, value)
        elif key == "swapcache":
            swapcache = _count(key, value)
        elif key == "writeback":
            writeback = _count(key, value)
        # Unknown key=value tokens are tolerated.

    # Positional, in field order: keyword construction of a frozen dataclass
    # costs a third of the whole line's parse time.
    return Vma(start, policy, policy_nodes, path, anon, dirty, mapped, huge,
               page_size_bytes,
               # The kernel prints nodes in ascending order; sorting keeps
               # hand-written or rewritten (fake host) files canonical too.
               tuple(sorted(by_node.items())) if len(by_node) > 1 else tuple(by_node.items()),
               is_file, policy_flags, mapmax, swapcache, active, writeback)


def parse_numa_maps(text: str) -> NumaMaps:
    """Parse a whole numa_maps file; any malformed line raises ParseError."""
    vmas = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        try:
            vmas.append(_parse_vma(line))
        except ParseError as e:
            raise ParseError(f"line {lineno}: {e}") from None
    return NumaMaps(tuple(vmas))


def read_numa_maps(host, pid: int) -> NumaMaps:
    """Read /proc/<pid>/numa_maps through `host`.

    Raises ProcessGone / AccessDenied (from the host) and MalformedProcFile.
    """
    text = host.read_proc_text(pid, "numa_maps")
    try:
        return parse_numa_maps(text)
    except ParseError as e:
        raise MalformedProcFile(pid, f"/proc/{pid}/numa_maps", str(e)) from None
