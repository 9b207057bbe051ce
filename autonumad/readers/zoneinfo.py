"""Free memory and watermarks per zone: /proc/zoneinfo.

Format (mm/vmstat.c `zoneinfo_show_print`): one block per zone of every
node, populated or not, all counts in pages:

    Node 0, zone   Normal
      per-node stats                      (first populated zone of a node only)
          nr_inactive_anon 1286
          ...
      pages free     56514
            boost    0                    (v5.0)
            min      2943
            low      3678
            high     4413
            promo    5148                 (v6.0 or so: WMARK_PROMO, optional)
            spanned  262144
            present  262144
            managed  244458
            cma      0                    (optional)
            protection: (0, 0, 0, 0, 0)
          nr_free_pages 56514
          ...
      pagesets
        cpu: 0
                  count:    0
                  high:     8676          (the per-cpu list limit, not the watermark)
      ...
      start_pfn:           1048576

We read the `Node N, zone NAME` header and, inside a block, the lines that
are exactly `pages free N` or `<watermark-or-size> N` (two fields, no colon),
which excludes the per-cpu `high:` and every `nr_*`/`numa_*` counter. The
rest is skipped. `promo` is the only userspace view of WMARK_PROMO, the
headroom kswapd keeps on a top-tier node in memory-tiering mode; `boost` and
`promo` are optional, the other watermarks and sizes are required.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

from autonumad.readers import read_host_file
from autonumad.errors import ParseError

_REQUIRED = ("free", "min", "low", "high", "spanned", "present", "managed")
_KEYS = frozenset({"min", "low", "high", "promo", "boost", "spanned", "present", "managed"})


@dataclass(frozen=True, slots=True)
class Zone:
    node: int
    name: str  # "DMA", "DMA32", "Normal", "Movable", "Device", ...
    free_pages: int
    min_pages: int
    low_pages: int
    high_pages: int
    promo_pages: int | None  # None on kernels without WMARK_PROMO
    spanned_pages: int
    present_pages: int
    managed_pages: int  # 0: an empty zone (its watermarks are meaningless)
    boost_pages: int | None = None


class NodeWatermarks(NamedTuple):
    """A node's zones summed; a tuple, so it also unpacks positionally."""

    free_pages: int
    min_pages: int
    low_pages: int
    high_pages: int
    promo_pages: int | None


def _make_zone(node: int, name: str, values: dict[str, int]) -> Zone:
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ParseError(f"Node {node}, zone {name}: no {', '.join(missing)}")
    return Zone(node, name, values["free"], values["min"], values["low"], values["high"],
                values.get("promo"), values["spanned"], values["present"], values["managed"],
                values.get("boost"))


def parse_zoneinfo(text: str) -> tuple[Zone, ...]:
    zones: list[Zone] = []
    header: tuple[int, str] | None = None
    values: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.startswith("Node "):
            if header is not None:
                zones.append(_make_zone(*header, values))
            node_s, sep, name = line[5:].partition(", zone")
            name = name.strip()
            if not sep or not node_s.isdecimal() or not name:
                raise ParseError(f"line {lineno}: bad zone header {line[:60]!r}")
            header, values = (int(node_s), name), {}
            continue
        fields = line.split()
        if len(fields) == 3 and fields[0] == "pages" and fields[1] == "free":
            key, value = "free", fields[2]
        elif len(fields) == 2 and fields[0] in _KEYS:
            key, value = fields
        else:
            continue
        if header is None:
            raise ParseError(f"line {lineno}: {key} before any 'Node N, zone NAME' line")
        if not value.isdecimal():
            raise ParseError(f"line {lineno}: {key}: bad value {value[:30]!r}")
        values[key] = int(value)
    if header is not None:
        zones.append(_make_zone(*header, values))
    return tuple(zones)


def read_zoneinfo(host) -> tuple[Zone, ...]:
    """Read /proc/zoneinfo through `host`; HostError naming the file if missing or malformed."""
    return read_host_file(host, "/proc/zoneinfo", parse_zoneinfo, empty="no zones")


def node_watermarks(zones: Iterable[Zone]) -> dict[int, NodeWatermarks]:
    """Free pages and watermarks per node, summed over the node's zones.

    Zones with no managed pages are left out: the kernel gives them nominal
    watermarks (a `Movable` zone with 0 pages can show min 32) and skips
    them in its own balance checks (mm/vmscan.c `pgdat_balanced` uses
    `managed_zone()`). A node whose every zone is empty still appears, with
    zeros. `promo_pages` is None if any counted zone lacks it.

    Summing is an approximation: the kernel checks each zone separately, so
    a node can be short in one zone while its sum looks fine.
    """
    sums: dict[int, list] = {}
    for zone in zones:
        acc = sums.setdefault(zone.node, [0, 0, 0, 0, 0])
        if zone.managed_pages == 0:
            continue
        acc[0] += zone.free_pages
        acc[1] += zone.min_pages
        acc[2] += zone.low_pages
        acc[3] += zone.high_pages
        if acc[4] is not None:
            acc[4] = None if zone.promo_pages is None else acc[4] + zone.promo_pages
    return {node: NodeWatermarks(*acc) for node, acc in sorted(sums.items())}
