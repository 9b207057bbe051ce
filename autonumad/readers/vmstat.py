"""Kernel event and state counters: /proc/vmstat and the per-node vmstat files.

Format (mm/vmstat.c `vmstat_show`, `vmstat_text[]`; drivers/base/node.c
`node_read_vmstat` prints the per-node file the same way): one counter per
line, a name and a decimal value separated by a space.

    nr_free_pages 831840
    numa_hit 1520345
    pgpromote_success 0

The set of names depends on the kernel version and config (pgpromote_*
since v5.18, pgdemote_proactive since v6.x, numa_* only with CONFIG_NUMA),
so no name is required here: callers look up what they need and treat a
missing counter as "this kernel does not count that".

The same parser serves /sys/devices/system/node/nodeN/vmstat, which is the
only per-node source of the pgpromote_*/pgdemote_* counters.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from autonumad.readers import read_host_file
from autonumad.errors import ParseError

def parse_vmstat(text: str) -> Mapping[str, int]:
    """Parse `name value` lines into a read-only mapping of counter -> value.

    Blank lines are skipped; any other line that is not exactly two fields
    with an integer second field makes the whole text malformed. Empty text
    gives an empty mapping (the caller decides whether that is acceptable).
    """
    counters: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ParseError(f"line {lineno}: expected 'name value', got {line[:60]!r}")
        name, value = fields
        try:
            counters[name] = int(value)
        except ValueError:
            raise ParseError(f"line {lineno}: {name}: bad value {value[:30]!r}") from None
    return MappingProxyType(counters)


def read_vmstat(host) -> Mapping[str, int]:
    """Read /proc/vmstat through `host`; HostError naming the file if missing or malformed."""
    # Every kernel prints a few hundred counters; none means a broken tree.
    return read_host_file(host, "/proc/vmstat", parse_vmstat, empty="no counters")
