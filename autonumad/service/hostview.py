"""Can this process see the host's processes? (A container without the host PID namespace cannot.)

In a container with its own PID namespace, /proc lists only the container's
processes: the daemon would start, find nothing to balance, and report a
healthy local fraction of its own few megabytes. So `autonumad run` checks
first and refuses with one line saying what to change.

The test is the namespace's inode number: the kernel gives the initial PID
namespace the fixed inode PROC_PID_INIT_INO (0xEFFFFFFC, include/linux/proc_ns.h),
so `readlink /proc/self/ns/pid` is "pid:[4026531836]" exactly in the host's
namespace (podman run --pid=host, Kubernetes hostPID: true, or no container).
A host that is itself a container (kind, systemd-nspawn) has another inode
although its /proc is the "host" for its workloads: --allow-pid-namespace
is for that case.
"""

from __future__ import annotations

import os
import re

from autonumad.errors import AutonumadError

PROC_PID_INIT_INO = 0xEFFFFFFC


def pid_namespace_inode(proc: str = "/proc") -> int | None:
    """The inode of the PID namespace /proc belongs to, or None if it cannot be read."""
    try:
        link = os.readlink(os.path.join(proc, "self/ns/pid"))
    except OSError:
        return None
    m = re.fullmatch(r"pid:\[(\d+)\]", link)
    return int(m.group(1)) if m else None


def visible_processes(proc: str = "/proc") -> int:
    return sum(1 for name in os.listdir(proc) if name.isdigit())


def check_host_pid_namespace(proc: str = "/proc") -> None:
    """Raise AutonumadError (one line) when /proc is not the initial PID namespace's."""
    inode = pid_namespace_inode(proc)
    if inode is None or inode == PROC_PID_INIT_INO:
        return  # the host's namespace, or a kernel without ns links: nothing to say
    raise AutonumadError(
        f"cannot see the host's processes: this PID namespace (pid:[{inode}]) is not the host's, and /proc "
        f"lists only its {visible_processes(proc)} processes; run the container in the host PID namespace "
        "(podman run --pid=host, Kubernetes hostPID: true), or pass --allow-pid-namespace if this namespace "
        "is the host you mean to balance")
