"""The container image on a real two-node kernel: podman run with the host PID namespace.

Needs the image as an OCI archive at build/autonumad-image.oci.tar (or
$AUTONUMAD_IMAGE_ARCHIVE): tests/test_image.py writes it when the host stage
of scripts/test builds the image, so CI runs this right after; by hand,

    scripts/build-image --output build/autonumad-image.oci.tar
    scripts/hardware-tests --topology 2node -- tests/hardware/test_hw_container.py

Inside the guest (a real kernel, full root) podman loads the archive into a
throwaway store on tmpfs and runs the image as docs/fleet.md says, split like
the systemd unit and the Kubernetes DaemonSet: a privileged one-shot
`sysctl apply`, the daemon with --pid=host, a read-only root, only
CAP_SYS_PTRACE and CAP_SYS_NICE, no new privileges and the shipped seccomp
profile, then a privileged `sysctl restore`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from hardware.test_hw_daemon import workload

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = Path(os.environ.get("AUTONUMAD_IMAGE_ARCHIVE", REPO / "build/autonumad-image.oci.tar"))
IMAGE = "localhost/autonumad:latest"
PROFILE = REPO / "config/kubernetes/base/seccomp-autonumad.json"
PORT = 10117
CAP_SYS_PTRACE, CAP_SYS_NICE = 19, 23
# Logs to a file podman reads back: the guest has no journald.
RUN = ("run", "--log-driver=k8s-file")

pytestmark = [pytest.mark.topology("2node"),
              pytest.mark.skipif(not ARCHIVE.is_file(),
                                 reason=f"no image archive at {ARCHIVE} (on demand: scripts/build-image --output "
                                        "build/autonumad-image.oci.tar; tests/test_image.py writes it)")]


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.skip("podman not installed on the host (scripts/build-image installs it)")
    store = tmp_path_factory.mktemp("podman")
    # A store of its own on the guest's tmpfs: the host's store is on the read-only 9p root.
    base = ["podman", "--root", str(store / "root"), "--runroot", str(store / "run"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"podman {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    t0 = time.monotonic()
    run("load", "--quiet", "-i", str(ARCHIVE))
    print(f"podman load: {time.monotonic() - t0:.1f} s")
    yield run
    run("rm", "--force", "--all", check=False)


@pytest.fixture
def cfg(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = tmp_path / "autonumad.toml"
    path.write_text(f"""
[daemon]
interval_s = 1.0
[balance]
min_rss_bytes = "16MiB"
cooldown_s = 2.0
[kernel]
numa_balancing = "off"
[metrics]
listen = "127.0.0.1:{PORT}"
""")
    return path, run_dir


def knob() -> str:
    return Path("/proc/sys/kernel/numa_balancing").read_text().strip()


def mounts(cfg_path: Path, run_dir: Path) -> list[str]:
    return ["-v", f"{cfg_path}:/etc/autonumad/autonumad.toml:ro", "-v", f"{run_dir}:/run/autonumad"]


def test_container_starts_serves_metrics_balances_and_exits_0_on_sigterm(podman, cfg):
    cfg_path, run_dir = cfg
    Path("/proc/sys/kernel/numa_balancing").write_text("2")  # kernel balancing not scanning, != the config's 0
    original = knob()
    w = workload("--mib", "64", "--node", "1", "--cpunode", "0", "--threads", "2")
    try:
        assert w.local_fraction(0) < 0.05
        # 1. The privileged step, as ExecStartPre=+ / the kernel-knobs sidecar.
        podman(*RUN, "--rm", "--privileged", "--network=none", *mounts(cfg_path, run_dir), IMAGE, "sysctl", "apply")
        assert knob() == "0"

        # 2. The daemon, narrow.
        t0 = time.monotonic()
        podman(*RUN, "-d", "--name", "autonumad", "--pid=host", "--network=host", "--read-only",
               "--cap-drop=all", "--cap-add=SYS_PTRACE,SYS_NICE", "--security-opt", "no-new-privileges",
               "--security-opt", f"seccomp={PROFILE}", "--tmpfs", "/tmp", *mounts(cfg_path, run_dir),
               IMAGE, "run", "--kernel-knobs=external")

        def logs() -> str:
            r = podman("logs", "autonumad", check=False)
            return r.stdout + r.stderr

        def running() -> bool:
            return podman("inspect", "--format", "{{.State.Running}}", "autonumad").stdout.strip() == "true"

        while w.local_fraction(0) < 0.95:
            assert running(), logs()
            assert time.monotonic() - t0 < 240, logs()
            time.sleep(0.5)
        converged_s = time.monotonic() - t0

        # What it holds: exactly two capabilities, no new privileges, a seccomp filter.
        pid = podman("inspect", "--format", "{{.State.Pid}}", "autonumad").stdout.strip()
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
        want = (1 << CAP_SYS_PTRACE) | (1 << CAP_SYS_NICE)
        assert int(status["CapEff"], 16) == want and int(status["CapBnd"], 16) == want, status
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/1/ns/pid") == "pid:[4026531836]"

        # Metrics, as Prometheus would fetch them.
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as r:
            text = r.read()
        assert b"autonumad_passes_total" in text and b"autonumad_remote_memory_bytes" in text
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
            assert check.returncode == 0, (check.stdout + check.stderr).decode()
        else:
            print("promtool not installed: exposition not checked")

        # 3. Stop: SIGTERM (podman stop's signal, the image's StopSignal) and exit status 0.
        podman("stop", "--time", "30", "autonumad", timeout=60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", "autonumad").stdout.strip()
        assert code == "0", logs()
        text_log = logs()
        assert f"migrate pid {w.pid}" in text_log, text_log
        assert knob() == "0"  # the daemon does not restore: the privileged step does

        # 4. The privileged restore, as ExecStopPost=+ / the sidecar at stop.
        podman(*RUN, "--rm", "--privileged", "--network=none", *mounts(cfg_path, run_dir), IMAGE, "sysctl",
               "restore")
        assert knob() == original
        image_mib = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout) / 2**20
        print(f"container converged to 95% local in {converged_s:.1f} s (including container start); "
              f"image {image_mib:.0f} MiB; CapEff {status['CapEff']}")
    finally:
        w.stop()
        Path("/proc/sys/kernel/numa_balancing").write_text(original)


def test_without_the_host_pid_namespace_it_says_so_and_exits(podman, cfg):
    cfg_path, run_dir = cfg
    r = podman(*RUN, "--rm", "--network=none", "--read-only", "--cap-drop=all", "--cap-add=SYS_PTRACE,SYS_NICE",
               *mounts(cfg_path, run_dir), IMAGE, "run", "--once", "--kernel-knobs=external", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot see the host's processes" in r.stderr and "--pid=host" in r.stderr, r.stderr


PROBE = """
import ctypes, os
from autonumad.act.syscalls import page_nodes
buf = ctypes.create_string_buffer(3 * 4096)
page = (ctypes.addressof(buf) + 4095) // 4096 * 4096
try:
    print("nodes", page_nodes(os.getpid(), [page]))
except Exception as e:
    print("refused", type(e).__name__, e)
"""


def test_runtime_default_seccomp_refuses_move_pages_and_the_shipped_profile_allows_it(podman):
    """Why the DaemonSet ships a Localhost profile: podman's default (containers-common) denies move_pages."""
    common = ["--rm", "--network=none", "--read-only", "--cap-drop=all", "--cap-add=SYS_PTRACE,SYS_NICE",
              "--entrypoint", "/usr/bin/python3"]
    default = podman(*RUN, *common, IMAGE, "-I", "-c", PROBE).stdout
    shipped = podman(*RUN, *common, "--security-opt", f"seccomp={PROFILE}", IMAGE, "-I", "-c", PROBE).stdout
    print(f"default profile: {default.strip()}; shipped profile: {shipped.strip()}")
    assert default.startswith("refused"), default
    assert shipped.startswith("nodes [0]") or shipped.startswith("nodes [1]"), shipped
