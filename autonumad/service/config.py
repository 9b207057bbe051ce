"""The configuration file: TOML, validated strictly, compiled to frozen sections.

Format: TOML 1.0 (https://toml.io/en/v1.0.0), read with the standard
library's `tomllib`, default path /etc/autonumad/autonumad.toml. Five
sections, every key optional (an empty file, or no file at the default
path, gives the defaults); config/autonumad.toml ships every key with its
unit and default:

    [daemon]   the loop: interval, dry run, runtime directory, log level
    [balance]  the balancing loop (issue 4): thresholds, mover rate, selection
    [kernel]   kernel knobs applied on start and restored on stop (issue 5)
    [metrics]  the Prometheus endpoint and textfile (issue 5)
    [tiering]  promotion, demotion and headroom on tiered hosts (issue 6)

Two stages, kept apart so each is testable on its own (the oomd shape):
`parse_toml()` turns bytes into a plain dict (TOML syntax errors only), and
`compile_config()` turns that dict into a `Config` of frozen dataclasses,
rejecting unknown keys, wrong types and out-of-range values. Every problem
is reported at once, each as one line "dotted.key: reason", for example

    balance.target_local_fraction: expected a number in [0.5, 1.0], got 1.7
    balance.exclude_comm[2]: bad regular expression "(": missing ), ...

Each dataclass field carries its own check (`_key(default, check)`), so the
set of keys, their defaults and their validation live in one place and the
sample file is tested against it. `load_config()` adds the file-level rules:
the file must be a regular file owned by root (or by the user running us)
and not writable by group or others, since it steers a root daemon. It also
reads the drop-ins in `conf.d/*.toml` beside the file, in name order, each
under the same rules; their keys override the file's.

Values the kernel reads as "leave it alone" are spelled "keep" in the file
and are None in the compiled `KernelConfig`; "no list" is an empty list.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import os
import posixpath
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping

from autonumad.errors import AutonumadError, ParseError
from autonumad.service.logsetup import LOG_LEVELS
from autonumad.readers.lists import parse_list

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/autonumad/autonumad.toml"
# Drop-ins, read after the file, from this directory beside it.
DROPIN_DIR = "conf.d"

# sysexits.h EX_CONFIG: a bad config at start exits with it, and the unit's
# RestartPreventExitStatus=78 stops systemd from restarting into the same error.
EX_CONFIG = 78

# The metrics port. The Prometheus wiki's default-port-allocations page has
# handed out every number in 9100-9999, so any port in that range already
# belongs to some registered exporter that may run on the same host. 10117
# is outside it and is not the default of any exporter or common service we
# know of (Prometheus 9090, node_exporter 9100, Zabbix 10050/10051, amanda
# 10080-10083, kubelet/kube-proxy 10248-10259). Change it with [metrics] listen.
DEFAULT_METRICS_PORT = 10117

# A config file larger than this is certainly not ours; refuse rather than read it.
_MAX_CONFIG_BYTES = 1 << 20

# Kernel limits used as validation bounds.
_MAX_NODE = 1023            # MAX_NUMNODES is 1 << CONFIG_NODES_SHIFT, at most 10 bits (x86_64)
_MAX_PID = 4194304          # PID_MAX_LIMIT on 64-bit (include/linux/threads.h)
_INT_MAX = 2**31 - 1        # sysctls handled by proc_dointvec_minmax


class ConfigError(AutonumadError):
    """A config file that cannot be used, with every reason found.

    `errors` holds one line per problem ("section.key: reason"); `path` is
    the file, when there is one. str() gives one line for a log or an exit
    message: "PATH: 2 errors: a.b: ...; c.d: ...".
    """

    def __init__(self, errors: list[str], path: str | os.PathLike[str] | None = None):
        self.errors = list(errors)
        self.path = None if path is None else str(path)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        if len(self.errors) == 1:
            return where + self.errors[0]
        return f"{where}{len(self.errors)} errors: " + "; ".join(self.errors)


# -- sizes ------------------------------------------------------------------------

# Binary multiples only. "MB" is refused rather than guessed: it means 10^6 to
# some people and 2^20 to others (the kernel's memparse() and numactl read "M"
# as 2^20, disk vendors read "MB" as 10^6), and a wrong guess silently changes
# a headroom by 5 %.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tib": 1 << 40,
}
_AMBIGUOUS_UNITS = {"kb", "mb", "gb", "tb"}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_PERCENT_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")
_MAX_SIZE = 1 << 62


def parse_size(value: str | int) -> int:
    """A memory size in bytes: 4096, "4096", "512MiB", "1.5 GiB", "64K".

    Units are binary (K = KiB = 1024) and case-insensitive; a fractional
    number with a unit is rounded down to whole bytes. The one parser for
    sizes everywhere: config keys and `autonumad advise --memory SIZE`.
    Raises ParseError with the reason.
    """
    if isinstance(value, bool):
        raise ParseError(f"expected a size, got {_show(value)}")
    if isinstance(value, int):
        if not 0 <= value <= _MAX_SIZE:
            raise ParseError(f"size out of range: {value}")
        return value
    if not isinstance(value, str):
        raise ParseError(f"expected a size, got {_show(value)}")
    m = _SIZE_RE.fullmatch(value)
    if not m:
        raise ParseError(f"bad size {_show(value)}: expected a number with an optional unit B, KiB, MiB, GiB or TiB")
    number, unit = m.group(1), m.group(2).lower()
    if unit in _AMBIGUOUS_UNITS:
        raise ParseError(f"ambiguous unit in {_show(value)}: write {unit[0].upper()}iB (binary, {_SIZE_UNITS[unit[0]]} bytes)")
    if unit not in _SIZE_UNITS:
        raise ParseError(f"unknown unit {m.group(2)!r} in {_show(value)}: expected B, KiB, MiB, GiB or TiB")
    mult = _SIZE_UNITS[unit]
    amount = Decimal(number) * mult
    if mult == 1 and amount != amount.to_integral_value():
        raise ParseError(f"bad size {_show(value)}: bytes must be a whole number")
    n = int(amount)  # rounds toward zero, i.e. down for these non-negative values
    if n > _MAX_SIZE:
        raise ParseError(f"size out of range: {_show(value)}")
    return n


def format_size(n: int) -> str:
    """Inverse of parse_size for display: the largest binary unit that divides n exactly."""
    for suffix, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % mult == 0:
            return f"{n // mult}{suffix}"
    return str(n)


@dataclass(frozen=True, slots=True)
class Amount:
    """An amount of a node's memory: either absolute bytes or a fraction of its total.

    Exactly one of `bytes` and `fraction` is set. Written "512MiB", 536870912
    or "5%" in the file.
    """

    bytes: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.bytes is None) == (self.fraction is None):
            raise ValueError("Amount needs exactly one of bytes and fraction")

    def resolve_bytes(self, total_bytes: int) -> int:
        """This amount for a node of `total_bytes`."""
        if self.bytes is not None:
            return self.bytes
        assert self.fraction is not None
        return int(total_bytes * self.fraction)

    def __str__(self) -> str:
        if self.fraction is None:
            return format_size(self.bytes or 0)
        # The shortest percentage that reads back as the same fraction, so that
        # rendering and parsing again is exact ("2%", not "2.0000000000000004%").
        pct = self.fraction * 100
        for digits in range(0, 8):
            text = f"{pct:.{digits}f}"
            if _percent_to_fraction(text) == self.fraction:
                return text + "%"
        # Exact: repr() round-trips the float, and times 100 is exact in decimal.
        return format(Decimal(repr(self.fraction)) * 100, "f") + "%"


def _percent_to_fraction(text: str) -> float:
    # Decimal, so that "10%" is exactly the float nearest to 0.1.
    return float(Decimal(text) / 100)


def parse_amount(value: str | int) -> Amount:
    """"5%" -> Amount(fraction=0.05); "512MiB" or 536870912 -> Amount(bytes=...)."""
    if isinstance(value, str):
        m = _PERCENT_RE.fullmatch(value)
        if m:
            fraction = _percent_to_fraction(m.group(1))
            if fraction > 1:
                raise ParseError(f"percentage above 100: {_show(value)}")
            return Amount(fraction=fraction)
    return Amount(bytes=parse_size(value))


def _decimal_text(x: float) -> str:
    """2.0 -> "2", 0.5 -> "0.5": short, exact-looking numbers for messages and rendering."""
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text or "0"


# -- the metrics listen address --------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int] | None:
    """"ADDRESS:PORT" -> (address, port); "" -> None (endpoint off).

    IPv6 addresses go in brackets ("[::1]:10117"), as in URLs. Only IP
    literals: a host name would be resolved once at start, to an address
    nobody reviewed. Raises ParseError.
    """
    if text == "":
        return None
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", text)
        if not m:
            raise ParseError(f"bad address {_show(text)}: expected [IPV6]:PORT")
        host, port_s, want = m.group(1), m.group(2), 6
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ParseError(f"bad address {_show(text)}: expected ADDRESS:PORT, e.g. \"127.0.0.1:{DEFAULT_METRICS_PORT}\"")
        if ":" in host:
            raise ParseError(f"bad address {_show(text)}: put IPv6 addresses in brackets, e.g. \"[::1]:{DEFAULT_METRICS_PORT}\"")
        want = 4
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ParseError(f"bad address {_show(text)}: {host!r} is not an IP address") from None
    if addr.version != want:
        raise ParseError(f"bad address {_show(text)}: IPv{addr.version} address where IPv{want} was expected")
    if not re.fullmatch(r"[0-9]{1,5}", port_s) or not 1 <= int(port_s) <= 65535:
        raise ParseError(f"bad address {_show(text)}: port must be in [1, 65535]")
    return host, int(port_s)


# -- checks: one per kind of value -------------------------------------------------------


class _Invalid(Exception):
    """Raised by a check: (where, reason) pairs; `where` is "" or a suffix like "[2]"."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__(problems)
        self.problems = problems


def _bad(reason: str, where: str = "") -> _Invalid:
    return _Invalid([(where, reason)])


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML, shortened for an error message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    elif isinstance(value, (int, str, list, dict)):
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    else:  # TOML dates and times
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Check:
    """Validates and converts one TOML value; `expect` describes what is accepted."""

    expect = "a value"

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError

    def render(self, value: Any) -> Any:
        """The compiled value back as a TOML value (for config_to_dict)."""
        return value

    def fail(self, value: Any) -> _Invalid:
        return _bad(f"expected {self.expect}, got {_show(value)}")


class _Bool(_Check):
    expect = "true or false"

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(value)
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Number(_Check):
    """A finite number in [lo, hi] (or (lo, hi] with lo_open); ints are accepted as floats."""

    def __init__(self, lo: float, hi: float, *, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open
        self.expect = f"a number in {'(' if lo_open else '['}{lo}, {hi}]"

    def __call__(self, value: Any) -> float:
        if not _is_number(value) or not math.isfinite(value):
            raise self.fail(value)
        if value < self.lo or (self.lo_open and value == self.lo) or value > self.hi:
            raise self.fail(value)
        return float(value)


class _Integer(_Check):
    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.expect = f"an integer in [{lo}, {hi}]"

    def __call__(self, value: Any) -> int:
        # TOML keeps 3 and 3.0 apart; a float where a count is expected is a mistake.
        if not isinstance(value, int) or isinstance(value, bool) or not self.lo <= value <= self.hi:
            raise self.fail(value)
        return value


class _Choice(_Check):
    def __init__(self, *options: str):
        self.options = options
        self.expect = "one of " + ", ".join(f'"{o}"' for o in options)

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise self.fail(value)
        return value


class _KeepOr(_Check):
    """"keep" (leave the kernel's value alone) -> None, else the inner check."""

    def __init__(self, inner: _Check):
        self.inner = inner
        self.expect = f'"keep" or {inner.expect}'

    def __call__(self, value: Any) -> Any:
        if value == "keep":
            return None
        try:
            return self.inner(value)
        except _Invalid:
            raise self.fail(value) from None

    def render(self, value: Any) -> Any:
        return "keep" if value is None else self.inner.render(value)


# kernel.numa_balancing is a bitmask (include/linux/sched/sysctl.h):
# NUMA_BALANCING_NORMAL 0x1, NUMA_BALANCING_MEMORY_TIERING 0x2 (v5.18).
NUMA_BALANCING_MODES = {"off": 0, "normal": 1, "tiering": 2, "normal+tiering": 3}


def numa_balancing_name(mode: int) -> str:
    """0 -> "off", 3 -> "normal+tiering"; unknown bits stay numeric."""
    for name, value in NUMA_BALANCING_MODES.items():
        if value == mode:
            return name
    return str(mode)


class _NumaBalancing(_Check):
    expect = '"keep", "off", "normal", "tiering", "normal+tiering" or an integer in [0, 3]'

    def __call__(self, value: Any) -> int | None:
        if value == "keep":
            return None
        if isinstance(value, str) and value in NUMA_BALANCING_MODES:
            return NUMA_BALANCING_MODES[value]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
            return value
        raise self.fail(value)

    def render(self, value: int | None) -> str:
        return "keep" if value is None else numa_balancing_name(value)


class _AbsPath(_Check):
    """An absolute path; with `suffix`, also "" for off and the required file suffix."""

    def __init__(self, *, allow_empty: bool = False, suffix: str = ""):
        self.allow_empty, self.suffix = allow_empty, suffix
        what = f"an absolute path ending in {suffix}" if suffix else "an absolute path"
        self.expect = f'{what} or "" for none' if allow_empty else what

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(value)
        if value == "" and self.allow_empty:
            return value
        if not value.startswith("/") or "\0" in value or (self.suffix and not value.endswith(self.suffix)):
            raise self.fail(value)
        return value


class _Size(_Check):
    """Bytes, as an integer or a size string ("64MiB"), within [lo, hi]."""

    def __init__(self, lo: int = 0, hi: int = _MAX_SIZE):
        self.lo, self.hi = lo, hi
        self.expect = "a size in bytes or with a unit (\"64MiB\")"

    def __call__(self, value: Any) -> int:
        try:
            n = parse_size(value)
        except ParseError as e:
            raise _bad(str(e)) from None
        if not self.lo <= n <= self.hi:
            raise _bad(f"expected a size in [{format_size(self.lo)}, {format_size(self.hi)}], got {_show(value)}")
        return n


class _AmountCheck(_Check):
    """A size ("512MiB", bytes) or a percentage of the node ("5%") up to max_fraction."""

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction
        self.expect = f'a size ("512MiB") or a percentage of the node up to {_decimal_text(max_fraction * 100)}% ("5%")'

    def __call__(self, value: Any) -> Amount:
        try:
            amount = parse_amount(value)
        except ParseError as e:
            raise _bad(f"{e}; expected {self.expect}") from None
        if amount.fraction is not None and amount.fraction > self.max_fraction:
            raise self.fail(value)
        return amount

    def render(self, value: Amount) -> str:
        return str(value)


class _ListOf(_Check):
    """A TOML array; each item checked on its own, errors named by index ("[2]")."""

    def __init__(self, item: _Check):
        self.item = item
        self.expect = f"a list of {item.expect}"

    def __call__(self, value: Any) -> tuple:
        if not isinstance(value, list):
            raise self.fail(value)
        out, problems = [], []
        for i, v in enumerate(value):
            try:
                out.append(self.item(v))
            except _Invalid as e:
                problems.extend((f"[{i}]{where}", reason) for where, reason in e.problems)
        if problems:
            raise _Invalid(problems)
        return tuple(out)

    def render(self, value: tuple) -> list:
        return [self.item.render(v) for v in value]


class _Regex(_Check):
    """A Python regular expression (re module syntax), compiled."""

    expect = "a regular expression"

    def __call__(self, value: Any) -> re.Pattern[str]:
        if not isinstance(value, str):
            raise self.fail(value)
        if value == "":
            raise _bad("empty regular expression would match every command")
        try:
            return re.compile(value)
        except re.error as e:
            raise _bad(f"bad regular expression {_show(value)}: {e}") from None

    def render(self, value: re.Pattern[str]) -> str:
        return value.pattern


class _CgroupPrefix(_Check):
    """A cgroup v2 path as in /proc/<pid>/cgroup ("/system.slice/foo.service")."""

    expect = 'a cgroup path starting with "/"'

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise self.fail(value)
        if any(part == ".." for part in value.split("/")):
            raise _bad(f'cgroup path {_show(value)} must not contain ".."')
        # "/a//b/" and "/a/b" name the same cgroup; compare normalised forms.
        return posixpath.normpath(value).replace("//", "/")


class _Pid(_Integer):
    def __init__(self) -> None:
        super().__init__(1, _MAX_PID)


class _NodeList(_Check):
    """Node ids as a list ([0, 1]) or in the kernel's list syntax ("0-1")."""

    expect = f'a list of node ids in [0, {_MAX_NODE}] or a node list string like "0-1,4"'

    def __call__(self, value: Any) -> tuple[int, ...]:
        if isinstance(value, str):
            try:
                nodes = parse_list(value)
            except ParseError as e:
                raise _bad(f"bad node list {_show(value)}: {e}") from None
        elif isinstance(value, list):
            nodes = value
        else:
            raise self.fail(value)
        problems = [(f"[{i}]", f"expected a node id in [0, {_MAX_NODE}], got {_show(n)}")
                    for i, n in enumerate(nodes)
                    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _MAX_NODE]
        if problems:
            raise _Invalid(problems)
        return tuple(sorted(set(nodes)))

    def render(self, value: tuple[int, ...]) -> list[int]:
        return list(value)


class _NodeMap(_Check):
    """A table node -> node ({ "0" = 2, "1" = 2 }), compiled to sorted (from, to) pairs."""

    expect = 'a table of node = node, like { "0" = 2, "1" = 2 }'

    def __call__(self, value: Any) -> tuple[tuple[int, int], ...]:
        if not isinstance(value, dict):
            raise self.fail(value)
        pairs, problems = [], []
        for k, v in value.items():
            if not (re.fullmatch(r"[0-9]{1,4}", k) and int(k) <= _MAX_NODE):
                problems.append((f".{k}", f"expected a node id in [0, {_MAX_NODE}] as the key"))
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_NODE:
                problems.append((f".{k}", f"expected a node id in [0, {_MAX_NODE}], got {_show(v)}"))
                continue
            if int(k) == v:
                problems.append((f".{k}", "a node cannot be its own demotion target"))
                continue
            pairs.append((int(k), v))
        if problems:
            raise _Invalid(problems)
        return tuple(sorted(pairs))

    def render(self, value: tuple[tuple[int, int], ...]) -> dict[str, int]:
        return {str(a): b for a, b in value}


class _Listen(_Check):
    expect = f'"ADDRESS:PORT" ("127.0.0.1:{DEFAULT_METRICS_PORT}", "[::1]:{DEFAULT_METRICS_PORT}") or "" to turn the endpoint off'

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(value)
        try:
            parse_listen(value)
        except ParseError as e:
            raise _bad(str(e)) from None
        return value


def _key(default: Any, check: _Check) -> Any:
    """A config key: its default and the check that validates and converts it."""
    return field(default=default, metadata={"check": check})


class _PodUid(_Check):
    """A pod UID ("8d3c0f1e-..."), as in the pod's cgroup directory and `kubectl get pod -o jsonpath={.metadata.uid}`."""

    expect = "a pod UID like 8d3c0f1e-5b7a-4c2d-9e6f-0a1b2c3d4e5f"

    def __call__(self, value: Any) -> str:
        from autonumad.plan.kubepods import is_pod_uid, normalize_uid
        if not isinstance(value, str) or not is_pod_uid(value):
            raise self.fail(value)
        return normalize_uid(value)


# -- the sections ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    """[daemon]: the loop itself."""

    # Seconds between full passes. 10 s: a pass reads numa_maps of candidate
    # processes, which walks their page tables; numad scans every 5-15 s.
    interval_s: float = _key(10.0, _Number(0.5, 3600))
    # Decide and log every action, change nothing (kernel knobs included).
    dry_run: bool = _key(False, _Bool())
    # State, saved kernel-knob originals and the reload generation live here.
    runtime_dir: str = _key("/run/autonumad", _AbsPath())
    log_level: str = _key("info", _Choice(*LOG_LEVELS))
    # Put back the affinities autonumad set when it stops.
    restore_affinity_on_exit: bool = _key(True, _Bool())
    # Re-check processes found misplaced (or just acted on) this often, between
    # full passes; 0 turns it off. Beating the kernel's reaction time needs it.
    fast_recheck_s: float = _key(1.0, _Number(0, 3600))


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceConfig:
    """[balance]: socket locality, memory follows task and task follows memory (issue 4).

    The selection keys (include_/exclude_) also apply to tiering: a process
    left alone here is left alone everywhere.
    """

    enabled: bool = _key(True, _Bool())
    # Stop acting on a process once this fraction of its pages is on the
    # node(s) its threads run on; numad's default (-m) is 90 %.
    target_local_fraction: float = _key(0.9, _Number(0.5, 1.0))
    # The mover's token bucket, shared with tiering. 256 MiB/s moves a 1 GiB
    # process in 4 s while costing about 512 MiB/s of memory traffic (each
    # page is read and written once), a small share of one socket's tens of GB/s.
    migrate_rate_mib_s: float = _key(256.0, _Number(0, 1_000_000, lo_open=True))
    # Most bytes moved in one pass. At the default rate 1024 MiB takes 4 s,
    # well inside the unit's watchdog (pings come after each completed pass).
    pass_budget_mib: float = _key(1024.0, _Number(0, 10_000_000, lo_open=True))
    # Processes smaller than this are not worth reading numa_maps for. numad
    # uses 300 MB; 64 MiB still catches mid-sized services and skips the long
    # tail of small daemons whose remote accesses cost little.
    min_rss_bytes: int = _key(64 << 20, _Size())
    # CPU use (in cores, over the last interval) below which moving a task is
    # not worth its cache warm-up; numad uses 0.5.
    min_cpu_fraction: float = _key(0.1, _Number(0, 4096))
    # Regular expressions (Python re, searched anywhere in the 15-character
    # comm; anchor with ^...$) for processes to manage (empty: all) and to skip.
    include_comm: tuple[re.Pattern[str], ...] = _key((), _ListOf(_Regex()))
    exclude_comm: tuple[re.Pattern[str], ...] = _key((), _ListOf(_Regex()))
    # cgroup v2 paths as in /proc/<pid>/cgroup; a path covers itself and every
    # cgroup below it (systemd units, slices, containers). Empty include: all.
    include_cgroup: tuple[str, ...] = _key((), _ListOf(_CgroupPrefix()))
    exclude_cgroup: tuple[str, ...] = _key((), _ListOf(_CgroupPrefix()))
    exclude_pids: tuple[int, ...] = _key((), _ListOf(_Pid()))
    # Kubernetes pods on this node (autonumad/plan/kubepods.py; docs/fleet.md):
    # the QoS classes whose pods may be balanced, and pod UIDs never to touch.
    # Pods the kubelet placed (CPU-manager exclusive CPUs, Memory-manager
    # pinning) are left alone whatever these say. By pod cgroup: exclude_cgroup.
    pod_qos_classes: tuple[str, ...] = _key(("guaranteed", "burstable", "besteffort"),
                                            _ListOf(_Choice("guaranteed", "burstable", "besteffort")))
    exclude_pods: tuple[str, ...] = _key((), _ListOf(_PodUid()))
    # After acting on a process, leave it alone this long (oomd's post_action_delay).
    cooldown_s: float = _key(30.0, _Number(0, 86400))
    # A target node must keep this fraction of its memory free after a move.
    node_headroom_fraction: float = _key(0.05, _Number(0, 0.5))
    # Allow setting thread affinity (task follows memory / confinement).
    task_moves: bool = _key(True, _Bool())
    # Allow migrating pages (memory follows task).
    page_moves: bool = _key(True, _Bool())
    # Read numa_maps for at most this many candidates per pass, largest first;
    # 0 means no limit. Bounds a pass on hosts with thousands of big processes.
    scan_max_processes: int = _key(0, _Integer(0, 1_000_000))
    # Read a settled process's numa_maps at least this often even when its
    # cheap signals (resident size, running nodes, allowed CPUs and nodes,
    # the kernel's migration counters) say nothing changed; 0 reads every
    # candidate every pass. Each read walks the process's page tables under
    # its mmap_lock and stalls its mmap/munmap (observe/snapshot.py
    # SnapshotCache); the bound caps how long a change the signals cannot
    # see (another program's move_pages or mbind) goes unnoticed. A bound at
    # or below daemon.interval_s reads every pass (no warning: raising the
    # interval alone must not trip over this default).
    numa_maps_refresh_s: float = _key(60.0, _Number(0, 86400))
    # Kernel assist (plan/assist.py): turn the kernel's hint-fault sampling on
    # while a process whose busy threads fit on no node is misplaced, off at
    # plateau; false forbids it. Above this many hint faults per second it is
    # turned off at once.
    kernel_assist: bool = _key(True, _Bool())
    kernel_assist_hint_faults_per_s: float = _key(20000.0, _Number(0, 1e9, lo_open=True))


# Kernel knob names shared with autonumad/readers/knobs.py (which maps each to
# the file this kernel keeps it in) and the sysctl apply/restore code.
KNOB_NAMES = (
    "numa_balancing",
    "numa_balancing_promote_rate_limit_MBps",
    "demotion_enabled",
    "watermark_scale_factor",
    "zone_reclaim_mode",
    "scan_delay_ms",
    "scan_period_min_ms",
    "scan_period_max_ms",
    "scan_size_mb",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelConfig:
    """[kernel]: knobs set on start and restored on stop; None means "keep" (do not touch)."""

    # kernel.numa_balancing: off 0, normal 1, tiering 2, normal+tiering 3.
    numa_balancing: int | None = _key(None, _NumaBalancing())
    # kernel.numa_balancing_promote_rate_limit_MBps (v6.1): per target node.
    numa_balancing_promote_rate_limit_MBps: int | None = _key(None, _KeepOr(_Integer(0, _INT_MAX)))
    # /sys/kernel/mm/numa/demotion_enabled (v5.15): demote during reclaim.
    demotion_enabled: bool | None = _key(None, _KeepOr(_Bool()))
    # vm.watermark_scale_factor: in 1/10000 of memory; also sizes WMARK_PROMO.
    # The kernel's upper bound is 3000 since v5.17 and 1000 before; a value it
    # refuses is reported by `sysctl apply`, not guessed here.
    watermark_scale_factor: int | None = _key(None, _KeepOr(_Integer(1, 3000)))
    # vm.zone_reclaim_mode: bits 1 reclaim, 2 write dirty pages, 4 swap.
    zone_reclaim_mode: int | None = _key(None, _KeepOr(_Integer(0, 7)))
    # The scan knobs, in /sys/kernel/debug/sched/numa_balancing/ since v5.13
    # and /proc/sys/kernel/numa_balancing_scan_* before; may be absent or
    # locked down, in which case they are reported and skipped.
    scan_delay_ms: int | None = _key(None, _KeepOr(_Integer(0, 3_600_000)))
    scan_period_min_ms: int | None = _key(None, _KeepOr(_Integer(1, 3_600_000)))
    scan_period_max_ms: int | None = _key(None, _KeepOr(_Integer(1, 3_600_000)))
    scan_size_mb: int | None = _key(None, _KeepOr(_Integer(1, 1 << 20)))
    # Put the original values back when the daemon stops.
    restore_on_exit: bool = _key(True, _Bool())
    # Re-apply a knob changed behind our back (tuned, an admin); otherwise
    # such drift is only logged and counted.
    enforce: bool = _key(False, _Bool())

    def desired(self) -> dict[str, int | bool]:
        """The knobs to set, by knob name (KNOB_NAMES order); "keep" knobs are absent."""
        out: dict[str, int | bool] = {}
        for name in KNOB_NAMES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """[metrics]: the Prometheus endpoint."""

    # Loopback by default: the metrics name processes and their placement.
    listen: str = _key(f"127.0.0.1:{DEFAULT_METRICS_PORT}", _Listen())
    # Export the K processes with the most remote memory as a labelled gauge;
    # 0 keeps per-process series (unbounded label values) out entirely.
    top_processes: int = _key(0, _Integer(0, 1000))
    # Also write the metrics to this file each pass, for node_exporter's
    # textfile collector (which reads only *.prom); "" for none.
    textfile: str = _key("", _AbsPath(allow_empty=True, suffix=".prom"))
    # TLS and basic auth for the endpoint: a TOML file with exporter-toolkit's
    # web config keys (service/webconfig.py); "" serves plain HTTP without auth.
    web_config: str = _key("", _AbsPath(allow_empty=True))

    def listen_address(self) -> tuple[str, int] | None:
        """(address, port) to bind, or None when the endpoint is off."""
        return parse_listen(self.listen)


@dataclass(frozen=True, slots=True, kw_only=True)
class TieringConfig:
    """[tiering]: hot pages up to fast nodes, cold pages down, headroom kept (issue 6)."""

    enabled: bool = _key(True, _Bool())
    # How hot and cold pages are found: "auto" picks DAMON where the kernel
    # has it, else soft-dirty bits (tracker.py).
    tracker: str = _key("auto", _Choice("auto", "damon", "softdirty"))
    # Explicit tiers, overriding the memory-tier sysfs; empty: from sysfs.
    fast_nodes: tuple[int, ...] = _key((), _NodeList())
    slow_nodes: tuple[int, ...] = _key((), _NodeList())
    # Explicit demotion targets, fast node -> slow node; empty: each fast
    # node's nearest slow node by distance.
    demotion_targets: tuple[tuple[int, int], ...] = _key((), _NodeMap())
    # Free room kept on each fast node by proactive demotion, as a size or a
    # percentage of the node. 2 % is TPP's default demote_scale_factor (200).
    headroom: Amount = _key(Amount(fraction=0.02), _AmountCheck(0.5))
    # Bounds for the adaptive headroom. 0.5 % sits just above the kernel's own
    # WMARK_PROMO at the default watermark_scale_factor (3 x 0.1 %).
    headroom_min: Amount = _key(Amount(fraction=0.005), _AmountCheck(0.5))
    headroom_max: Amount = _key(Amount(fraction=0.10), _AmountCheck(0.5))
    # Widen the headroom while promotions are blocked for lack of room,
    # narrow it while fast memory sits idle; false keeps it at `headroom`.
    adaptive_headroom: bool = _key(True, _Bool())
    # Share of the mover's rate (balance.migrate_rate_mib_s) for promotion;
    # demotion gets the rest, so neither can starve the other.
    promote_share: float = _key(0.5, _Number(0, 1))
    # A region is hot when it was accessed in at least this fraction of the
    # tracker's samples in one aggregation window (DAMON: nr_accesses divided
    # by damon_aggr_us / damon_sample_us, i.e. 4 of 20 at the defaults).
    hot_access_fraction: float = _key(0.2, _Number(0, 1, lo_open=True))
    # A region is cold when it has not been accessed for this long; cold
    # memory is demoted to keep the headroom.
    cold_age_s: float = _key(30.0, _Number(0, 86400, lo_open=True))
    # While hot memory waits on the slow tier for room on a fast node, memory
    # idle this long is demoted to make that room (tiering.py, rule 4).
    exchange_age_s: float = _key(5.0, _Number(0, 86400, lo_open=True))
    # With kernel promotion on (numa_balancing tiering mode), hot memory the
    # kernel has left on the slow tier this long is promoted by autonumad;
    # 0 leaves promotion to the kernel alone.
    kernel_grace_s: float = _key(10.0, _Number(0, 86400))
    # A page just promoted is not demoted again within this time (hysteresis).
    promote_cooldown_s: float = _key(60.0, _Number(0, 86400))
    # DAMON monitoring intervals (monitoring_attrs/intervals/{sample_us,aggr_us});
    # the kernel's defaults, 5 ms and 100 ms.
    damon_sample_us: int = _key(5000, _Integer(100, 10_000_000))
    damon_aggr_us: int = _key(100_000, _Integer(100, 60_000_000))

    def demotion_target(self, node: int) -> int | None:
        """The configured demotion target of `node`, or None (then: from the topology)."""
        for src, dst in self.demotion_targets:
            if src == node:
                return dst
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole file, compiled. `Config()` is the configuration of an empty file."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tiering: TieringConfig = field(default_factory=TieringConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


# -- parse: bytes -> dict -------------------------------------------------------------


def parse_toml(data: bytes | str) -> dict[str, Any]:
    """TOML text to a dict; syntax errors become a ConfigError with line and column."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError([f"not UTF-8 (byte {e.start}); TOML files must be UTF-8"]) from None
    else:
        text = data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None


# -- compile: dict -> Config -------------------------------------------------------------


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _compile_section(cls: type, section: str, raw: Any, errors: list[str], bad: set[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{section}: expected a table [{section}], got {_show(raw)}")
        bad.update(f"{section}.{f.name}" for f in fields(cls))
        return cls()
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            errors.append(f"{section}.{key}: unknown key{_suggest(key, known)}")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        try:
            values[name] = f.metadata["check"](raw[name])
        except _Invalid as e:
            bad.add(f"{section}.{name}")
            errors.extend(f"{section}.{name}{where}: {reason}" for where, reason in e.problems)
    return cls(**values)


def _cross_checks(cfg: Config, bad: set[str]) -> list[str]:
    """Rules between keys. A rule runs only when all its keys passed their own checks."""
    errors: list[str] = []

    def ok(*keys: str) -> bool:
        return not bad.intersection(keys)

    k, t = cfg.kernel, cfg.tiering
    if (ok("kernel.scan_period_min_ms", "kernel.scan_period_max_ms")
            and k.scan_period_min_ms is not None and k.scan_period_max_ms is not None
            and k.scan_period_min_ms > k.scan_period_max_ms):
        errors.append(f"kernel.scan_period_min_ms: must not exceed kernel.scan_period_max_ms "
                      f"({k.scan_period_max_ms}), got {k.scan_period_min_ms}")
    if ok("tiering.fast_nodes", "tiering.slow_nodes"):
        both = set(t.fast_nodes) & set(t.slow_nodes)
        if both:
            errors.append(f"tiering.slow_nodes: node(s) {sorted(both)} are also in tiering.fast_nodes")
    if ok("tiering.demotion_targets", "tiering.fast_nodes", "tiering.slow_nodes"):
        for src, dst in t.demotion_targets:
            if t.fast_nodes and src not in t.fast_nodes:
                errors.append(f"tiering.demotion_targets.{src}: node {src} is not in tiering.fast_nodes")
            if t.slow_nodes and dst not in t.slow_nodes:
                errors.append(f"tiering.demotion_targets.{src}: target {dst} is not in tiering.slow_nodes")
    if ok("tiering.headroom", "tiering.headroom_min", "tiering.headroom_max"):
        errors.extend(_headroom_order(t))
    if ok("tiering.exchange_age_s", "tiering.cold_age_s") and t.exchange_age_s > t.cold_age_s:
        errors.append(f"tiering.exchange_age_s: must not exceed tiering.cold_age_s ({t.cold_age_s:g}), "
                      f"got {t.exchange_age_s:g}")
    if ok("tiering.damon_sample_us", "tiering.damon_aggr_us") and t.damon_aggr_us < t.damon_sample_us:
        errors.append(f"tiering.damon_aggr_us: must be at least tiering.damon_sample_us "
                      f"({t.damon_sample_us}), got {t.damon_aggr_us}")
    return errors


def _headroom_order(t: TieringConfig) -> list[str]:
    """headroom_min <= headroom <= headroom_max, checked between amounts of the same kind.

    A size and a percentage compare only once a node's size is known; the
    tiering loop clamps then.
    """
    def kind(a: Amount) -> str:
        return "bytes" if a.bytes is not None else "fraction"

    def value(a: Amount) -> float:
        return float(a.bytes if a.bytes is not None else a.fraction)  # type: ignore[arg-type]

    errors = []
    for lo_name, lo, hi_name, hi in (("headroom_min", t.headroom_min, "headroom", t.headroom),
                                     ("headroom", t.headroom, "headroom_max", t.headroom_max),
                                     ("headroom_min", t.headroom_min, "headroom_max", t.headroom_max)):
        if kind(lo) == kind(hi) and value(lo) > value(hi):
            errors.append(f"tiering.{lo_name}: must not exceed tiering.{hi_name} ({hi}), got {lo}")
            break
    return errors


def compile_config(raw: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document and build the Config; ConfigError lists every problem."""
    errors: list[str] = []
    bad: set[str] = set()
    all_keys = {f"{s}.{f.name}": f.name for s, cls in SECTIONS.items() for f in fields(cls)}
    for name, value in raw.items():
        if name in SECTIONS:
            continue
        if isinstance(value, dict):
            errors.append(f"{name}: unknown section{_suggest(name, SECTIONS)}")
        else:
            homes = [k for k, v in all_keys.items() if v == name]
            hint = f" (keys belong in a section: did you mean {homes[0]}?)" if homes else \
                " (keys belong in a section such as [daemon])"
            errors.append(f"{name}: unknown key{hint}")
    sections = {name: _compile_section(cls, name, raw.get(name, {}), errors, bad)
                for name, cls in SECTIONS.items()}
    cfg = Config(**sections)
    errors.extend(_cross_checks(cfg, bad))
    if errors:
        raise ConfigError(errors)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The Config as a TOML-shaped dict (what `check-config --show` prints).

    compile_config(config_to_dict(c)) == c for every valid c.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        out[name] = {f.name: f.metadata["check"].render(getattr(section, f.name)) for f in fields(section)}
    return out


def config_warnings(cfg: Config) -> list[str]:
    """Valid but questionable combinations, for `check-config` and the start-up log."""
    warnings = []
    d, k, b, m = cfg.daemon, cfg.kernel, cfg.balance, cfg.metrics
    # Not an error: lowering interval_s alone must not trip over a default.
    if d.fast_recheck_s and d.fast_recheck_s >= d.interval_s:
        warnings.append(f"daemon.fast_recheck_s: {_decimal_text(d.fast_recheck_s)} s is not below daemon.interval_s "
                        f"({_decimal_text(d.interval_s)} s), so there are no re-checks between passes")
    if k.numa_balancing in (1, 3) and b.enabled:
        warnings.append("kernel.numa_balancing: the kernel's own NUMA balancing stays on alongside [balance]; "
                        "both will place memory (see docs/operations.md, coexistence)")
    if k.demotion_enabled:
        warnings.append("kernel.demotion_enabled: reclaim may demote pages outside a cgroup's cpuset.mems "
                        "(Documentation/ABI/testing/sysfs-kernel-mm-numa)")
    if not k.restore_on_exit and k.desired():
        warnings.append("kernel.restore_on_exit = false: the knobs stay changed after autonumad stops")
    addr = m.listen_address()
    if addr is not None and not ipaddress.ip_address(addr[0]).is_loopback:
        warnings.append(f"metrics.listen = {m.listen!r} is reachable from other hosts; the shipped unit's "
                        "IPAddressAllow=localhost drops those scrapes until a drop-in allows the Prometheus server"
                        + ("" if m.web_config else "; the metrics name processes and their placement: set "
                           "metrics.web_config for TLS and basic auth"))
    if b.pass_budget_mib / b.migrate_rate_mib_s > 15:
        warnings.append(f"balance.pass_budget_mib: moving it at balance.migrate_rate_mib_s takes "
                        f"{b.pass_budget_mib / b.migrate_rate_mib_s:.0f} s, more than half the unit's WatchdogSec=30s")
    return warnings


# -- load: a file -> Config ----------------------------------------------------------------


def trusted_owner_uids() -> frozenset[int]:
    """Who may own the config: root, and the user running us.

    A root daemon must not read a file another user could have written. The
    user running us is as trustworthy as the process itself, so a developer's
    `autonumad run --root demo --config mine.toml` works without sudo, while
    under systemd (euid 0) only root-owned files pass. Tests running as root
    exercise exactly the production rule.
    """
    return frozenset({0, os.geteuid()})


def security_problems(st: os.stat_result, what: str, *, trusted_uids: Iterable[int]) -> list[str]:
    """Why a file or directory with this stat may have been written by someone untrusted."""
    problems = []
    uids = set(trusted_uids)
    if st.st_uid not in uids:
        owners = " or ".join("root" if u == 0 else f"uid {u}" for u in sorted(uids))
        problems.append(f"{what} is owned by uid {st.st_uid}, must be owned by {owners}")
    mode = stat.S_IMODE(st.st_mode)
    sticky_dir = stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir:
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)
        problems.append(f"{what} has mode {mode:04o}, writable by {who} (chmod go-w)")
    return problems


def load_config(path: str | os.PathLike[str] | None = None, *, require_secure: bool = True,
                default_path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> Config:
    """Read, check and compile the config file and its drop-ins.

    `path` None means `default_path` (DEFAULT_CONFIG_PATH unless a test or
    a --root demo says otherwise), where a missing file gives the defaults
    (logged); a missing file at a path given explicitly is an error. With
    `require_secure` (always, for the real daemon) every file and its
    directory must be owned by root or by us and not writable by group or
    others; `require_secure=False` is for fake-host demos and tests of
    other modules. Everything wrong is raised as one ConfigError.

    Drop-ins: every `*.toml` in `conf.d/` beside the file, in name order
    (`10-tiering.toml` before `20-site.toml`), is read after it; a key a
    drop-in sets replaces the value before it (lists are replaced, not
    appended). Rules between keys apply to the merged result, and an error
    about a key a drop-in set names that drop-in. Configuration management
    can so own one fragment without rewriting the packaged file.
    """
    explicit = path is not None
    p = Path(default_path if path is None else path)
    dropins = sorted(p.parent.joinpath(DROPIN_DIR).glob("*.toml"))
    try:
        raw = parse_toml(_read_config_file(p, require_secure))
    except FileNotFoundError:
        if explicit:
            raise ConfigError(["no such file"], path=p) from None
        if not dropins:
            log.info("no config file at %s: using the built-in defaults", p)
            return Config()
        raw = {}
    except ConfigError as e:
        raise ConfigError(e.errors, path=p) from None
    origin: dict[str, Path] = {}  # "section.key" -> the drop-in that set it last
    for d in dropins:
        try:
            part = parse_toml(_read_config_file(d, require_secure))
        except FileNotFoundError:
            continue  # removed since the listing
        except ConfigError as e:
            raise ConfigError(e.errors, path=d) from None
        for section, table in part.items():
            if isinstance(table, dict) and isinstance(raw.get(section), dict):
                raw[section] = {**raw[section], **table}
            else:
                raw[section] = table
            keys = table if isinstance(table, dict) else {"": None}
            origin.update({f"{section}.{k}".rstrip("."): d for k in keys})
    try:
        return compile_config(raw)
    except ConfigError as e:
        raise ConfigError([_name_dropin(err, origin) for err in e.errors], path=p) from None


def _name_dropin(error: str, origin: Mapping[str, Path]) -> str:
    """'section.key...: reason' with ' (set in DROP-IN)' after the key when a drop-in set it."""
    key, sep, reason = error.partition(": ")
    parts = key.split(".")
    for n in (2, 1):
        where = origin.get(".".join(parts[:n]).split("[")[0])
        if where is not None and sep:
            return f"{key} (set in {where}){sep}{reason}"
    return error


def _read_config_file(p: Path, require_secure: bool) -> bytes:
    """The bytes of one config file, after the checks load_config describes; FileNotFoundError as is."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the daemon in open().
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError([f"cannot open: {e.strerror}"], path=p) from None
    # Check the file we opened, not the path (which may be replaced meanwhile),
    # and before wrapping it: os.fdopen() raises IsADirectoryError on a
    # directory (a config path or a conf.d entry that is one, issue 10).
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise ConfigError([f"cannot stat: {e.strerror}"], path=p) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(["not a regular file" + (" (a directory)" if stat.S_ISDIR(st.st_mode) else "")], path=p)
    with os.fdopen(fd, "rb") as f:
        if require_secure:
            uids = trusted_owner_uids()
            problems = security_problems(st, "the file", trusted_uids=uids)
            parent = Path(os.path.realpath(p)).parent
            try:
                problems += security_problems(os.stat(parent), f"its directory {parent}", trusted_uids=uids)
            except OSError as e:
                problems.append(f"cannot check its directory {parent}: {e.strerror}")
            if problems:
                raise ConfigError(problems + ["refusing a config that others could have written; it steers a root daemon"],
                                  path=p)
        data = f.read(_MAX_CONFIG_BYTES + 1)
    if len(data) > _MAX_CONFIG_BYTES:
        raise ConfigError([f"larger than {_MAX_CONFIG_BYTES} bytes"], path=p)
    return data


def check_key(section: str, key: str, value: Any) -> Any:
    """Validate one value exactly as the config file's `section.key` is validated (for command-line overrides).

    Returns the converted value; raises ValueError with the config's message
    ("expected a number in [0.5, 3600], got nan").
    """
    for f in fields(SECTIONS[section]):
        if f.name == key:
            try:
                return f.metadata["check"](value)
            except _Invalid as e:
                raise ValueError("; ".join(reason for _, reason in e.problems)) from None
    raise KeyError(f"{section}.{key}")
