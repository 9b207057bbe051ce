"""The `numa-vm --init systemd` guest itself: a real systemd is PID 1 and works.

These check the harness, not autonumad: PID 1 is the host's systemd, the
boot reached a sane state with nothing failed, the masked units stayed
down, journald takes and returns messages, a unit written to
/etc/systemd/system in the guest starts with systemctl, and a local .deb
installs with dpkg and with apt (the root is a tmpfs overlay over the
host's, so /var/lib/dpkg is writable and changes vanish at power-off).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.systemd


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, SYSTEMD_PAGER="", DEBIAN_FRONTEND="noninteractive",
                                LC_ALL="C"))
    if check:
        assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def failed_units() -> list[str]:
    out = run("systemctl", "list-units", "--state=failed", "--plain", "--no-legend").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_pid1_is_systemd_and_the_command_runs_as_the_job_unit(vm_guest):
    assert vm_guest["init"] == "systemd"
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    assert os.path.realpath("/proc/1/exe").endswith("/systemd")
    # sd_booted()'s own test.
    assert Path("/run/systemd/system").is_dir()
    cgroup = Path("/proc/self/cgroup").read_text()
    assert "/system.slice/numa-vm-job.service" in cgroup, cgroup


def test_boot_finished_running_with_no_failed_unit():
    # --wait: the job starts once basic.target is reached, a moment before
    # the manager calls the boot finished.
    state = run("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
    # Other systemd tests of the same guest (the package's) may have left
    # their own unit failed on purpose; anything else is the guest's fault.
    foreign = [u for u in failed_units() if not u.startswith("autonumad")]
    assert not foreign, f"failed units in the guest: {foreign}"
    assert state in ("running", "degraded"), state
    if state == "degraded":
        assert failed_units(), "degraded with no failed unit"
    target = run("systemctl", "show", "-P", "ActiveState", "numa-vm.target").stdout.strip()
    assert target == "active"


@pytest.mark.parametrize("unit", ["timers.target", "getty.target", "systemd-timesyncd.service", "packagekit.service"])
def test_masked_units_stay_down(unit):
    assert run("systemctl", "show", "-P", "LoadState", unit).stdout.strip() == "masked"
    assert run("systemctl", "show", "-P", "ActiveState", unit).stdout.strip() == "inactive"


def test_journald_takes_and_returns_a_message():
    assert run("systemctl", "is-active", "systemd-journald.service").stdout.strip() == "active"
    tag = "numa-vm-test"
    text = f"hello from the guest {uuid.uuid4()}"
    run("systemd-cat", "-t", tag, "-p", "warning", "echo", text)
    deadline = time.monotonic() + 30
    while True:
        out = run("journalctl", "-t", tag, "-p", "warning", "-o", "cat", "--no-pager").stdout
        if text in out:
            break
        assert time.monotonic() < deadline, f"journald never returned {text!r}: {out!r}"
        time.sleep(0.5)


def test_a_unit_installed_in_the_guest_starts_with_systemctl(tmp_path):
    unit = Path("/etc/systemd/system/numa-vm-probe.service")
    marker = Path("/run/numa-vm-probe")
    unit.write_text("[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                    f"ExecStart=/bin/sh -c 'echo $$PPID > {marker}'\n")
    try:
        run("systemctl", "daemon-reload")
        run("systemctl", "start", "numa-vm-probe.service")
        assert run("systemctl", "is-active", "numa-vm-probe.service").stdout.strip() == "active"
        assert marker.read_text().strip() == "1"  # started by PID 1, not by us
        run("systemctl", "stop", "numa-vm-probe.service")
    finally:
        unit.unlink()
        marker.unlink(missing_ok=True)
        run("systemctl", "daemon-reload")


def build_deb(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: numa-vm <root@localhost>\n"
        "Depends: python3\nDescription: numa-vm guest probe package\n")
    share = root / "usr" / "share" / name
    share.mkdir(parents=True)
    (share / "hello").write_text("hello\n")
    deb = tmp_path / f"{name}_1.0_all.deb"
    run("dpkg-deb", "--root-owner-group", "--build", str(root), str(deb))
    return deb


def test_a_local_deb_installs_with_dpkg_and_with_apt(tmp_path):
    name = "numa-vm-probe"
    deb = build_deb(tmp_path, name)
    payload = Path("/usr/share") / name / "hello"

    run("dpkg", "-i", str(deb))
    assert "Status: install ok installed" in run("dpkg", "-s", name).stdout
    assert payload.read_text() == "hello\n"
    run("dpkg", "--purge", name)
    assert not payload.exists()

    # apt resolves the dependency (python3, already installed) offline.
    # (Not --no-download: apt 2.6 then refuses a local .deb as "not absolute".)
    run("apt-get", "install", "-y", "-q", str(deb), timeout=300)
    assert "Status: install ok installed" in run("dpkg", "-s", name).stdout
    run("apt-get", "purge", "-y", "-q", name, timeout=300)
    assert run("dpkg", "-s", name, check=False).returncode != 0
