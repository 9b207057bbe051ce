"""What every part of numa-vm shares: exit statuses, the one-line error, logging."""

import subprocess
import sys

PROG = "numa-vm"

# Exit statuses of numa-vm itself (anything else is COMMAND's own status).
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_VM_FAILURE = 125
EXIT_INTERRUPTED = 130


class VMError(Exception):
    """Setup or boot failure: one line, exit status 125."""


def log(msg):
    sys.stderr.write(f"{PROG}: {msg}\n")
    sys.stderr.flush()


def one_line(text):
    return " ".join(str(text).split())


def run_quiet(cmd, what, cwd=None, env=None):
    """Run a setup command; raise VMError with its last output line on failure."""
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        raise VMError(f"{what}: {e}")
    if p.returncode != 0:
        lines = [l for l in p.stdout.decode(errors="replace").splitlines() if l.strip()]
        tail = lines[-1] if lines else f"exit status {p.returncode}"
        raise VMError(f"{what} failed: {one_line(tail)}")
    return p.stdout.decode(errors="replace")
