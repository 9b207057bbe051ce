"""/proc/<pid>/pagemap and /proc/<pid>/clear_refs: soft-dirty bits, the fallback hotness signal.

Format (Documentation/admin-guide/mm/pagemap.rst, fs/proc/task_mmu.c
pagemap_read): one 64-bit entry in the kernel's byte order per virtual
page, at file offset (address / PAGE_SIZE) * 8:

    bits 0-54  PFN (zero without CAP_SYS_ADMIN) or swap type/offset
    bit  55    soft-dirty: the page was written since the last clear
    bit  56    exclusively mapped
    bit  57    write-protected by userfaultfd
    bit  61    file page or shared anonymous page
    bit  62    swapped
    bit  63    present

Writing "4" to /proc/<pid>/clear_refs (Documentation/admin-guide/mm/soft-dirty.rst)
clears every soft-dirty bit of the process and write-protects its pages, so
the next write to a page faults and sets the bit again. This sees writes
only: a page that is only read never shows as accessed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from autonumad.errors import ParseError
from autonumad.host import process_error
from autonumad.model import DEFAULT_PAGE_BYTES

ENTRY_BYTES = 8
SOFT_DIRTY_BIT = 1 << 55
PRESENT_BIT = 1 << 63
CLEAR_SOFT_DIRTY = "4"


@dataclass(frozen=True, slots=True)
class PageBits:
    """Per-page flags of one address range: one byte per page, 1 or 0."""

    present: bytes
    soft_dirty: bytes  # 1: present and written since the last clear

    @property
    def pages(self) -> int:
        return len(self.present)

    def count_present(self, first: int = 0, n: int | None = None) -> int:
        return self.present.count(1, first, self.pages if n is None else first + n)

    def count_dirty(self, first: int = 0, n: int | None = None) -> int:
        return self.soft_dirty.count(1, first, self.pages if n is None else first + n)


def parse_pagemap(data: bytes) -> PageBits:
    """Entries of consecutive pages -> their present and soft-dirty flags.

    A length that is not a whole number of entries means a short read.
    (Byte strings rather than bitmaps: a 1 GiB process is 262,144 entries,
    and counting bytes runs in C.)
    """
    if len(data) % ENTRY_BYTES:
        raise ParseError(f"pagemap: {len(data)} bytes is not a whole number of 8-byte entries")
    entries = memoryview(data).cast("Q")
    present = bytes([e >> 63 for e in entries])
    dirty = bytes([(e >> 63) & (e >> 55) & 1 for e in entries])
    return PageBits(present, dirty)


def read_pagemap(host, pid: int, start: int, end: int, page_size: int = DEFAULT_PAGE_BYTES) -> PageBits:
    """Soft-dirty and present bits of [start, end) of `pid`; ProcessGone/AccessDenied on errno."""
    path = f"/proc/{pid}/pagemap"
    first, last = start // page_size, (end + page_size - 1) // page_size
    try:
        fd = os.open(host.path(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            want = (last - first) * ENTRY_BYTES
            chunks, got = [], 0
            while got < want:
                chunk = os.pread(fd, want - got, first * ENTRY_BYTES + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise process_error(pid, path, e) from None
    return parse_pagemap(b"".join(chunks))


def clear_soft_dirty(host, pid: int, start_ticks: int) -> None:
    """Start a new soft-dirty interval for `pid` (write "4" to clear_refs), if it is still the process
    started at `start_ticks` (proc(5) stat field 22).

    The write changes the process: every PTE of it becomes write-protected
    (Documentation/admin-guide/mm/soft-dirty.rst), so its next write to each
    page faults, and another soft-dirty user (CRIU) loses its bits. It is
    an action, and like every action of the daemon it is taken only on the
    process it was decided about, never on whoever reused the pid
    (act/identity.py): ProcessGone/ProcessReplaced otherwise.
    """
    from autonumad.act import identity

    path = f"/proc/{pid}/clear_refs"
    try:
        with identity.Handle.open(host, pid, start_ticks) as held:
            held.check()  # the pidfd poll right before the write (identity.py, step 3)
            host.write_text(path, CLEAR_SOFT_DIRTY)
    except OSError as e:
        raise process_error(pid, path, e) from None
