"""The kernel's NUMA knobs, wherever this kernel keeps them.

Each knob is one small file holding one value (sysctls under /proc/sys are
printed by proc_dointvec & co. as "<int>\\n"; sysfs booleans such as
demotion_enabled print "true\\n"/"false\\n", mm/memory-tiers.c
demotion_enabled_show(), and accept anything kstrtobool() takes):

  numa_balancing           /proc/sys/kernel/numa_balancing: bitmask, 0 off,
                           1 NUMA_BALANCING_NORMAL, 2 NUMA_BALANCING_MEMORY_TIERING
                           (v5.18), 3 both (include/linux/sched/sysctl.h)
  numa_balancing_promote_rate_limit_MBps
                           /proc/sys/kernel/..., per target node (kernel.rst)
  scan_delay_ms, scan_period_min_ms, scan_period_max_ms, scan_size_mb
                           /proc/sys/kernel/numa_balancing_<name> before v5.13,
                           /sys/kernel/debug/sched/numa_balancing/<name> since
                           (kernel/sched/debug.c); debugfs may be unmounted or
                           closed by lockdown, so they may be absent or refused
  hot_threshold_ms         debugfs only (v5.18+)
  demotion_enabled         /sys/kernel/mm/numa/demotion_enabled (v5.15+,
                           ABI sysfs-kernel-mm-numa)
  watermark_scale_factor, watermark_boost_factor, min_free_kbytes,
  zone_reclaim_mode        /proc/sys/vm/<name> (Documentation/admin-guide/sysctl/vm.rst)

The registry maps a stable name (used by the config file, the JSON output
and the metrics) to the candidate paths, first existing wins. This is the
order tuned uses (plugin_scheduler.py: /proc/sys first, then debugfs). The
proposed pghot series renames the rate limit vm.pghot_promote_rate_limit_MBps;
add it here once it is merged and its semantics are known.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterator, Literal

from autonumad.errors import ParseError
from autonumad.host import Host

KnobKind = Literal["int", "bool"]


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """A knob: its stable name, candidate host paths (first existing wins), value kind."""

    name: str
    paths: tuple[str, ...]
    kind: KnobKind


def _debug_sched(name: str) -> tuple[str, ...]:
    return (f"/proc/sys/kernel/numa_balancing_{name}",
            f"/sys/kernel/debug/sched/numa_balancing/{name}")


_SPECS = (
    KnobSpec("numa_balancing", ("/proc/sys/kernel/numa_balancing",), "int"),
    KnobSpec("numa_balancing_promote_rate_limit_MBps",
             ("/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps",), "int"),
    KnobSpec("scan_delay_ms", _debug_sched("scan_delay_ms"), "int"),
    KnobSpec("scan_period_min_ms", _debug_sched("scan_period_min_ms"), "int"),
    KnobSpec("scan_period_max_ms", _debug_sched("scan_period_max_ms"), "int"),
    KnobSpec("scan_size_mb", _debug_sched("scan_size_mb"), "int"),
    KnobSpec("hot_threshold_ms", ("/sys/kernel/debug/sched/numa_balancing/hot_threshold_ms",), "int"),
    KnobSpec("demotion_enabled", ("/sys/kernel/mm/numa/demotion_enabled",), "bool"),
    KnobSpec("watermark_scale_factor", ("/proc/sys/vm/watermark_scale_factor",), "int"),
    KnobSpec("watermark_boost_factor", ("/proc/sys/vm/watermark_boost_factor",), "int"),
    KnobSpec("min_free_kbytes", ("/proc/sys/vm/min_free_kbytes",), "int"),
    KnobSpec("zone_reclaim_mode", ("/proc/sys/vm/zone_reclaim_mode",), "int"),
)

KNOBS: Mapping[str, KnobSpec] = MappingProxyType({s.name: s for s in _SPECS})

# kstrtobool() (lib/kstrtox.c) accepts y/n, t/f, 1/0 and on/off by their
# first characters; we accept the whole words, case-insensitively.
_TRUE = frozenset({"1", "y", "yes", "t", "true", "on"})
_FALSE = frozenset({"0", "n", "no", "f", "false", "off"})


def parse_knob(spec: KnobSpec, text: str) -> int | bool:
    """The value in a knob file's text: an int, or a bool for kind "bool"."""
    s = text.strip()
    if not s:
        raise ParseError(f"{spec.name}: empty")
    if spec.kind == "bool":
        low = s.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ParseError(f"{spec.name}: not a boolean: {s[:40]!r}")
    try:
        return int(s, 10)
    except ValueError:
        raise ParseError(f"{spec.name}: not an integer: {s[:40]!r}") from None


def format_knob(spec: KnobSpec, value: int | bool) -> str:
    """The text to write to a knob file (newline-terminated, as `echo` would)."""
    if spec.kind == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return "true\n" if value else "false\n"
        raise ValueError(f"{spec.name}: expected a boolean, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{spec.name}: expected an integer, got {value!r}")
    return f"{value}\n"


def same_value(spec: KnobSpec, a: int | bool | None, b: int | bool | None) -> bool:
    """Compare knob values the way the kernel would see them (bool knobs: truthiness)."""
    if a is None or b is None:
        return a is b
    if spec.kind == "bool":
        return bool(a) == bool(b)
    return int(a) == int(b)


@dataclass(frozen=True, slots=True)
class KnobValue:
    """A knob as read now.

    Absent (no candidate path exists on this kernel): path, value, raw and
    error are None. Present but unreadable (debugfs under lockdown gives
    EPERM) or malformed: path is set, value None, error says why.
    """

    name: str
    path: str | None
    value: int | bool | None
    raw: str | None
    error: str | None

    @property
    def present(self) -> bool:
        return self.path is not None


@dataclass(frozen=True, slots=True)
class Knobs(Mapping[str, KnobValue]):
    """Every registered knob by name, in registry order."""

    by_name: Mapping[str, KnobValue]

    def __getitem__(self, name: str) -> KnobValue:
        return self.by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def as_json(self) -> dict[str, int | bool | None]:
        """name -> value (None when absent or unreadable), for `topology --json`."""
        return {name: kv.value for name, kv in self.by_name.items()}


def oserror_reason(e: OSError) -> str:
    """'EPERM: Operation not permitted' for an OSError (short, names the errno)."""
    name = errno.errorcode.get(e.errno or 0, "")
    text = e.strerror or str(e)
    return f"{name}: {text}" if name else text


def find_knob_path(host: Host, spec: KnobSpec) -> str | None:
    """The first of the spec's paths that exists on this host, or None."""
    for path in spec.paths:
        if host.exists(path):
            return path
    return None


def read_knob(host: Host, spec: KnobSpec) -> KnobValue:
    """Read one knob; never raises for expected conditions (absent, refused, malformed)."""
    path = find_knob_path(host, spec)
    if path is None:
        return KnobValue(spec.name, None, None, None, None)
    try:
        raw = host.read_text(path)
    except FileNotFoundError:
        # Gone between exists() and open() (debugfs unmounted meanwhile).
        return KnobValue(spec.name, None, None, None, None)
    except OSError as e:
        return KnobValue(spec.name, path, None, None, oserror_reason(e))
    try:
        value = parse_knob(spec, raw)
    except ParseError as e:
        return KnobValue(spec.name, path, None, raw, str(e))
    return KnobValue(spec.name, path, value, raw, None)


def read_knobs(host: Host, specs: Mapping[str, KnobSpec] = KNOBS) -> Knobs:
    """Read every registered knob through the host."""
    return Knobs(MappingProxyType({name: read_knob(host, spec) for name, spec in specs.items()}))


__all__ = [
    "KNOBS", "KnobSpec", "KnobValue", "Knobs", "parse_knob", "format_knob", "same_value",
    "read_knob", "read_knobs", "find_knob_path", "oserror_reason",
]
