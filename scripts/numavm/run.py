"""Booting a guest: the QEMU command line, the run directory, the watch loop.

run_guest() makes a run directory (the control share), writes the guest's
scripts there (guest.control_files), starts QEMU, streams COMMAND's stdout
and stderr from the share while it runs, and returns COMMAND's status or
raises VMError with one line saying why there is none.
"""

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .cache import Cache, default_cache_dir
from .common import EXIT_TIMEOUT, VMError, log, one_line
from .guest import control_files, kernel_cmdline, qemu_path_opt, writable_shares
from .topology import TOPOLOGIES

# One host thread runs all vCPUs in turn.  With thread=multi a guest once
# died at boot of an int3 Oops in freshly patched kernel text (a static key
# flipped while the other vCPU ran a stale translation), and on a busy
# 2-core host single is faster too; see docs/numa-vm.md.
DEFAULT_TCG_THREAD = "single"
# After the guest wrote its status, how long it may take to power off.
POWEROFF_GRACE_S = 15


def tcg_thread():
    mode = os.environ.get("AUTONUMAD_VM_TCG_THREAD", DEFAULT_TCG_THREAD)
    if mode not in ("single", "multi"):
        raise VMError(f"AUTONUMAD_VM_TCG_THREAD must be single or multi, not {mode!r}")
    return mode


def set_pdeathsig():
    # Kill QEMU if numa-vm itself dies, whatever the way.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except Exception:
        pass


class Tail:
    """Forward bytes appended to a file to an output stream."""

    def __init__(self, path, out):
        self.path = path
        self.out = out
        self.f = None
        self.broken = False

    def pump(self):
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except FileNotFoundError:
                return 0
        n = 0
        while True:
            chunk = self.f.read(65536)
            if not chunk:
                break
            n += len(chunk)
            if self.broken:
                continue
            try:
                self.out.write(chunk)
                self.out.flush()
            except BrokenPipeError:
                self.broken = True
        return n

    def close(self):
        if self.f:
            self.f.close()


class Interrupted(Exception):
    def __init__(self, signum):
        self.signum = signum


def on_signal(signum, frame):
    raise Interrupted(signum)


def console_reason(console_path):
    try:
        with open(console_path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "NUMA-VM-ERROR:" in line:
            return line.split("NUMA-VM-ERROR:", 1)[1].strip()
    for line in text.splitlines():
        if "Kernel panic" in line:
            return one_line(line[line.index("Kernel panic"):])
    return None


def qemu_command(qemu, topo, mem_mib, vmlinuz, initrd, append, console, io, shares, thread):
    """QEMU's argv for one guest (pure)."""
    args = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-accel", f"tcg,thread={thread}", "-cpu", "max",
            ] + topo.qemu_args(mem_mib) + [
            "-kernel", vmlinuz,
            "-initrd", initrd,
            "-append", append,
            "-chardev", f"file,id=con,path={qemu_path_opt(console)}",
            "-serial", "chardev:con",
            "-monitor", "none", "-no-reboot", "-nic", "none",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                       "readonly=on,multidevs=remap",
            "-virtfs", f"local,path={qemu_path_opt(io)},mount_tag=nvio,"
                       "security_model=none,multidevs=remap"]
    for i, path in enumerate(shares):
        args += ["-virtfs", f"local,path={qemu_path_opt(path)},mount_tag=nvrw{i},"
                            "security_model=none,multidevs=remap"]
    return args


def run_guest(opts, checkout):
    topo = TOPOLOGIES[opts["topology"]]
    verbose = opts["verbose"]
    cache = Cache(default_cache_dir(), verbose, opts["kernel"], opts["init"] == "systemd")
    state, initrd = cache.ensure()
    if opts["setup_only"]:
        if verbose:
            log(f"ready: kernel {state['kernel_package']} {state['kernel_package_version']},"
                f" cache {cache.path}")
        return 0
    qemu = shutil.which("qemu-system-x86_64")

    cwd = os.path.realpath(os.getcwd())
    if "\n" in cwd or "\n" in checkout:
        raise VMError("paths with newlines are not supported")
    shares = writable_shares(checkout, cwd)
    mem = opts["memory"] or topo.mem_per_node

    remove_stale_run_dirs()
    io = tempfile.mkdtemp(prefix=f"numa-vm.{os.getpid()}.")
    proc = None
    try:
        for name, text in control_files(opts, shares, cwd, topo.name, mem).items():
            with open(os.path.join(io, name), "w") as f:
                f.write(text)
        for fn in ("stdout", "stderr", "console.log"):
            open(os.path.join(io, fn), "wb").close()
        console = os.path.join(io, "console.log")
        args = qemu_command(qemu, topo, mem, os.path.join(cache.path, state["vmlinuz"]), initrd,
                            kernel_cmdline(opts, topo.name, verbose), console, io, shares,
                            tcg_thread())
        if verbose:
            log("kernel " + state["kernel_package"] + " " + state["kernel_package_version"])
            log("shares (read-write): " + " ".join(shares))
            log("qemu: " + " ".join(shlex.quote(a) for a in args))

        qemu_err = open(os.path.join(io, "qemu.stderr"), "wb")
        t_start = time.monotonic()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=qemu_err,
                                stderr=qemu_err, preexec_fn=set_pdeathsig)
        qemu_err.close()
        outcome, t_cmd = watch(proc, io, opts["timeout"], t_start, verbose)
        if outcome == "timeout":
            log(f"timeout: guest ({topo.name}) still running after {opts['timeout']:g} s;"
                " killed it")
            return EXIT_TIMEOUT
        t_end = time.monotonic()
        status = read_status(os.path.join(io, "status"))
        if status is not None:
            if verbose:
                ran = f", command {t_end - t_cmd:.2f} s" if t_cmd else ""
                log(f"guest finished in {t_end - t_start:.2f} s{ran}; exit status {status}")
            return status
        what = ("guest died while running the command" if t_cmd is not None
                else "guest failed to boot")
        reason = failure_reason(io) or f"QEMU exited with status {proc.returncode}"
        saved = save_failure_logs(io, cache.path)
        keep = f" (console log: {saved})" if saved else ""
        raise VMError(f"{what} ({topo.name}): {reason}{keep}")
    finally:
        if proc is not None:
            kill(proc)
        shutil.rmtree(io, ignore_errors=True)


def watch(proc, io, timeout, t_start, verbose):
    """Stream the guest's output until QEMU exits, or the timeout.

    Returns ("done" or "timeout", the time the command started or None).
    QEMU is dead (killed if need be) and the output copied when it returns.
    """
    out = Tail(os.path.join(io, "stdout"), sys.stdout.buffer)
    err = Tail(os.path.join(io, "stderr"), sys.stderr.buffer)
    con = Tail(os.path.join(io, "console.log"), sys.stderr.buffer) if verbose else None
    status_path = os.path.join(io, "status")
    started_path = os.path.join(io, "started")
    deadline = t_start + timeout if timeout else None
    t_cmd = None
    status_seen = None
    delay = 0.02
    outcome = "done"
    try:
        while True:
            moved = out.pump() + err.pump()
            if con:
                con.pump()
            if t_cmd is None and os.path.exists(started_path):
                t_cmd = time.monotonic()
                if verbose:
                    log(f"guest booted, command started after {t_cmd - t_start:.2f} s")
            if status_seen is None and os.path.exists(status_path):
                status_seen = time.monotonic()
            if proc.poll() is not None:
                break
            now = time.monotonic()
            if status_seen is not None and now - status_seen > POWEROFF_GRACE_S:
                break                   # powered off too slowly: kill it below
            if deadline is not None and now > deadline and status_seen is None:
                outcome = "timeout"
                break
            delay = 0.02 if moved else min(delay * 1.5, 0.1)
            time.sleep(delay)
        kill(proc)
        out.pump()
        err.pump()
        if con:
            con.pump()
    finally:
        out.close()
        err.close()
        if con:
            con.close()
    return outcome, t_cmd


def read_status(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def failure_reason(io):
    """One line on why the guest wrote no status, from what it left behind."""
    try:
        with open(os.path.join(io, "error")) as f:
            reason = one_line(f.read())
            if reason:
                return reason
    except OSError:
        pass
    reason = console_reason(os.path.join(io, "console.log"))
    if reason:
        return reason
    try:
        with open(os.path.join(io, "qemu.stderr"), "rb") as f:
            lines = [l for l in f.read().decode(errors="replace").splitlines()
                     if l.strip() and "warning" not in l.lower()]
    except OSError:
        return None
    if not lines:
        return None
    reason = one_line(lines[-1])
    return reason if reason.startswith("qemu") else "qemu: " + reason


def remove_stale_run_dirs():
    """Remove run directories left by a numa-vm that was SIGKILLed."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(r"numa-vm\.(\d+)\.\w+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def save_failure_logs(io, cache_dir):
    """Keep the console log of a failed boot for a look; return its path."""
    try:
        dest = os.path.join(cache_dir, "last-failure.log")
        with open(dest, "wb") as out:
            for fn in ("console.log", "qemu.stderr"):
                out.write(f"===== {fn} =====\n".encode())
                try:
                    with open(os.path.join(io, fn), "rb") as f:
                        out.write(f.read())
                except OSError:
                    pass
        return dest
    except OSError:
        return None


def kill(proc):
    if proc.poll() is not None:
        return
    proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
