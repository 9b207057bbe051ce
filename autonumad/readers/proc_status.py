"""Identity, size and placement limits of a process: /proc/<pid>/status.

Format (proc(5) "status"; fs/proc/array.c `proc_pid_status`): one
`Key:<TAB>value` line per field.

    Name:	cat
    State:	R (running)
    Tgid:	3907
    Ngid:	0
    Pid:	3907
    PPid:	3903
    Uid:	0	0	0	0
    VmRSS:	    1764 kB
    RssAnon:	     112 kB
    Threads:	1
    Cpus_allowed_list:	0-1
    Mems_allowed_list:	0

- `Name` is the task's comm (at most 15 bytes for user tasks, longer for
  workqueue workers); the kernel escapes only newline and backslash in it
  (`proc_task_name(..., escape=true)`), as "\\n" and "\\\\", which we undo.
  It may contain spaces, tabs, colons and parentheses.
- `State` is a letter followed by a description; we keep the letter.
- `Uid` is real, effective, saved and filesystem uid.
- `VmRSS`/`RssAnon` exist only for tasks with an mm: kernel threads and
  zombies have none (None here). Sizes are printed in kB; we return bytes.
- `Cpus_allowed_list` and `Mems_allowed_list` use the kernel list syntax.
  `Mems_allowed_list` is printed only with CONFIG_CPUSETS; without it
  `mems_allowed` is the empty tuple (a real task always has at least one
  allowed node, so empty means "not reported").
- `Ngid` (NUMA group leader, 0 if none) appeared in v3.13; `Kthread` in v6.x.

Unknown lines are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from autonumad.readers import read_proc_file
from autonumad.errors import ParseError
from autonumad.readers.lists import parse_list

_WANTED = frozenset({
    "Name", "State", "Tgid", "Ngid", "Pid", "PPid", "Uid", "VmRSS", "RssAnon",
    "Threads", "Cpus_allowed_list", "Mems_allowed_list", "Kthread",
})


@dataclass(frozen=True, slots=True)
class ProcStatus:
    name: str
    tgid: int
    pid: int
    ppid: int
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    threads: int
    vm_rss_bytes: int | None  # None without an mm (kernel thread, zombie)
    cpus_allowed: tuple[int, ...]
    mems_allowed: tuple[int, ...]  # () when the kernel does not report it
    state: str  # one letter: R, S, D, T, t, X, Z, P, I
    rss_anon_bytes: int | None = None
    ngid: int | None = None  # NUMA group id (0: none); None on kernels before v3.13
    kthread: bool | None = None  # from `Kthread:` (v6.x); None when not printed


def _int(key: str, value: str) -> int:
    # The kernel prints these with %d/%lu: at most 20 digits and a sign. A
    # longer one is not from the kernel (and overflows the floats views compute).
    try:
        n = int(value)
    except ValueError:
        raise ParseError(f"{key}: bad value {value.strip()[:30]!r}") from None
    if not -2**63 <= n < 2**64:
        raise ParseError(f"{key}: value out of range {value.strip()[:30]!r}")
    return n


def _kib_bytes(key: str, value: str) -> int:
    number, _, unit = value.strip().partition(" ")
    if unit.strip() != "kB":
        raise ParseError(f"{key}: expected '<n> kB', got {value.strip()[:30]!r}")
    return _int(key, number) * 1024


def _unescape_name(name: str) -> str:
    # The kernel writes "\" as "\\" and newline as "\n"; undo in one pass so
    # that "\\n" (an escaped backslash followed by "n") stays "\n" literally.
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name) and name[i + 1] in "\\n":
            out.append("\n" if name[i + 1] == "n" else "\\")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_status(text: str) -> ProcStatus:
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if sep and key in _WANTED and key not in fields:
            fields[key] = value
    for key in ("Name", "State", "Tgid", "Pid", "PPid", "Uid", "Threads", "Cpus_allowed_list"):
        if key not in fields:
            raise ParseError(f"no {key} line")

    # Only the tab the kernel puts after the colon is removed: a comm can
    # start or end with spaces.
    name = fields["Name"].removeprefix("\t")
    if "\\" in name:
        name = _unescape_name(name)
    state = fields["State"].strip()[:1]
    if not state:
        raise ParseError("empty State")
    try:
        uids = tuple(int(u) for u in fields["Uid"].split())
    except ValueError:
        raise ParseError(f"Uid: bad value {fields['Uid'].strip()[:40]!r}") from None
    if not uids:
        raise ParseError("empty Uid")
    kthread = None
    if "Kthread" in fields:
        kthread = _int("Kthread", fields["Kthread"]) != 0
    return ProcStatus(
        name=name,
        tgid=_int("Tgid", fields["Tgid"]),
        pid=_int("Pid", fields["Pid"]),
        ppid=_int("PPid", fields["PPid"]),
        uids=uids,
        threads=_int("Threads", fields["Threads"]),
        vm_rss_bytes=_kib_bytes("VmRSS", fields["VmRSS"]) if "VmRSS" in fields else None,
        cpus_allowed=parse_list(fields["Cpus_allowed_list"]),
        mems_allowed=parse_list(fields["Mems_allowed_list"]) if "Mems_allowed_list" in fields else (),
        state=state,
        rss_anon_bytes=_kib_bytes("RssAnon", fields["RssAnon"]) if "RssAnon" in fields else None,
        ngid=_int("Ngid", fields["Ngid"]) if "Ngid" in fields else None,
        kthread=kthread,
    )


def read_status(host, pid: int) -> ProcStatus:
    """Read /proc/<pid>/status; raises ProcessGone / AccessDenied / MalformedProcFile."""
    return read_proc_file(host, pid, "status", parse_status)
