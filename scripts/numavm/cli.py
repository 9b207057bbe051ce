"""numa-vm's command line: options, --help, and the exit status."""

import os
import signal
import subprocess
import sys

from .cache import DEFAULT_KERNEL, KERNELS
from .common import (EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_USAGE, EXIT_VM_FAILURE, PROG,
                     VMError, log, one_line)
from .guest import CGROUPS, INITS
from .run import Interrupted, on_signal, run_guest
from .topology import DEFAULT_TOPOLOGY, TOPOLOGIES, parse_mem

DEFAULT_TIMEOUT = 3600

HELP = """\
usage: scripts/numa-vm [OPTIONS] [--] COMMAND [ARG...]
       scripts/numa-vm --setup

Boot a fresh QEMU (TCG) guest with a real multi-node NUMA topology, run
COMMAND in it as root, power the guest off and exit with COMMAND's status.

The guest runs the host's own root filesystem (read-only over virtio-9p,
with a throwaway tmpfs overlay on top), so the host's Python and the
project's virtual environment work unchanged.  The project checkout
({checkout}) and the current directory are shared
read-write at the same paths: files written there appear on the host.
COMMAND runs in the current directory with stdin from /dev/null; its
stdout and stderr are streamed to numa-vm's stdout and stderr.  Kernel and
boot messages are kept out of them (see --verbose).

options:
  --topology NAME    guest topology (default: {default}); one of:
{topologies}
  --timeout SECONDS  wall-clock limit for the guest, boot included
                     (default: {timeout}; 0 = no limit)
  --memory SIZE      memory per NUMA node, e.g. 768M or 2G (default: per topology)
  --init INIT        busybox (default): COMMAND runs right after the mounts,
                     from a busybox shell as PID 1; systemd: the host's
                     systemd is PID 1 (journald, systemctl; units installed
                     in the guest can be started) and COMMAND runs as the
                     unit numa-vm-job.service once basic.target is reached
  --cgroup SETUP     v2 (default): cgroup2 mounted on /sys/fs/cgroup; none:
                     no hierarchy mounted, /proc/PID/cgroup is empty; v1:
                     the legacy cpuset, cpu,cpuacct and memory hierarchies
                     under /sys/fs/cgroup/ and no cgroup2 (needs a kernel
                     with v1 cpusets: --kernel 6.1). none and v1: busybox
                     init only
  --kernel SERIES    Debian kernel series: {kernels} (default: {default_kernel});
                     each is fetched and cached on first use
  -v, --verbose      show setup progress, the QEMU command line, the guest's
                     console and timings on stderr
  --setup            only install/check everything needed (no guest); exit
                     0 when ready, {vmfail} with a one-line reason otherwise
  -h, --help         show this help

environment:
  COMMAND gets AUTONUMAD_VM_TOPOLOGY=<name>, AUTONUMAD_VM_NODE_MEMORY_MIB=<MiB
  per node>, AUTONUMAD_VM_INIT, AUTONUMAD_VM_CGROUP, AUTONUMAD_VM_KERNEL (the
  values of --init, --cgroup, --kernel) and these host variables:
  PATH HOME TERM LANG LANGUAGE LC_* TZ CI VIRTUAL_ENV NO_COLOR FORCE_COLOR
  PYTHON* PYTEST_* AUTONUMAD_*.
  AUTONUMAD_VM_CACHE      cache directory (default: /var/cache/autonumad/numa-vm)
  AUTONUMAD_VM_TCG_THREAD single (default: all vCPUs on one host thread) or multi
  AUTONUMAD_VM_KERNEL_PACKAGE
                          exact Debian kernel package to use on first setup of
                          the --kernel series (default: the newest
                          linux-image-6.12.N+deb12-amd64-unsigned, or for 6.1
                          linux-image-6.1.0-N-amd64-unsigned); it must be of
                          that series

first use:
  Installs qemu-system-x86 and numactl with apt-get if missing, downloads
  the kernel and busybox-static .debs with apt-get download, unpacks them
  into the cache and builds an initramfs there.  Later runs reuse the cache
  (delete it to pick up a newer kernel).

exit status:
  COMMAND's own exit status (0-255; 126/127 when it can't be run), or
  {timeout_rc}  the guest did not finish within --timeout (it is killed)
  {vmfail}  the VM could not be set up or booted, or the guest died before
       COMMAND finished (kernel panic, QEMU failure, ...)
  {interrupted}  interrupted (SIGINT/SIGTERM); the guest is killed
  2    usage error
  In the 124/125/130 cases numa-vm prints exactly one line on stderr.
"""


def find_checkout():
    # scripts/numavm/cli.py -> scripts/
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    try:
        p = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if p.returncode == 0 and p.stdout.strip():
            return os.path.realpath(p.stdout.strip())
    except OSError:
        pass
    return os.path.dirname(here)


def usage_error(msg):
    sys.stderr.write(f"{PROG}: {msg}\n(see scripts/numa-vm --help)\n")
    sys.exit(EXIT_USAGE)


# Options that take one of a fixed set of words: flag -> (opts key, choices, what the error calls it).
CHOICE_OPTIONS = {
    "--topology": ("topology", TOPOLOGIES, "topology"),
    "--init": ("init", INITS, "init"),
    "--cgroup": ("cgroup", CGROUPS, "cgroup setup"),
    "--kernel": ("kernel", KERNELS, "kernel"),
}


def parse_args(argv):
    opts = {"topology": DEFAULT_TOPOLOGY, "timeout": DEFAULT_TIMEOUT, "memory": None,
            "verbose": False, "setup_only": False, "command": [],
            "init": "busybox", "cgroup": "v2", "kernel": DEFAULT_KERNEL}
    i = 0

    def value(name):
        nonlocal i
        if "=" in argv[i]:
            return argv[i].split("=", 1)[1]
        i += 1
        if i >= len(argv):
            usage_error(f"{name} needs a value")
        return argv[i]

    while i < len(argv):
        a = argv[i]
        if a == "--":
            opts["command"] = argv[i + 1:]
            break
        if not a.startswith("-") or a == "-":
            opts["command"] = argv[i:]
            break
        if a in ("-h", "--help"):
            topo_lines = "\n".join(f"                       {t.name:7} {t.summary}"
                                   for t in TOPOLOGIES.values())
            sys.stdout.write(HELP.format(
                checkout=find_checkout(), default=DEFAULT_TOPOLOGY, topologies=topo_lines,
                timeout=DEFAULT_TIMEOUT, vmfail=EXIT_VM_FAILURE, timeout_rc=EXIT_TIMEOUT,
                interrupted=EXIT_INTERRUPTED, kernels=", ".join(KERNELS),
                default_kernel=DEFAULT_KERNEL))
            sys.exit(0)
        elif a in ("-v", "--verbose"):
            opts["verbose"] = True
        elif a == "--setup":
            opts["setup_only"] = True
        elif a.split("=", 1)[0] in CHOICE_OPTIONS:
            flag = a.split("=", 1)[0]
            key, choices, what = CHOICE_OPTIONS[flag]
            t = value(flag)
            if t not in choices:
                usage_error(f"unknown {what} {t!r} (choose from {', '.join(choices)})")
            opts[key] = t
        elif a == "--timeout" or a.startswith("--timeout="):
            t = value("--timeout")
            try:
                opts["timeout"] = float(t)
                if opts["timeout"] < 0:
                    raise ValueError
            except ValueError:
                usage_error(f"--timeout wants a number of seconds, not {t!r}")
        elif a == "--memory" or a.startswith("--memory="):
            t = value("--memory")
            try:
                opts["memory"] = parse_mem(t)
            except ValueError:
                usage_error(f"--memory wants a size like 768M or 2G (at least 128M), not {t!r}")
        else:
            usage_error(f"unknown option {a}")
        i += 1
    if not opts["command"] and not opts["setup_only"]:
        usage_error("no COMMAND given")
    if opts["init"] == "systemd" and opts["cgroup"] != "v2":
        usage_error(f"--init systemd mounts its own cgroup2 hierarchy; --cgroup {opts['cgroup']}"
                    " is for the busybox init")
    return opts


def main(argv):
    opts = parse_args(argv)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        return run_guest(opts, find_checkout())
    except VMError as e:
        log(one_line(e))
        return EXIT_VM_FAILURE
    except Interrupted as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log(f"interrupted by {signal.Signals(e.signum).name}; guest killed")
        return EXIT_INTERRUPTED


def flush_or_forget():
    # A reader that went away (e.g. `| head`) must not turn into a traceback.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):
                pass
