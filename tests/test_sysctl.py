"""KnobManager: apply / restore / crash recovery / drift on fake hosts (autonumad.act.sysctl)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from autonumad.sim.fakehost import FakeHost
from autonumad.readers.knobs import KNOBS, read_knob, read_knobs
from autonumad.act.sysctl import (
    SAVED_FILE_NAME,
    Drift,
    KnobChange,
    KnobManager,
    SavedKnobsError,
)

KNOB_FILES = {
    "/proc/sys/kernel/numa_balancing": "1\n",
    "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps": "65536\n",
    "/sys/kernel/debug/sched/numa_balancing/scan_delay_ms": "1000\n",
    "/sys/kernel/mm/numa/demotion_enabled": "false\n",
    "/proc/sys/vm/watermark_scale_factor": "10\n",
    "/proc/sys/vm/zone_reclaim_mode": "0\n",
}


def make_tree(root: Path, files: dict[str, str] = KNOB_FILES) -> Path:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "host")


@pytest.fixture
def state_dir(tmp_path) -> Path:
    return tmp_path / "run"


def values(host) -> dict:
    return read_knobs(host).as_json()


def by_name(changes: list[KnobChange]) -> dict[str, KnobChange]:
    return {c.name: c for c in changes}


# -- apply / restore -----------------------------------------------------------------

def test_apply_then_restore(tree, state_dir):
    host = FakeHost(tree)
    mgr = KnobManager(host, state_dir)
    changes = by_name(mgr.apply({"numa_balancing": 0, "demotion_enabled": True,
                                 "watermark_scale_factor": 10}))
    assert changes["numa_balancing"] == KnobChange("numa_balancing", "/proc/sys/kernel/numa_balancing",
                                                   1, 0, "written")
    assert changes["demotion_enabled"].outcome == "written"
    assert changes["watermark_scale_factor"].outcome == "unchanged"
    v = values(host)
    assert (v["numa_balancing"], v["demotion_enabled"], v["watermark_scale_factor"]) == (0, True, 10)
    assert (tree / "sys/kernel/mm/numa/demotion_enabled").read_text() == "true\n"

    saved = json.loads((state_dir / SAVED_FILE_NAME).read_text())
    assert saved["knobs"]["numa_balancing"] == {"path": "/proc/sys/kernel/numa_balancing", "value": 1}
    assert saved["knobs"]["demotion_enabled"]["value"] is False

    restored = by_name(mgr.restore())
    assert restored["numa_balancing"].outcome == "restored"
    assert restored["numa_balancing"].new == 1
    assert restored["demotion_enabled"].outcome == "restored"
    assert restored["watermark_scale_factor"].outcome == "unchanged"
    v = values(host)
    assert (v["numa_balancing"], v["demotion_enabled"]) == (1, False)
    assert not (state_dir / SAVED_FILE_NAME).exists()
    assert list(state_dir.iterdir()) == []  # no temporary files left behind


def test_restore_is_idempotent(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    assert mgr.restore() == []  # nothing saved: nothing to do
    mgr.apply({"numa_balancing": 0})
    assert [c.outcome for c in mgr.restore()] == ["restored"]
    assert mgr.restore() == []
    assert values(FakeHost(tree))["numa_balancing"] == 1


def test_nothing_to_change_writes_no_file(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    changes = mgr.apply({"numa_balancing": 1, "demotion_enabled": False})
    assert {c.outcome for c in changes} == {"unchanged"}
    assert not (state_dir / SAVED_FILE_NAME).exists()


class SpyHost(FakeHost):
    """Records whether the saved file existed, and what it said, at each knob write."""

    def __init__(self, root, saved_path: Path):
        super().__init__(root)
        self.saved_path = saved_path
        self.seen: list[dict | None] = []

    def write_text(self, host_path: str, value: str) -> None:
        p = self.saved_path
        self.seen.append(json.loads(p.read_text()) if p.exists() else None)
        super().write_text(host_path, value)


def test_originals_are_saved_before_the_first_write(tree, state_dir):
    host = SpyHost(tree, state_dir / SAVED_FILE_NAME)
    KnobManager(host, state_dir).apply({"numa_balancing": 0, "zone_reclaim_mode": 1})
    assert len(host.seen) == 2
    first = host.seen[0]
    assert first is not None, "the first knob write happened before the originals were saved"
    assert first["knobs"]["numa_balancing"]["value"] == 1
    assert first["knobs"]["zone_reclaim_mode"]["value"] == 0


def test_crash_recovery(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    mgr.apply({"numa_balancing": 0, "watermark_scale_factor": 200})
    del mgr  # the daemon dies without restoring
    assert values(FakeHost(tree))["numa_balancing"] == 0

    fresh = KnobManager(FakeHost(tree), state_dir)
    recovered = by_name(fresh.recover())
    assert recovered["numa_balancing"].outcome == "restored"
    assert recovered["watermark_scale_factor"].outcome == "restored"
    v = values(FakeHost(tree))
    assert (v["numa_balancing"], v["watermark_scale_factor"]) == (1, 10)
    assert not (state_dir / SAVED_FILE_NAME).exists()
    assert fresh.recover() == []


def test_apply_after_crash_without_recover_keeps_the_true_originals(tree, state_dir):
    KnobManager(FakeHost(tree), state_dir).apply({"numa_balancing": 0})
    # A new run applies a different value straight away: the saved original
    # must still be the kernel's 1, not the crashed run's 0.
    mgr = KnobManager(FakeHost(tree), state_dir)
    mgr.apply({"numa_balancing": 2})
    assert mgr.saved()["numa_balancing"].value == 1
    mgr.restore()
    assert values(FakeHost(tree))["numa_balancing"] == 1


def test_reload_keeps_first_originals_and_restores_dropped_knobs(tree, state_dir):
    host = FakeHost(tree)
    mgr = KnobManager(host, state_dir)
    mgr.apply({"numa_balancing": 0})
    mgr.apply({"numa_balancing": 2, "zone_reclaim_mode": 1})  # reload with more knobs
    saved = mgr.saved()
    assert saved["numa_balancing"].value == 1
    assert saved["zone_reclaim_mode"].value == 0
    assert values(host)["numa_balancing"] == 2

    # The next config says "keep" for numa_balancing: it gets its original back.
    changes = by_name(mgr.apply({"zone_reclaim_mode": 1, "numa_balancing": None}))
    assert changes["numa_balancing"].outcome == "restored"
    assert changes["zone_reclaim_mode"].outcome == "unchanged"
    assert values(host)["numa_balancing"] == 1
    assert set(mgr.saved()) == {"zone_reclaim_mode"}


def test_absent_knob_is_a_warning_and_the_rest_applies(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    changes = by_name(mgr.apply({"hot_threshold_ms": 500, "numa_balancing": 0}))
    absent = changes["hot_threshold_ms"]
    assert (absent.outcome, absent.path, absent.is_warning) == ("absent", None, True)
    assert changes["numa_balancing"].outcome == "written"
    assert not changes["numa_balancing"].is_warning
    assert "hot_threshold_ms" not in mgr.saved()


def test_unknown_knob_name_is_a_programming_error(tree, state_dir):
    with pytest.raises(KeyError):
        KnobManager(FakeHost(tree), state_dir).apply({"no_such_knob": 1})


class RefusingHost(FakeHost):
    """The kernel says no to some paths: EPERM (no CAP_SYS_ADMIN, lockdown) or EROFS."""

    def __init__(self, root, refused: dict[str, int]):
        super().__init__(root)
        self.refused = refused

    def write_text(self, host_path: str, value: str) -> None:
        if host_path in self.refused:
            code = self.refused[host_path]
            raise PermissionError(code, "refused", host_path) if code in (errno.EPERM, errno.EACCES) \
                else OSError(code, "refused", host_path)
        super().write_text(host_path, value)


@pytest.mark.parametrize("code,name", [(errno.EPERM, "EPERM"), (errno.EACCES, "EACCES"),
                                       (errno.EROFS, "EROFS")], ids=["EPERM", "EACCES", "EROFS"])
def test_refused_write_is_a_warning_and_the_rest_applies(tree, state_dir, code, name):
    host = RefusingHost(tree, {"/proc/sys/kernel/numa_balancing": code})
    mgr = KnobManager(host, state_dir)
    changes = by_name(mgr.apply({"numa_balancing": 0, "demotion_enabled": True}))
    refused = changes["numa_balancing"]
    assert refused.outcome == "refused" and refused.is_warning
    assert refused.error.startswith(name)
    assert changes["demotion_enabled"].outcome == "written"
    v = values(host)
    assert (v["numa_balancing"], v["demotion_enabled"]) == (1, True)
    # The refused knob never changed, so restoring it is a no-op.
    restored = by_name(mgr.restore())
    assert restored["numa_balancing"].outcome == "unchanged"
    assert restored["demotion_enabled"].outcome == "restored"


class IgnoringHost(FakeHost):
    """A handler that accepts the write but keeps its value (clamping, silent ignore)."""

    def write_text(self, host_path: str, value: str) -> None:
        pass


def test_write_that_does_not_take_is_refused(tree, state_dir):
    changes = KnobManager(IgnoringHost(tree), state_dir).apply({"numa_balancing": 0})
    assert changes[0].outcome == "refused"
    assert changes[0].error == "kernel kept 1"


def test_restore_refused_keeps_the_entry_for_a_later_restore(tree, state_dir):
    KnobManager(FakeHost(tree), state_dir).apply({"numa_balancing": 0, "zone_reclaim_mode": 1})
    weak = KnobManager(RefusingHost(tree, {"/proc/sys/kernel/numa_balancing": errno.EPERM}), state_dir)
    changes = by_name(weak.restore())
    assert changes["numa_balancing"].outcome == "refused"
    assert changes["zone_reclaim_mode"].outcome == "restored"
    assert set(weak.saved()) == {"numa_balancing"}
    # A privileged restore (ExecStopPost=+...) finishes the job.
    strong = KnobManager(FakeHost(tree), state_dir)
    assert [c.outcome for c in strong.restore()] == ["restored"]
    assert values(FakeHost(tree))["numa_balancing"] == 1
    assert not (state_dir / SAVED_FILE_NAME).exists()


def test_unreadable_knob_is_refused_not_saved(tree, state_dir):
    class LockedDown(FakeHost):
        def read_text(self, host_path: str) -> str:
            if "/debug/" in host_path:
                raise PermissionError(errno.EPERM, "Operation not permitted", host_path)
            return super().read_text(host_path)

    mgr = KnobManager(LockedDown(tree), state_dir)
    changes = by_name(mgr.apply({"scan_delay_ms": 500, "numa_balancing": 0}))
    assert changes["scan_delay_ms"].outcome == "refused"
    assert changes["scan_delay_ms"].error.startswith("EPERM")
    assert "scan_delay_ms" not in mgr.saved()
    assert (tree / "sys/kernel/debug/sched/numa_balancing/scan_delay_ms").read_text() == "1000\n"


def test_knob_gone_at_restore_is_absent(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    mgr.apply({"scan_delay_ms": 500})
    (tree / "sys/kernel/debug/sched/numa_balancing/scan_delay_ms").unlink()  # debugfs unmounted
    changes = mgr.restore()
    assert [(c.name, c.outcome) for c in changes] == [("scan_delay_ms", "absent")]
    assert not (state_dir / SAVED_FILE_NAME).exists()


# -- drift ---------------------------------------------------------------------------

def test_verify_detects_drift(tree, state_dir):
    host = FakeHost(tree)
    mgr = KnobManager(host, state_dir)
    desired = {"numa_balancing": 0, "demotion_enabled": True, "hot_threshold_ms": 500}
    mgr.apply(desired)
    assert mgr.verify(desired) == []  # the absent hot_threshold_ms is not drift
    (tree / "proc/sys/kernel/numa_balancing").write_text("1\n")  # tuned steps in
    assert mgr.verify(desired) == [Drift("numa_balancing", "/proc/sys/kernel/numa_balancing", 0, 1)]
    # Reasserting re-applies without touching the saved original.
    assert by_name(mgr.apply(desired))["numa_balancing"].outcome == "written"
    assert mgr.verify(desired) == []
    assert mgr.saved()["numa_balancing"].value == 1


def test_verify_reports_unparseable_value(tree, state_dir):
    (tree / "proc/sys/vm/zone_reclaim_mode").write_text("bogus\n")
    drifts = KnobManager(FakeHost(tree), state_dir).verify({"zone_reclaim_mode": 1})
    assert len(drifts) == 1
    assert drifts[0].actual is None and "not an integer" in drifts[0].error


# -- the saved file ------------------------------------------------------------------

def _host(tree) -> dict:
    """The host record a saved file written for the fake host `tree` carries."""
    from autonumad.service.runtime import boot_id

    return {"root": os.path.realpath(tree), "boot_id": boot_id()}


def _saved_doc(tree, knobs, version=2) -> str:
    return json.dumps({"version": version, "host": _host(tree), "knobs": knobs})


@pytest.mark.parametrize("text", ["", "{", "[]", '{"version": 99, "knobs": {}}', "HOST-1",
                                  "HOST-2", "HOST-3", "HOST-4", "HOST-5", "HOST-6"],
                         ids=["empty", "torn", "list", "version", "path-type", "value-type", "bool-for-int",
                              "300-digits", "knobs-not-a-table", "host-not-a-table"])
def test_corrupt_saved_file(tree, state_dir, text):
    """Each is one line (SavedKnobsError), never a traceback; main crashed on bool-for-int and 300 digits."""
    knobs = {"HOST-1": {"numa_balancing": {"path": 1, "value": 1}},
             "HOST-2": {"numa_balancing": {"value": "x", "path": "/proc/sys/kernel/numa_balancing"}},
             "HOST-3": {"numa_balancing": {"value": True, "path": "/proc/sys/kernel/numa_balancing"}},
             "HOST-4": {"numa_balancing": {"value": int("9" * 300), "path": "/proc/sys/kernel/numa_balancing"}},
             "HOST-5": True}
    if text == "HOST-6":
        text = json.dumps({"version": 2, "host": True, "knobs": {}})
    elif text in knobs:
        text = _saved_doc(tree, knobs[text])
    state_dir.mkdir()
    (state_dir / SAVED_FILE_NAME).write_text(text)
    with pytest.raises(SavedKnobsError) as ei:
        KnobManager(FakeHost(tree), state_dir).recover()
    assert SAVED_FILE_NAME in str(ei.value) and "\n" not in str(ei.value)


def test_non_utf8_saved_file_is_one_line(tree, state_dir):
    """main: UnicodeDecodeError traceback."""
    state_dir.mkdir()
    (state_dir / SAVED_FILE_NAME).write_bytes(b'{"version": 2, "knobs": {"\xff": 1}}')
    with pytest.raises(SavedKnobsError, match="not UTF-8"):
        KnobManager(FakeHost(tree), state_dir).recover()


def test_saved_path_outside_the_registry_is_never_written(tree, state_dir):
    state_dir.mkdir()
    victim = tree / "etc/passwd"
    victim.parent.mkdir()
    victim.write_text("root:x:0:0\n")
    (state_dir / SAVED_FILE_NAME).write_text(_saved_doc(tree, {"numa_balancing": {"path": "/etc/passwd",
                                                                                  "value": 0}}))
    changes = KnobManager(FakeHost(tree), state_dir).recover()
    assert [c.outcome for c in changes] == ["refused"]
    assert victim.read_text() == "root:x:0:0\n"
    assert not (state_dir / SAVED_FILE_NAME).exists()


def test_saved_originals_record_their_host_and_are_not_restored_on_another(tree, state_dir, tmp_path):
    """main: a fake-host run consumed the real host's saved originals (a shared runtime directory)."""
    mgr = KnobManager(FakeHost(tree), state_dir)
    mgr.apply({"numa_balancing": 0})
    doc = json.loads((state_dir / SAVED_FILE_NAME).read_text())
    assert doc["host"] == _host(tree)
    other = tmp_path / "other-host"
    shutil.copytree(tree, other)
    with pytest.raises(SavedKnobsError, match="saved for host root"):
        KnobManager(FakeHost(other), state_dir).recover()
    with pytest.raises(SavedKnobsError, match="saved for host root"):
        KnobManager(FakeHost(other), state_dir).restore()
    assert (state_dir / SAVED_FILE_NAME).exists()  # left for its own host
    assert read_knob(FakeHost(other), KNOBS["numa_balancing"]).value == 0  # the copy was not touched


def test_saved_originals_from_an_earlier_boot_are_set_aside(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    mgr.apply({"numa_balancing": 0})
    doc = json.loads((state_dir / SAVED_FILE_NAME).read_text())
    doc["host"]["boot_id"] = "00000000-0000-0000-0000-000000000000"
    (state_dir / SAVED_FILE_NAME).write_text(json.dumps(doc))
    assert KnobManager(FakeHost(tree), state_dir).recover() == []
    assert not (state_dir / SAVED_FILE_NAME).exists()
    assert (state_dir / (SAVED_FILE_NAME + ".stale")).exists()
    assert read_knob(FakeHost(tree), KNOBS["numa_balancing"]).value == 0  # not "restored" after a reboot


def test_planted_symlink_does_not_redirect_the_saved_file(tree, state_dir, tmp_path):
    """A symlink at the saved file's (or its temporary file's) name must not redirect the write."""
    state_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state_dir / SAVED_FILE_NAME).symlink_to(victim)
    (state_dir / f".{SAVED_FILE_NAME}.{os.getpid()}.tmp").symlink_to(victim)
    mgr = KnobManager(FakeHost(tree), state_dir)
    [change] = mgr.apply({"numa_balancing": 0})  # reading the planted link is refused, nothing written
    assert change.outcome == "refused" and "symlink" in change.error
    (state_dir / SAVED_FILE_NAME).unlink()
    mgr.apply({"numa_balancing": 0})
    assert victim.read_text() == "precious\n"
    assert not (state_dir / SAVED_FILE_NAME).is_symlink()


def test_unsafe_runtime_directory_is_refused(tree, tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    [change] = KnobManager(FakeHost(tree), d).apply({"numa_balancing": 0})
    assert change.outcome == "refused" and "writable by group or others" in change.error
    assert read_knob(FakeHost(tree), KNOBS["numa_balancing"]).value == 1  # nothing written without a saved original


def test_show(tree, state_dir):
    mgr = KnobManager(FakeHost(tree), state_dir)
    mgr.apply({"numa_balancing": 0})
    rows = {r.name: r for r in mgr.show()}
    nb = rows["numa_balancing"]
    assert (nb.value, nb.original, nb.managed) == (0, 1, True)
    assert rows["zone_reclaim_mode"].managed is False
    assert rows["hot_threshold_ms"].path is None
