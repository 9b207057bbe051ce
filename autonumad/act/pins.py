"""The CPU affinities the daemon set, on disk, so that a restart after a crash undoes its own pins.

In memory the daemon remembers each pin it set (plan/history.py,
`OwnedAffinity`) and restores it when the reason is gone or at a clean stop.
A crash (SIGKILL, the watchdog, an OOM kill) loses that memory: the pins
would stay forever and the next daemon would take them for the owner's own
(and respect them as explicit placement). So each pin is also written to
`<runtime dir>/pins.json` with the process's start time (proc(5) stat field
22), before the daemon's memory of it could be lost:

* a pin set: recorded (pid, start time, the CPUs set, the original CPUs);
* a pin undone (restore_affinity), or the process gone or replaced: dropped;
  every pass prunes entries whose pid now has another start time or none;
* a clean stop: the file is removed (the pins were restored, or deliberately
  kept with `restore_affinity_on_exit = false`);
* a start that finds the file: the previous daemon died. For each entry
  whose process is still the same one (identity proved as for any action,
  act/identity.py) and whose threads still carry exactly the CPUs the
  daemon set (the owner has not re-pinned it since), the original affinity
  is put back; the file is then removed.

The file also records the host (service/runtime.py `host_doc`): pins from
another host tree or another boot are dropped, never applied.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from autonumad.act import identity
from autonumad.act.affinity import cpuset_cpus, get_process_affinity, set_process_affinity
from autonumad.errors import AutonumadError, ProcessError
from autonumad.service import runtime

log = logging.getLogger("autonumad")

PINS_FILE_NAME = "pins.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Pin:
    pid: int
    start_ticks: int
    cpus: frozenset[int]  # what the daemon set
    original: frozenset[int]  # what it replaced

    def as_json(self) -> dict:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "cpus": sorted(self.cpus),
                "original": sorted(self.original)}


class PinLedger:
    def __init__(self, host, directory: str | Path):
        self.host = host
        self.dir = Path(directory)
        self.pins: dict[tuple[int, int], Pin] = {}
        self._dirty = False
        self.keep_on_close = False  # a dry run leaves a crashed run's file alone

    # -- the file -----------------------------------------------------------------------
    def _load(self) -> list[Pin] | None:
        """The pins on disk; None when there is no file. Bad files are reported and ignored."""
        try:
            data = runtime.read_file(self.dir, PINS_FILE_NAME)
        except AutonumadError as e:
            log.warning("pins of a previous run not read: %s", e)
            return None
        if data is None:
            return None
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("version") != _VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            why = runtime.foreign_host(doc.get("host"), self.host)
            if why is not None:
                log.warning("%s: written for %s; its pins are not applied here",
                            self.dir / PINS_FILE_NAME, "another host tree" if why == "root" else "an earlier boot")
                return []
            out = []
            for e in doc["pins"]:
                vals = (e["pid"], e["start_ticks"])
                if not all(type(v) is int and v > 0 for v in vals):
                    raise ValueError(f"bad entry {e!r:.60}")
                cpus, original = e["cpus"], e["original"]
                if not all(type(c) is int and 0 <= c < 1 << 20 for c in (*cpus, *original)):
                    raise ValueError(f"bad CPU list in {e!r:.60}")
                out.append(Pin(vals[0], vals[1], frozenset(cpus), frozenset(original)))
            return out
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            log.warning("%s: corrupt (%s); its pins are not applied", self.dir / PINS_FILE_NAME, e)
            return []

    def _save(self) -> None:
        if not self._dirty:
            return
        try:
            if self.pins:
                doc = {"version": _VERSION, "host": runtime.host_doc(self.host),
                       "pins": [p.as_json() for p in self.pins.values()]}
                runtime.write_file(self.dir, PINS_FILE_NAME, (json.dumps(doc, indent=1) + "\n").encode())
            else:
                runtime.remove_file(self.dir, PINS_FILE_NAME)
            self._dirty = False
        except (OSError, AutonumadError) as e:
            # Not fatal: the pins are still restored at a clean stop from memory.
            log.warning("affinities set by autonumad not recorded on disk: %s", e)

    # -- the daemon's hooks -----------------------------------------------------------------
    def recover(self) -> int:
        """At start: undo the pins a crashed run left; returns how many were restored."""
        pins = self._load()
        if pins is None:
            return 0
        n = 0
        for p in pins:
            try:
                identity.hold(self.host, p.pid, p.start_ticks)
                now = get_process_affinity(self.host, p.pid)
                # What set_process_affinity applied: the CPUs set, within the cpuset.
                allowed = cpuset_cpus(self.host, p.pid)
                ours = {p.cpus, p.cpus & allowed if allowed else p.cpus}
                if any(cpus not in ours for cpus in now.values()):
                    log.info("pid %d: CPU affinity changed since autonumad set it; left as it is", p.pid)
                    continue
                r = set_process_affinity(self.host, p.pid, p.original)
                if r.threads_set:
                    n += 1
            except (ProcessError, OSError) as e:
                log.debug("pid %d: pin of a previous run not undone: %s", p.pid, e)
            finally:
                identity.release(self.host)
        if n:
            log.warning("restored the CPU affinity of %d process(es) a previous autonumad run pinned and did "
                        "not undo (it did not stop cleanly)", n)
        self.pins.clear()
        self._dirty = True
        self._save()
        return n

    def outcome(self, o) -> None:
        """Record a pin set, forget one undone (an executor Outcome)."""
        a = o.action
        if o.status != "done" or a.kind not in ("set_affinity", "restore_affinity"):
            return
        key = (a.pid, a.start_ticks)
        if a.kind == "set_affinity":
            old = self.pins.get(key)
            original = old.original if old else frozenset(a.original_cpus)
            self.pins[key] = Pin(a.pid, a.start_ticks, frozenset(a.cpus), original)
        else:
            self.pins.pop(key, None)
        self._dirty = True
        self._save()

    def prune(self) -> None:
        """Drop pins whose process is gone or whose pid now names another process."""
        for key in list(self.pins):
            try:
                identity.confirm(self.host, *key)
            except ProcessError:
                del self.pins[key]
                self._dirty = True
        self._save()

    def forget(self, keys: Iterable[tuple[int, int]]) -> None:
        for key in keys:
            if self.pins.pop(key, None) is not None:
                self._dirty = True
        self._save()

    def close(self) -> None:
        """A clean stop: the pins were restored (or are kept on purpose); the file goes."""
        self.pins.clear()
        self._dirty = True
        self._save()
