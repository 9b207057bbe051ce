"""A process's address ranges: /proc/<pid>/maps.

Format (proc(5) "maps"; fs/proc/task_mmu.c `show_vma_header_prefix` and
`show_map_vma`): one line per VMA,

    <start>-<end> <perms> <offset> <major>:<minor> <inode> [padding <path>]

    5638187ce000-5638187d0000 r--p 00000000 fe:00 260131                     /usr/bin/cat
    5565af738000-5565af77a000 rw-p 00000000 00:00 0                          [heap]
    7ffb35207000-7ffb3520a000 rw-p 00000000 00:00 0 

Addresses and offset are hex, the inode decimal; `perms` is four characters
(`r`/`w`/`x`, then `s` shared or `p` private). The kernel always writes a
space after the inode, then pads with spaces to a fixed column when a path
follows; anonymous mappings have no path (a trailing space, nothing else).
The path is the rest of the line: it may contain spaces (a deleted file
ends in " (deleted)") and only newlines are escaped, as "\\012", which we
undo. Pseudo-paths: `[heap]`, `[stack]`, `[vdso]`, `[anon:<name>]`, ...

numa_maps gives each VMA's start but not its end; the page mover needs
both, and joins the two files on the start address.
"""

from __future__ import annotations

from dataclasses import dataclass

from autonumad.readers import read_proc_file
from autonumad.errors import ParseError


@dataclass(frozen=True, slots=True)
class MapRange:
    start: int
    end: int  # exclusive
    perms: str  # e.g. "rw-p"
    offset: int  # byte offset into the mapped file
    dev: str  # "major:minor" in hex, as printed ("fe:00")
    inode: int
    path: str | None  # None for an anonymous mapping

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


def _parse_range(line: str) -> MapRange:
    # Split on " " only, at most five times: the sixth piece is the padded
    # path, which may itself contain spaces.
    fields = line.split(" ", 5)
    if len(fields) < 5:
        raise ParseError(f"expected '<start>-<end> <perms> <offset> <dev> <inode>', got {line[:60]!r}")
    span, perms, offset_s, dev, inode_s = fields[:5]
    lo, dash, hi = span.partition("-")
    try:
        if not dash:
            raise ValueError
        start, end = int(lo, 16), int(hi, 16)
        offset = int(offset_s, 16)
    except ValueError:
        raise ParseError(f"bad address range or offset in {line[:60]!r}") from None
    if not 0 <= start <= end or offset < 0:
        raise ParseError(f"bad address range in {line[:60]!r}")
    if len(perms) != 4:
        raise ParseError(f"bad permissions {perms[:10]!r}")
    if not inode_s.isdecimal():
        raise ParseError(f"bad inode {inode_s[:30]!r}")
    if dev.count(":") != 1:
        raise ParseError(f"bad device {dev[:30]!r}")
    path = fields[5].lstrip(" ") if len(fields) == 6 else ""
    if "\\012" in path:
        path = path.replace("\\012", "\n")
    return MapRange(start, end, perms, offset, dev, int(inode_s), path or None)


def parse_maps(text: str) -> tuple[MapRange, ...]:
    """Parse a whole maps file; any malformed line raises ParseError."""
    ranges = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        try:
            ranges.append(_parse_range(line))
        except ParseError as e:
            raise ParseError(f"line {lineno}: {e}") from None
    return tuple(ranges)


def read_maps(host, pid: int) -> tuple[MapRange, ...]:
    """Read /proc/<pid>/maps; raises ProcessGone / AccessDenied / MalformedProcFile."""
    return read_proc_file(host, pid, "maps", parse_maps)
