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

SAVED_FILE_NAME = "saved-knobs.json"
_SAVED_VERSION = 1

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

    # -- the saved file -------------------------------------------------------
    def saved(self) -> dict[str, SavedKnob]:
        """The originals on disk (empty when nothing is saved)."""
        try:
            text = self.saved_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise SavedKnobsError(self.saved_path, oserror_reason(e)) from None
        try:
            doc = json.loads(text)
            if doc.get("version") != _SAVED_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            out: dict[str, SavedKnob] = {}
            for name, entry in doc["knobs"].items():
                value = entry["value"]
                if not isinstance(value, (int, bool)) or not isinstance(entry["path"], str):
                    raise ValueError(f"bad entry for {name}")
                out[name] = SavedKnob(entry["path"], value)
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SavedKnobsError(self.saved_path, f"corrupt: {e}") from None

    def _write_saved(self, saved: Mapping[str, SavedKnob]) -> None:
        """Replace the saved file atomically, or remove it when nothing is saved."""
        if not saved:
            try:
                self.saved_path.unlink()
            except FileNotFoundError:
                pass
            else:
                _fsync_dir(self.state_dir)
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        doc = {"version": _SAVED_VERSION,
               "knobs": {n: {"path": s.path, "value": s.value} for n, s in sorted(saved.items())}}
        tmp = self.saved_path.with_name(f".{SAVED_FILE_NAME}.{os.getpid()}.tmp")
        # Write, fsync, rename, fsync the directory: after a crash the file
        # is either the old one or the new one, never a torn mix.
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.saved_path)
        _fsync_dir(self.state_dir)

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
        saved = self.saved()
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
                self._write_saved(saved)

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
        saved = self.saved()
        if not saved:
            # No file (or an empty one): nothing was changed, nothing to undo.
            self._write_saved({})
            return []
        return self._restore_entries(dict(saved), saved)

    def recover(self) -> list[KnobChange]:
        """At start: a saved file left behind means a crashed run; restore it."""
        if not self.saved_path.exists():
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
