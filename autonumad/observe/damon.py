"""DAMON's sysfs interface: one kdamond of our own, monitoring the managed processes.

Layout (Documentation/admin-guide/mm/damon/usage.rst, mm/damon/sysfs.c and
mm/damon/sysfs-schemes.c, 6.12), under /sys/kernel/mm/damon/admin:

    kdamonds/nr_kdamonds                      number of kdamond directories
    kdamonds/<N>/state                        "on" | "off"; commands are written here:
                                              on, off, commit, update_schemes_tried_regions,
                                              clear_schemes_tried_regions, ...
    kdamonds/<N>/pid                          the kdamond thread's pid, -1 while off
    kdamonds/<N>/contexts/nr_contexts         0 or 1
    .../contexts/0/operations                 "vaddr" (virtual address spaces of processes)
    .../contexts/0/monitoring_attrs/intervals/{sample_us,aggr_us,update_us}
    .../contexts/0/monitoring_attrs/nr_regions/{min,max}
    .../contexts/0/targets/nr_targets, targets/<T>/pid_target
    .../contexts/0/schemes/nr_schemes, schemes/<S>/action ("stat": only count)
    .../schemes/<S>/access_pattern/{sz/bytes,nr_accesses,age}/{min,max}
    .../schemes/<S>/tried_regions/<R>/{start,end,nr_accesses,age}

Each tried region file holds one unsigned decimal number and a newline
(sysfs_emit "%lu\\n" / "%u\\n"). `nr_accesses` counts the samples, out of
aggr_us / sample_us per aggregation interval, in which the region was seen
accessed; `age` counts aggregation intervals its access level has held.
The access_pattern max values default to 0, which matches no region: they
must be raised before `update_schemes_tried_regions` reports anything.

Sharing DAMON with other users. `nr_kdamonds` is one global number, and
writing it (mm/damon/sysfs.c, damon_sysfs_kdamonds_add_dirs) first fails
with EBUSY while *any* kdamond runs, and otherwise removes every kdamond
directory and creates fresh ones, dropping the configuration of stopped
kdamonds. So autonumad never resizes when that could hurt someone:

1. It reuses a slot recorded as its own in `<runtime_dir>/damon-owned.json`
   (left by an earlier run), or else an existing slot that is off and
   empty (no context configured: nobody's set-up is lost by taking it).
2. Otherwise it grows `nr_kdamonds` by one only when no slot exists yet or
   every existing slot is off, empty and not in use; a slot that is on or
   configured by someone else makes DAMON unavailable to autonumad
   (`NotSupported`), and the tracker falls back. A kdamond that is on and
   not in our file is never written to.

The ownership file is written atomically (rename) *before* the kdamond is
turned on, so a daemon killed at any moment leaves a record; the next start
(`recover`) turns off a recorded kdamond only if it is still the one we
started (its `pid` file matches the recorded kdamond pid) and clears its
configuration. `close()` does the same at exit, and shrinks `nr_kdamonds`
back to 0 when every slot is ours or empty and off, restoring the
untouched state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from autonumad.errors import HostError, NotSupported, ParseError
from autonumad.host import Host
from autonumad.readers import read_host_file

log = logging.getLogger("autonumad")

ADMIN_DIR = "/sys/kernel/mm/damon/admin"
KDAMONDS_DIR = ADMIN_DIR + "/kdamonds"
OWNED_FILE_NAME = "damon-owned.json"
# Raised access-pattern maximum: matches every region (the kernel stores
# nr_accesses and age as unsigned int, sizes as unsigned long).
_MATCH_ALL_MAX = 2**32 - 1


# -- pure parsers ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DamonRegion:
    """One tried region of a stat scheme: [start, end) of one target."""

    start: int
    end: int
    nr_accesses: int  # samples with an access, of aggr_us / sample_us
    age_aggr: int  # aggregation intervals its access level has held

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


def parse_unsigned(text: str, what: str = "value") -> int:
    """One sysfs number: an unsigned decimal and an optional newline."""
    s = text.strip()
    if not s.isascii() or not s.isdigit():
        raise ParseError(f"{what}: expected an unsigned integer, got {text[:40]!r}")
    return int(s)


def parse_signed(text: str, what: str = "value") -> int:
    """A sysfs number that may be negative (kdamonds/N/pid reads -1 while off)."""
    s = text.strip()
    body = s[1:] if s.startswith("-") else s
    if not body.isascii() or not body.isdigit():
        raise ParseError(f"{what}: expected an integer, got {text[:40]!r}")
    return int(s)


def parse_state(text: str) -> str:
    """kdamonds/N/state: "on" or "off" (kernel 5.18+)."""
    s = text.strip()
    if s not in ("on", "off"):
        raise ParseError(f"kdamond state: expected on or off, got {text[:40]!r}")
    return s


def parse_tried_region(start: str, end: str, nr_accesses: str, age: str) -> DamonRegion:
    """The four files of tried_regions/<R>/ (mm/damon/sysfs-schemes.c, damon_sysfs_scheme_region)."""
    r = DamonRegion(parse_unsigned(start, "start"), parse_unsigned(end, "end"),
                    parse_unsigned(nr_accesses, "nr_accesses"), parse_unsigned(age, "age"))
    if r.end <= r.start:
        raise ParseError(f"tried region ends before it starts: {r.start:#x}-{r.end:#x}")
    return r


@dataclass(frozen=True, slots=True)
class OwnedKdamond:
    """One kdamond autonumad created: its slot and the kdamond thread's pid once on."""

    index: int
    kdamond_pid: int | None
    daemon_pid: int


def parse_owned(text: str) -> tuple[OwnedKdamond, ...]:
    """damon-owned.json, autonumad's own record (format: `format_owned`)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ParseError(f"damon-owned.json: not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kdamonds"), list):
        raise ParseError("damon-owned.json: expected an object with a 'kdamonds' list")
    out = []
    for k in doc["kdamonds"]:
        if not isinstance(k, dict):
            raise ParseError("damon-owned.json: a kdamond entry is not an object")
        index, kpid, dpid = k.get("index"), k.get("kdamond_pid"), k.get("daemon_pid", 0)
        if not _is_int(index) or index < 0 or not (kpid is None or _is_int(kpid)) or not _is_int(dpid):
            raise ParseError(f"damon-owned.json: bad kdamond entry {str(k)[:80]}")
        out.append(OwnedKdamond(index, kpid, dpid))
    return tuple(out)


def format_owned(owned: Iterable[OwnedKdamond]) -> str:
    return json.dumps({"schema_version": 1, "kdamonds": [
        {"index": o.index, "kdamond_pid": o.kdamond_pid, "daemon_pid": o.daemon_pid} for o in owned]},
        indent=1) + "\n"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- reading through the Host ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class KdamondSlot:
    index: int
    state: str  # "on" | "off"
    pid: int  # -1 while off
    nr_contexts: int


def damon_available(host: Host) -> bool:
    """True when the kernel has DAMON's sysfs interface (CONFIG_DAMON_SYSFS)."""
    return host.exists(KDAMONDS_DIR + "/nr_kdamonds")


def _read(host: Host, path: str, parse, what: str):
    return read_host_file(host, path, lambda text: parse(text, what))


def read_slots(host: Host) -> tuple[KdamondSlot, ...]:
    n = _read(host, KDAMONDS_DIR + "/nr_kdamonds", parse_unsigned, "nr_kdamonds")
    slots = []
    for i in range(n):
        d = f"{KDAMONDS_DIR}/{i}"
        state = _read(host, d + "/state", lambda t, _w: parse_state(t), "state")
        pid = _read(host, d + "/pid", parse_signed, "pid")
        nctx = _read(host, d + "/contexts/nr_contexts", parse_unsigned, "nr_contexts")
        slots.append(KdamondSlot(i, state, pid, nctx))
    return tuple(slots)


def read_tried_regions(host: Host, scheme_dir: str) -> tuple[DamonRegion, ...]:
    """Every tried_regions/<R> of one scheme, in index order; a region that vanished mid-read is skipped."""
    base = scheme_dir + "/tried_regions"
    out = []
    for name in sorted((n for n in host.listdir(base) if n.isdigit()), key=int):
        d = f"{base}/{name}"
        texts = [host.read_text_or_none(f"{d}/{f}") for f in ("start", "end", "nr_accesses", "age")]
        if any(t is None for t in texts):
            continue
        try:
            out.append(parse_tried_region(*texts))  # type: ignore[arg-type]
        except ParseError as e:
            raise HostError(d, str(e)) from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MonitoringAttrs:
    sample_us: int = 5000
    aggr_us: int = 100_000
    update_us: int = 1_000_000
    min_nr_regions: int = 10
    max_nr_regions: int = 1000

    @property
    def max_nr_accesses(self) -> int:
        """The most samples one aggregation interval holds: nr_accesses' ceiling."""
        return max(1, self.aggr_us // self.sample_us)


# -- the kdamond autonumad owns -----------------------------------------------------

class DamonSession:
    """One kdamond of ours with one vaddr context, one target per pid and one stat scheme.

    Usage: `recover()` once at start (cleans up after a killed run), then
    `monitor(pids)` whenever the set changes, `regions()` each pass, and
    `close()` at exit. Raises NotSupported when the kernel has no DAMON or
    every usable slot belongs to someone else.
    """

    def __init__(self, host: Host, runtime_dir: str | os.PathLike[str],
                 attrs: MonitoringAttrs = MonitoringAttrs(), settle_s: float = 0.0, empty_retries: int = 2):
        self.host = host
        self.owned_path = Path(runtime_dir) / OWNED_FILE_NAME
        self.attrs = attrs
        # Pause after update_schemes_tried_regions before reading, for kernels
        # that fill the directory from the kdamond asynchronously.
        self.settle_s = settle_s
        self.empty_retries = empty_retries
        self.index: int | None = None
        self.pids: tuple[int, ...] = ()

    # -- ownership file --
    def _owned(self) -> tuple[OwnedKdamond, ...]:
        try:
            text = self.owned_path.read_text()
        except FileNotFoundError:
            return ()
        try:
            return parse_owned(text)
        except ParseError as e:
            # A corrupt record: nothing trustworthy in it. Touch no kdamond.
            log.warning("%s: %s; ignoring it", self.owned_path, e)
            return ()

    def _write_owned(self, owned: Iterable[OwnedKdamond]) -> None:
        owned = tuple(owned)
        if not owned:
            self.owned_path.unlink(missing_ok=True)
            return
        self.owned_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.owned_path.with_name(f".{OWNED_FILE_NAME}.{os.getpid()}")
        tmp.write_text(format_owned(owned))
        os.replace(tmp, self.owned_path)

    # -- recovery and clean-up --
    def recover(self) -> list[int]:
        """Stop and clear the kdamonds a previous run recorded and left; returns their indices."""
        if not damon_available(self.host):
            return []
        cleaned = []
        slots = {s.index: s for s in read_slots(self.host)}
        for o in self._owned():
            s = slots.get(o.index)
            if s is None:
                continue
            if s.state == "on" and (o.kdamond_pid is None or s.pid != o.kdamond_pid):
                # On, but not the thread we started: someone took the slot since.
                log.info("DAMON kdamond %d is running as pid %d, not ours (%s): left alone",
                         o.index, s.pid, o.kdamond_pid)
                continue
            self._clear_slot(o.index, s.state == "on")
            cleaned.append(o.index)
        self._write_owned(())
        self._shrink_if_unused()
        return cleaned

    def _clear_slot(self, index: int, running: bool) -> None:
        d = f"{KDAMONDS_DIR}/{index}"
        if running:
            self._write(d + "/state", "off")
        self._write(d + "/contexts/nr_contexts", "0")

    def _shrink_if_unused(self) -> None:
        """nr_kdamonds back to 0 when every slot is off and empty (the untouched state)."""
        slots = read_slots(self.host)
        if slots and all(s.state == "off" and s.nr_contexts == 0 for s in slots):
            try:
                self._write(KDAMONDS_DIR + "/nr_kdamonds", "0")
            except OSError as e:
                log.debug("nr_kdamonds not reset: %s", e)

    def close(self) -> None:
        """Turn our kdamond off, clear it, forget it."""
        if self.index is None:
            return
        try:
            s = {s.index: s for s in read_slots(self.host)}.get(self.index)
            if s is not None:
                self._clear_slot(self.index, s.state == "on")
            self._write_owned(())
            self._shrink_if_unused()
        except (OSError, HostError) as e:
            log.warning("DAMON clean-up of kdamond %d failed: %s", self.index, e)
        self.index = None
        self.pids = ()

    # -- set-up --
    def _allocate(self) -> int:
        if not damon_available(self.host):
            raise NotSupported("DAMON: the kernel has no /sys/kernel/mm/damon/admin (CONFIG_DAMON_SYSFS)")
        slots = read_slots(self.host)
        mine = {o.index for o in self._owned()}
        for s in slots:
            if s.index in mine and s.state == "off":
                return s.index
        for s in slots:
            if s.state == "off" and s.nr_contexts == 0:
                return s.index
        busy = [s for s in slots if s.state == "on" or s.nr_contexts]
        if busy:
            raise NotSupported(
                "DAMON: kdamond(s) " + ",".join(str(s.index) for s in busy) + " belong to another user "
                "(running or configured); adding one would need nr_kdamonds rewritten, which the kernel "
                "refuses while one runs and which erases stopped ones")
        try:
            self._write(KDAMONDS_DIR + "/nr_kdamonds", str(len(slots) + 1))
        except OSError as e:
            raise NotSupported(f"DAMON: nr_kdamonds not raised: {e}") from None
        return len(slots)

    def monitor(self, pids: Iterable[int]) -> bool:
        """Monitor at least `pids`; returns True when the kdamond was (re)started.

        Targets that left the set stay in a running kdamond: it holds their
        struct pid, so a reused pid number is never watched by mistake, an
        exited target costs nothing, and the others keep their history
        (regions and ages). New targets need a restart, which loses that
        history for all: on 6.12 a target added online ("commit") was given
        no regions at all (seen in the tiered guest), so that is no way
        round it.
        """
        pids = tuple(sorted(set(pids)))
        if self.index is not None and (pids == self.pids or (pids and set(pids) <= set(self.pids))):
            return False
        if self.index is None:
            self.index = self._allocate()
            # Recorded before anything runs: a kill from here on leaves a trace.
            others = [o for o in self._owned() if o.index != self.index]
            self._write_owned([*others, OwnedKdamond(self.index, None, os.getpid())])
        d = f"{KDAMONDS_DIR}/{self.index}"
        if parse_state(self.host.read_text(d + "/state")) == "on":
            # Targets of a running kdamond change on "commit" only in newer
            # kernels' fashion; a restart works everywhere and costs one
            # aggregation interval of history.
            self._write(d + "/state", "off")
        self.pids = ()
        if not pids:
            self._write(d + "/contexts/nr_contexts", "0")
            return True
        self._configure(d, pids)
        try:
            self._write(d + "/state", "on")
        except OSError as e:
            # ESRCH: a target exited between the snapshot and now.
            raise HostError(d + "/state", f"kdamond not started: {e.strerror or e}") from None
        kpid = parse_signed(self.host.read_text(d + "/pid"), "pid")
        self._write_owned([OwnedKdamond(self.index, kpid, os.getpid())])
        self.pids = pids
        return True

    def _configure(self, d: str, pids: tuple[int, ...]) -> None:
        a = self.attrs
        self._write(d + "/contexts/nr_contexts", "1")
        c = d + "/contexts/0"
        self._write(c + "/operations", "vaddr")
        iv = c + "/monitoring_attrs/intervals"
        self._write(iv + "/sample_us", str(a.sample_us))
        self._write(iv + "/aggr_us", str(a.aggr_us))
        self._write(iv + "/update_us", str(a.update_us))
        nr = c + "/monitoring_attrs/nr_regions"
        # max before min: the kernel rejects min > max at commit time only,
        # but keeping the pair ordered at every step is cheap.
        self._write(nr + "/max", str(a.max_nr_regions))
        self._write(nr + "/min", str(a.min_nr_regions))
        self._write(c + "/targets/nr_targets", str(len(pids)))
        for i, pid in enumerate(pids):
            self._write(f"{c}/targets/{i}/pid_target", str(pid))
        # One stat scheme per target, each keeping only its target's regions
        # (a `target` filter, file damon_target_idx, with matching N filters out every other
        # target's regions; core-level, 6.5+), so that tried_regions/ of
        # scheme i are exactly pid i's.
        self._write(c + "/schemes/nr_schemes", str(len(pids)))
        for i in range(len(pids)):
            s = f"{c}/schemes/{i}"
            self._write(s + "/action", "stat")
            for what in ("sz", "nr_accesses", "age"):
                self._write(f"{s}/access_pattern/{what}/min", "0")
                self._write(f"{s}/access_pattern/{what}/max", str(_MATCH_ALL_MAX))
            if len(pids) > 1:
                try:
                    self._write(s + "/filters/nr_filters", "1")
                    f = s + "/filters/0"
                    self._write(f + "/type", "target")
                    self._write(f + "/damon_target_idx", str(i))
                    self._write(f + "/matching", "N")
                except OSError as e:
                    raise NotSupported(f"DAMON: no per-target scheme filter on this kernel ({e})") from None

    # -- sampling --
    def regions(self) -> Mapping[int, tuple[DamonRegion, ...]]:
        """The current regions of every monitored pid: its scheme's tried regions."""
        if self.index is None or not self.pids:
            return {}
        d = f"{KDAMONDS_DIR}/{self.index}"
        for attempt in range(1 + self.empty_retries):
            self._write(d + "/state", "update_schemes_tried_regions")
            if self.settle_s:
                time.sleep(self.settle_s)
            out = {pid: read_tried_regions(self.host, f"{d}/contexts/0/schemes/{i}")
                   for i, pid in enumerate(self.pids)}
            if any(out.values()):
                return out
            # Seen on 6.12: now and then the write returns before the kdamond
            # has refilled tried_regions/, and every scheme reads empty (a
            # live process always has regions). Ask again after an interval.
            time.sleep(2 * self.attrs.aggr_us / 1e6)
        return out

    def _write(self, path: str, value: str) -> None:
        self.host.write_text(path, value)
