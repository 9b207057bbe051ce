"""The kernel's list syntax for CPUs and nodes.

Format (Documentation/admin-guide/cgroup-v2.rst "cpuset.cpus", and every
sysfs `cpulist`/`nodelist`/`online` file, `Cpus_allowed_list` in
/proc/<pid>/status): comma-separated items, each a number or an inclusive
range `a-b`; the empty string (a CPU-less node's cpulist) is the empty set.
Newer kernels also accept `a-b:used/group` strides on input; they never
print them, so they are rejected here.

    0-3,8-11
    2
    (empty)
"""

from __future__ import annotations

from autonumad.errors import ParseError

# A bound on range sizes so a corrupt file cannot make us allocate the world.
# The kernel's NR_CPUS tops out at 8192 on x86_64 distro kernels.
MAX_ID = 1 << 16


def parse_list(text: str) -> tuple[int, ...]:
    """Parse "0-3,8" into (0, 1, 2, 3, 8), sorted and unique."""
    s = text.strip()
    if not s:
        return ()
    out: set[int] = set()
    for item in s.split(","):
        item = item.strip()
        if not item:
            raise ParseError(f"empty item in list {text.strip()!r}")
        lo_s, sep, hi_s = item.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ParseError(f"bad list item {item!r}") from None
        if lo < 0 or hi < lo or hi > MAX_ID:
            raise ParseError(f"bad range {item!r}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def format_list(ids) -> str:
    """Inverse of parse_list: (0, 1, 2, 5) -> "0-2,5"."""
    xs = sorted(set(ids))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)
