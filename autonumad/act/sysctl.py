"""Kernel knobs from the config: apply, restore, recover after a crash, detect drift.

The tuned way (redhat-performance/tuned plugins/plugin_sysctl.py; style.md
sections 3.7 and 5.4):

* `apply(desired)`: before the first write, the original value of every
  knob the config manages is saved atomically (tmp file + fsync +
  os.replace) to `<state_dir>/saved-knobs.json`, so a crash at any later
  point leaves the originals on disk. Knobs the kernel lacks, or whose write
  it refuses (EPERM without CAP_SYS_ADMIN, EACCES, EROFS, debugfs under
  lockdown), are warn-level outcomes; the others are still applied.
* `restore()`: writes the saved originals back, then removes the file.
  Idempotent: without a file there is nothing to do. A knob whose restore
  is refused stays in the file so a later, privileged `restore` can finish.
* `recover()`: at start, a leftover file means the previous run died
  without restoring; restore it before applying anything.
* `verify(desired)`: the knobs whose current value differs from the
  config's (someone such as tuned or an admin changed them behind our back).

The saved file maps a knob name to the path it was found at and its
original value. A second `apply` (a config reload) keeps the originals
already saved and adds new knobs; a knob the new config no longer manages
("keep") gets its original back, so the file always lists exactly the knobs
this daemon owns.

The state directory is a real directory (`/run/autonumad` under systemd's
RuntimeDirectory=), never part of the host tree: on a fake host the knobs
live in the fake tree and the saved file in the test's state directory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from autonumad.errors import AutonumadError
from autonumad.host import Host
from autonumad.readers.knobs import (
    KNOBS,
    KnobSpec,
    KnobValue,
    format_knob,
    oserror_reason,
    read_knob,
    same_value,
)

log = logging.getLogger("autonumad")

SAVED_FILE_NAME = "saved-knobs.json"
# 2 records the host (root path and boot id) the originals belong to; 1 did not.
_SAVED_VERSION = 2
_LEGACY_VERSION = 1

Outcome = Literal["written", "unchanged", "absent", "refused", "restored"]
KnobScalar = int | bool

@dataclass(frozen=True, slots=True)
class KnobChange:
    """What happened to one knob in apply/restore.

    outcome: "written" (set to `new`), "unchanged" (already `new`), "absent"
    (this kernel has no such knob), "refused" (the kernel or the file system
    said no; `error` says why), "restored" (set back to the original `new`).
    """

    name: str
    path: str | None
    old: KnobScalar | None
    new: KnobScalar | None
    outcome: Outcome
    error: str | None = None

    @property
    def is_warning(self) -> bool:
        """Absent and refused knobs are logged at warning level; the rest at info."""
        return self.outcome in ("absent", "refused")


@dataclass(frozen=True, slots=True)
class Drift:
    """A managed knob whose value differs from the config's (changed behind our back)."""

    name: str
    path: str
    expected: KnobScalar
    actual: KnobScalar | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KnobState:
    """One row of `autonumad sysctl show`: current value and, if managed, the saved original."""

    name: str
    path: str | None
    value: KnobScalar | None
    original: KnobScalar | None
    managed: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class SavedKnob:
    path: str
    value: KnobScalar


class SavedKnobsError(AutonumadError):
    """The saved-originals file exists but cannot be read or parsed."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class KnobManager:
    """Owns the knobs named in the config for the daemon's lifetime (see module doc)."""

    def __init__(self, host: Host, state_dir: str | os.PathLike[str],
                 specs: Mapping[str, KnobSpec] = KNOBS):
        self.host = host
        self.state_dir = Path(state_dir)
        self.saved_path = self.state_dir / SAVED_FILE_NAME
        self.specs = specs
        # The originals as this manager last read or wrote them: a daemon that
        # finds its own file corrupted later (a disk error, a stray editor)
        # still knows what to put back (issue 10: corrupt file + SIGHUP).
        self._known: dict[str, SavedKnob] | None = None

    # -- the saved file -------------------------------------------------------
    def saved(self) -> dict[str, SavedKnob]:
        """The originals on disk (empty when nothing is saved).

        Raises SavedKnobsError for a file that cannot be read or parsed, and
        for one written for another host tree or boot (`foreign()`): those
        originals are not this host's to restore.
        """
        doc = self._load()
        if doc is None:
            return {}
        why = self._foreign(doc)
        if why is not None:
            raise SavedKnobsError(self.saved_path, why)
        entries = self._entries(doc)
        self._known = dict(entries)
        return entries

    def _saved_or_known(self) -> dict[str, SavedKnob]:
        """saved(), or, when the file went bad after this manager read or wrote it, what it knew then."""
        try:
            return self.saved()
        except SavedKnobsError as e:
            if self._known is None:
                raise
            log.warning("%s; using the originals this daemon saved earlier", e)
            return dict(self._known)

    def _load(self) -> dict | None:
        from autonumad.service import runtime

        try:
            data = runtime.read_file(self.state_dir, SAVED_FILE_NAME)
        except AutonumadError as e:
            raise SavedKnobsError(self.saved_path, str(e).removeprefix(f"{self.saved_path}: ")) from None
        if data is None:
            return None
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise SavedKnobsError(self.saved_path, "corrupt: not UTF-8 text") from None
        except ValueError as e:
            raise SavedKnobsError(self.saved_path, f"corrupt: {e}") from None
        if not isinstance(doc, dict) or doc.get("version") not in (_SAVED_VERSION, _LEGACY_VERSION):
            version = doc.get("version") if isinstance(doc, dict) else None
            raise SavedKnobsError(self.saved_path, f"corrupt: unknown version {version!r}")
        return doc

    def _foreign(self, doc: dict) -> str | None:
        """Why the saved originals are not this host's, or None."""
        from autonumad.service import runtime

        if doc.get("version") == _LEGACY_VERSION:
            # Written before files named their host: only a real host's daemon wrote those.
            if Path(self.host.root).resolve() != Path("/"):
                return "saved by an older autonumad for the real host, not for this host tree: not restored here"
            return None
        why = runtime.foreign_host(doc.get("host"), self.host)
        if why == "root":
            recorded = doc.get("host", {}).get("root") if isinstance(doc.get("host"), dict) else None
            return (f"saved for host root {recorded!r}, not {os.path.realpath(self.host.root)!r}: not restored "
                    f"here (remove the file if those originals are no longer wanted)")
        if why == "boot":
            return ("saved before the machine rebooted (boot id differs): the reboot reset those knobs, "
                    "so they are not restored")
        return None

    def _entries(self, doc: dict) -> dict[str, SavedKnob]:
        try:
            out: dict[str, SavedKnob] = {}
            for name, entry in doc["knobs"].items():
                value, path = entry["value"], entry["path"]
                spec = self.specs.get(name)
                if not isinstance(path, str):
                    raise ValueError(f"bad path for {name}")
                # The type the knob takes: a bool where an integer knob's value
                # belongs (or the reverse) is corruption, not a value to write.
                if spec is not None and spec.kind == "bool":
                    if not (isinstance(value, bool) or (type(value) is int and value in (0, 1))):
                        raise ValueError(f"{name}: expected a boolean, got {value!r:.40}")
                elif type(value) is not int:
                    raise ValueError(f"{name}: expected an integer, got {value!r:.40}")
                if type(value) is int and abs(value) >= 1 << 64:
                    raise ValueError(f"{name}: {str(value)[:20]}... is out of any knob's range")
                out[name] = SavedKnob(path, value)
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SavedKnobsError(self.saved_path, f"corrupt: {e}") from None

    def _write_saved(self, saved: Mapping[str, SavedKnob]) -> None:
        """Replace the saved file atomically, or remove it when nothing is saved."""
        self._known = dict(saved)
        if not saved:
            try:
                self.saved_path.unlink()
            except FileNotFoundError:
                pass
            else:
                _fsync_dir(self.state_dir)
            return
        from autonumad.service import runtime

        doc = {"version": _SAVED_VERSION, "host": runtime.host_doc(self.host),
               "knobs": {n: {"path": s.path, "value": s.value} for n, s in sorted(saved.items())}}
        # Write, fsync, rename, fsync the directory (runtime.write_file): after
        # a crash the file is either the old one or the new one, never a torn
        # mix; created exclusively, following no symlink.
        try:
            runtime.write_file(self.state_dir, SAVED_FILE_NAME, (json.dumps(doc, indent=1) + "\n").encode())
        except OSError as e:
            raise SavedKnobsError(self.saved_path, f"cannot save the originals: {oserror_reason(e)}") from None
        except AutonumadError as e:  # the directory is unsafe (runtime.check_dir)
            raise SavedKnobsError(self.saved_path, f"cannot save the originals: {e}") from None

    # -- operations -----------------------------------------------------------
    def _spec(self, name: str) -> KnobSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"unknown kernel knob {name!r}") from None

    def _write(self, spec: KnobSpec, path: str, value: KnobScalar) -> str | None:
        """Write one knob and read it back; the reason it did not take, or None."""
        try:
            self.host.write_text(path, format_knob(spec, value))
        except OSError as e:
            return oserror_reason(e)
        after = read_knob(self.host, spec)
        if after.error:
            return f"read back failed: {after.error}"
        if not same_value(spec, after.value, value):
            # Some handlers clamp or ignore values without an error.
            return f"kernel kept {after.value!r}"
        return None

    def apply(self, desired: Mapping[str, KnobScalar | None]) -> list[KnobChange]:
        """Set every knob in `desired` (None values mean keep); see module doc."""
        desired = {n: v for n, v in desired.items() if v is not None}
        specs = {n: self._spec(n) for n in desired}
        try:
            saved = self._saved_or_known()
        except SavedKnobsError as e:
            # Writing without a record of the originals would lose them: refuse
            # every knob with the reason, and let the caller carry on.
            return [KnobChange(n, None, None, v, "refused", str(e)) for n, v in desired.items()]
        changes: list[KnobChange] = []

        # Knobs managed before (a previous apply) but no longer desired go back.
        dropped = {n: s for n, s in saved.items() if n not in desired}
        if dropped:
            changes += self._restore_entries(dropped, saved)

        current = {n: read_knob(self.host, spec) for n, spec in specs.items()}
        to_write = [n for n, kv in current.items()
                    if kv.path is not None and kv.error is None
                    and not same_value(specs[n], kv.value, desired[n])]
        if to_write:
            # Save before the first write: the original of every knob we now
            # manage that is not saved already (a reload keeps the first one).
            new_entries = {n: SavedKnob(kv.path, kv.value) for n, kv in current.items()
                           if n not in saved and kv.path is not None and kv.value is not None}
            if new_entries:
                saved.update(new_entries)
                try:
                    self._write_saved(saved)
                except SavedKnobsError as e:
                    # No record of the originals, no write (read-only or unsafe directory).
                    return changes + [KnobChange(n, current[n].path, current[n].value, v, "refused", str(e))
                                      for n, v in desired.items()]

        for name, want in desired.items():
            kv = current[name]
            spec = specs[name]
            if kv.path is None:
                changes.append(KnobChange(name, None, None, want, "absent", "not present on this kernel"))
            elif kv.error is not None:
                changes.append(KnobChange(name, kv.path, None, want, "refused", kv.error))
            elif name not in to_write:
                changes.append(KnobChange(name, kv.path, kv.value, want, "unchanged"))
            else:
                err = self._write(spec, kv.path, want)
                outcome: Outcome = "refused" if err else "written"
                changes.append(KnobChange(name, kv.path, kv.value, want, outcome, err))
        return changes

    def _restore_entries(self, entries: Mapping[str, SavedKnob],
                         saved: dict[str, SavedKnob]) -> list[KnobChange]:
        """Write `entries` back; drop each from `saved` (and the file) unless refused."""
        changes: list[KnobChange] = []
        for name, entry in entries.items():
            spec = self.specs.get(name)
            if spec is None:
                # Saved by a version that knew this knob; nothing we can do.
                changes.append(KnobChange(name, entry.path, None, entry.value, "absent", "unknown knob"))
                saved.pop(name, None)
                continue
            if entry.path not in spec.paths:
                # Only ever write where this knob can live, whatever the file says.
                changes.append(KnobChange(name, entry.path, None, entry.value, "refused",
                                          "saved path is not a path of this knob"))
                saved.pop(name, None)
                continue
            # Restore to the path it was saved from, even if the registry
            # would now pick another (debugfs mounted meanwhile).
            spec_at = KnobSpec(spec.name, (entry.path,), spec.kind)
            kv = read_knob(self.host, spec_at)
            if kv.path is None:
                changes.append(KnobChange(name, entry.path, None, entry.value, "absent",
                                          "no longer present on this kernel"))
                saved.pop(name, None)
            elif kv.error is None and same_value(spec, kv.value, entry.value):
                changes.append(KnobChange(name, entry.path, kv.value, entry.value, "unchanged"))
                saved.pop(name, None)
            else:
                err = self._write(spec_at, entry.path, entry.value)
                if err:
                    changes.append(KnobChange(name, entry.path, kv.value, entry.value, "refused", err))
                else:
                    changes.append(KnobChange(name, entry.path, kv.value, entry.value, "restored"))
                    saved.pop(name, None)
        self._write_saved(saved)
        return changes

    def restore(self) -> list[KnobChange]:
        """Write back every saved original and remove the saved file (idempotent)."""
        saved = self._saved_or_known()
        if not saved:
            # No file (or an empty one): nothing was changed, nothing to undo.
            self._write_saved({})
            return []
        return self._restore_entries(dict(saved), saved)

    def recover(self) -> list[KnobChange]:
        """At start: a saved file left behind means a crashed run; restore it.

        A file from before a reboot is set aside (renamed with a `.stale`
        suffix, logged): the reboot already reset the knobs, and keeping it
        would block every later start. A file of another host tree raises.
        """
        doc = self._load()
        if doc is None:
            return []
        why = self._foreign(doc)
        if why is not None and doc.get("version") == _SAVED_VERSION and isinstance(doc.get("host"), dict) and \
                doc["host"].get("root") == os.path.realpath(self.host.root):
            stale = self.saved_path.with_name(SAVED_FILE_NAME + ".stale")
            os.replace(self.saved_path, stale)
            log.warning("%s: %s; moved to %s", self.saved_path, why, stale)
            return []
        return self.restore()

    def verify(self, desired: Mapping[str, KnobScalar | None]) -> list[Drift]:
        """Knobs whose value now differs from `desired`; absent knobs are not drift."""
        drifts: list[Drift] = []
        for name, want in desired.items():
            if want is None:
                continue
            spec = self._spec(name)
            kv = read_knob(self.host, spec)
            if kv.path is None:
                continue
            if kv.error is not None:
                drifts.append(Drift(name, kv.path, want, None, kv.error))
            elif not same_value(spec, kv.value, want):
                drifts.append(Drift(name, kv.path, want, kv.value))
        return drifts

    def show(self) -> list[KnobState]:
        """Every registered knob: its value now and, for managed ones, the saved original."""
        saved = self.saved()
        rows: list[KnobState] = []
        for name, spec in self.specs.items():
            kv: KnobValue = read_knob(self.host, spec)
            entry = saved.get(name)
            rows.append(KnobState(name, kv.path, kv.value, entry.value if entry else None,
                                  entry is not None, kv.error))
        return rows


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink in it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
