"""A process's memory size in one short line: /proc/<pid>/statm.

Format (proc(5) "statm"; fs/proc/array.c `proc_pid_statm`, numbers from
fs/proc/task_mmu.c `task_statm`): seven decimal numbers separated by single
spaces, all in pages of the kernel's base page size (sysconf(_SC_PAGESIZE),
not a VMA's huge page size):

    size resident shared text lib data dt

    2661 437 370 5 0 88 0

- `size`: total mapped virtual memory (mm->total_vm, VmSize in status);
- `resident`: resident pages, MM_FILEPAGES + MM_SHMEMPAGES + MM_ANONPAGES --
  the same counters as VmRSS in /proc/<pid>/status;
- `shared`: resident file-backed and shmem pages (RssFile + RssShmem);
- `text`: pages of the code segment; `data`: data + stack VMAs;
- `lib` and `dt`: always 0 since Linux 2.6.

A kernel thread, or a zombie whose mm is gone, prints seven zeros.

Why this file: the daemon needs only a process's resident size to decide
whether it is worth a closer look (`balance.min_rss_bytes`), and the kernel
builds this line from a handful of counters, where `status` formats some
fifty fields (credentials, signal masks, capabilities, cpusets).

Numbers after the seventh are ignored (tolerating a future kernel); fewer
than seven, or one that is not an unsigned decimal, make the file malformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from autonumad.readers import read_proc_file
from autonumad.errors import ParseError

# Seven unsigned decimals separated by single spaces, then a space (more
# fields), the newline or the end. ASCII digits only, no signs, no "_": what
# %lu prints, where int() alone would accept more. At most 20 digits, as
# many as 2**64 - 1 has (and int() refuses thousands with a ValueError).
_COUNT = r"(\d{1,20})"
_STATM = re.compile(" ".join([_COUNT] * 7) + r"(?=[ \n]|\Z)", re.ASCII)
# The kernel prints these with %lu: anything wider is not from the kernel.
_MAX_UNSIGNED_LONG = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Statm:
    """/proc/<pid>/statm; every count is in base pages (`Host.page_size_bytes`)."""

    size_pages: int
    resident_pages: int
    shared_pages: int
    text_pages: int
    lib_pages: int
    data_pages: int
    dirty_pages: int

    def resident_bytes(self, page_size_bytes: int) -> int:
        return self.resident_pages * page_size_bytes


# Cached by text: the daemon reads every process's statm in every pass, and
# an idle process -- most of them, on most hosts -- prints the same line
# each time. Sized for a host's worth of processes; a line is ~30 bytes and
# a Statm ~100. Pure, so a hit is the same immutable value a parse gives.
@lru_cache(maxsize=8192)
def parse_statm(text: str) -> Statm:
    m = _STATM.match(text)
    if m is None:
        raise ParseError(f"expected seven page counts, got {text[:60]!r}")
    values = list(map(int, m.groups()))
    if max(values) > _MAX_UNSIGNED_LONG:
        raise ParseError(f"a count is wider than an unsigned long: {text[:60]!r}")
    return Statm(*values)


def read_statm(host, pid: int) -> Statm:
    """Read /proc/<pid>/statm; raises ProcessGone / AccessDenied / MalformedProcFile."""
    return read_proc_file(host, pid, "statm", parse_statm)
