"""The kernel-knob keeper: the container form of the unit's ExecStartPre=+ / ExecStopPost=+ lines.

    python3 -m autonumad.service.knobkeeper [--config PATH]

Runs `autonumad sysctl apply`, then waits for SIGTERM (or SIGINT), then runs
`autonumad sysctl restore` and exits with restore's status. In Kubernetes it
is a privileged *sidecar* (an init container with restartPolicy: Always):
the kubelet starts it before the daemon and, on pod removal, stops it after
the daemon, so the knobs are set before the first pass and the originals are
back after the last, as with the systemd unit. The daemon itself runs with
--kernel-knobs=external and without CAP_SYS_ADMIN. A keeper killed without
a chance to restore (SIGKILL, node crash) leaves the originals saved under
the runtime directory (a hostPath), and the next apply keeps those.

It holds the privilege and does nothing with it between start and stop: it
sleeps in sigwait(2), so there is no loop to get wrong.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

AUTONUMAD = [sys.executable, "-I", "-m", "autonumad"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="knobkeeper", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="config file (as for autonumad sysctl)")
    args = parser.parse_args(argv)
    config = ["--config", args.config] if args.config else []
    # Block first: a SIGTERM arriving while apply runs is kept pending, not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    applied = subprocess.run([*AUTONUMAD, "sysctl", "apply", *config])
    if applied.returncode != 0:
        return applied.returncode  # nothing was written, or apply restored what it wrote
    print("knobkeeper: kernel knobs applied; restoring them on SIGTERM", file=sys.stderr, flush=True)
    got = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    print(f"knobkeeper: {signal.Signals(got).name}: restoring the kernel knobs", file=sys.stderr, flush=True)
    return subprocess.run([*AUTONUMAD, "sysctl", "restore", *config]).returncode


if __name__ == "__main__":
    sys.exit(main())
