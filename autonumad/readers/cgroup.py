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

An empty file is not malformed: the kernel prints one line per *mounted*
hierarchy (`proc_cgroup_show` walks the hierarchies in use, and the v2
`0::` line appears only once cgroup2 has been mounted, `cgrp_dfl_visible`).
On a host whose init never mounted any cgroup file system (busybox init,
minimal VMs, some embedded systems) every process's file is empty and every
process is in the root cgroup: "/".

The cgroup is an optional attribute of a process: it names the process in
views and matches `exclude_cgroup`/`include_cgroup`, but balancing does not
need it. `read_cgroup_or_unknown` therefore never hides a process: a file
that does not parse gives UNKNOWN_CGROUP, which matches no exclude prefix
and no include prefix except "/" (a catch-all), and the reason is returned
for the caller to report.
"""

from __future__ import annotations

from autonumad.readers import read_proc_file
from autonumad.errors import AccessDenied, MalformedProcFile, ParseError

# The root cgroup: what an empty /proc/<pid>/cgroup means (see the module doc).
ROOT_CGROUP = "/"
# Shown (and matched) when the file cannot be read or parsed. Not a path, so
# no cgroup prefix in the config matches it by accident.
UNKNOWN_CGROUP = "(unknown)"


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
    return ROOT_CGROUP  # no hierarchy mounted: every process is in the root cgroup


def read_cgroup(host, pid: int) -> str:
    """Read /proc/<pid>/cgroup; raises ProcessGone / AccessDenied / MalformedProcFile."""
    return read_proc_file(host, pid, "cgroup", parse_cgroup)


def read_cgroup_or_unknown(host, pid: int) -> tuple[str, str | None]:
    """(cgroup path, None), or (UNKNOWN_CGROUP, why) when the file is unreadable or malformed.

    Raises ProcessGone only: a process that exited is gone for every
    attribute, but an unreadable cgroup alone must not hide a live process
    from balancing (issue 10).
    """
    try:
        return read_cgroup(host, pid), None
    except (MalformedProcFile, AccessDenied) as e:
        return UNKNOWN_CGROUP, str(e)
