"""Which cgroup a process belongs to: /proc/<pid>/cgroup.

Format (cgroups(7) "/proc/[pid]/cgroup"; kernel/cgroup/cgroup.c
`proc_cgroup_show`): one line per hierarchy,

    hierarchy-ID:controller-list:cgroup-path

    0::/system.slice/foo.service          (cgroup v2: ID 0, empty controller list)

    9:name=systemd:/user.slice            (v1, hybrid systemd layout)
    3:cpuset:/
    4:memory:/process_api/83610ccb
    0::/user.slice

The path is everything after the second colon (it may itself contain
colons; a removed cgroup ends in " (deleted)").

Which path we return: the v2 one if there is a `0::` line -- on a pure v2
host it is the only one, and on a hybrid host systemd keeps it identical to
its `name=systemd` path; else the v1 `cpuset` hierarchy's (the one that
decides which CPUs and nodes a process may use); else `name=systemd`; else
the first line's. Callers use it to name a process's service or container.
"""

from __future__ import annotations

from autonumad.readers import read_proc_file
from autonumad.errors import ParseError


def parse_cgroup(text: str) -> str:
    v2 = cpuset = systemd = first = None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdecimal():
            raise ParseError(f"line {lineno}: expected 'id:controllers:path', got {line[:60]!r}")
        hierarchy, controllers, path = parts
        if first is None:
            first = path
        if hierarchy == "0" and not controllers:
            v2 = path
        else:
            names = controllers.split(",")
            if cpuset is None and "cpuset" in names:
                cpuset = path
            if systemd is None and "name=systemd" in names:
                systemd = path
    for path in (v2, cpuset, systemd, first):
        if path is not None:
            return path
    raise ParseError("no cgroup lines")


def read_cgroup(host, pid: int) -> str:
    """Read /proc/<pid>/cgroup; raises ProcessGone / AccessDenied / MalformedProcFile."""
    return read_proc_file(host, pid, "cgroup", parse_cgroup)
