"""Memory usage summaries: /proc/meminfo and the per-node meminfo files.

Format (fs/proc/meminfo.c `meminfo_proc_show`; drivers/base/node.c
`node_read_meminfo` for /sys/devices/system/node/nodeN/meminfo): one
`Name: value [kB]` line per field, padded with spaces. The node file puts
`Node N ` in front of every name.

    MemTotal:       24684084 kB
    Active(anon):       1528 kB
    HugePages_Total:       0
    Hugepagesize:       2048 kB

    Node 0 MemTotal:        3762380 kB
    Node 0 HugePages_Free:        0

Values with a `kB` unit are returned in BYTES (x 1024). Values without a
unit are counts and stay counts: in practice the `HugePages_Total`,
`HugePages_Free`, `HugePages_Rsvd` and `HugePages_Surp` page counts (their
size is `Hugepagesize`). Keys are the names exactly as printed, without the
`Node N ` prefix and the colon (`"MemTotal"`, `"Active(anon)"`). Fields
differ between kernels and configs, so none is required here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from autonumad.readers import read_host_file
from autonumad.errors import HostError, ParseError

def parse_meminfo(text: str) -> Mapping[str, int]:
    """Parse either meminfo form into a read-only mapping of name -> bytes (or count).

    A file mixing both forms, or node prefixes for different nodes, is not
    rejected: the prefix is only stripped. Blank lines are skipped.
    """
    fields: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        if not sep:
            raise ParseError(f"line {lineno}: no ':' in {line[:60]!r}")
        if name.startswith("Node "):
            node, _, name = name[5:].partition(" ")
            if not node.isdecimal():
                raise ParseError(f"line {lineno}: bad node prefix in {line[:60]!r}")
        name = name.strip()
        if not name:
            raise ParseError(f"line {lineno}: empty name")
        parts = rest.split()
        try:
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0]) * 1024
            elif len(parts) == 1:
                fields[name] = int(parts[0])
            else:
                raise ValueError
        except ValueError:
            raise ParseError(f"line {lineno}: {name}: bad value {rest.strip()[:30]!r}") from None
    return MappingProxyType(fields)


def read_meminfo(host) -> Mapping[str, int]:
    """Read /proc/meminfo through `host`; HostError naming the file if missing or malformed."""
    fields = read_host_file(host, "/proc/meminfo", parse_meminfo)
    if "MemTotal" not in fields:
        raise HostError("/proc/meminfo", "no MemTotal line")
    return fields
