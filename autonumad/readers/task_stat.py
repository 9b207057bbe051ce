"""Per-process and per-thread scheduler state: /proc/<pid>/stat and
/proc/<pid>/task/<tid>/stat.

Format (proc(5) "stat"; fs/proc/array.c `do_task_stat`): one line,

    <pid> (<comm>) <state> <ppid> <pgrp> <session> ... (52 fields on 6.x)

    3909 (cat) R 3903 3903 3016 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 19219 ...

`comm` is printed raw, unescaped: it can contain spaces, parentheses and
even newlines, so the line is split at the first "(" and the LAST ")"
(everything after comm is numbers and the one-letter state). Field numbers
below are proc(5)'s, 1-based:

    1 pid (the tid in task/<tid>/stat)   2 comm   3 state   4 ppid
    14 utime   15 stime (clock ticks, sysconf(_SC_CLK_TCK))
    20 num_threads   22 starttime (ticks after boot)   24 rss (pages)
    39 processor (the CPU the task last ran on)

Fields past 39 (added over the years) are ignored; fewer than 39 is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from autonumad.readers import read_proc_file
from autonumad.errors import MalformedProcFile, ParseError, ProcessGone

# Index into the fields after ")" of proc(5) field N: N - 3.
_LAST_FIELD = 39


@dataclass(frozen=True, slots=True)
class TaskStat:
    tid: int
    comm: str
    state: str
    ppid: int
    utime_ticks: int
    stime_ticks: int
    num_threads: int
    starttime_ticks: int
    processor: int  # CPU the task last ran on
    rss_pages: int = 0


def parse_stat(text: str) -> TaskStat:
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ParseError("no '(comm)' in stat")
    tid_s = text[:open_paren].strip()
    if not tid_s.isdecimal():
        raise ParseError(f"bad pid {tid_s[:30]!r}")
    comm = text[open_paren + 1:close_paren]
    rest = text[close_paren + 1:].split()
    if len(rest) < _LAST_FIELD - 2:
        raise ParseError(f"{len(rest) + 2} fields, expected at least {_LAST_FIELD}")
    state = rest[0]
    if len(state) != 1:
        raise ParseError(f"bad state {state[:10]!r}")
    # %d/%lu/%llu fields: anything wider than 64 bits is not from the kernel.
    for i in (4, 14, 15, 20, 22, 24, 39):
        if len(rest[i - 3]) > 21:
            raise ParseError(f"field {i}: value out of range {rest[i - 3][:30]!r}")
    try:
        return TaskStat(
            tid=int(tid_s),
            comm=comm,
            state=state,
            ppid=int(rest[4 - 3]),
            utime_ticks=int(rest[14 - 3]),
            stime_ticks=int(rest[15 - 3]),
            num_threads=int(rest[20 - 3]),
            starttime_ticks=int(rest[22 - 3]),
            processor=int(rest[39 - 3]),
            rss_pages=int(rest[24 - 3]),
        )
    except ValueError:
        raise ParseError("non-numeric field after comm") from None


def read_stat(host, pid: int) -> TaskStat:
    """Read /proc/<pid>/stat; raises ProcessGone / AccessDenied / MalformedProcFile."""
    return read_proc_file(host, pid, "stat", parse_stat)


def read_thread_stats(host, pid: int) -> dict[int, TaskStat]:
    """Stat of every thread of `pid`, keyed by tid.

    Threads exit all the time: one that vanishes between listing and
    reading is skipped. If the process itself is gone (listing fails, or a
    thread vanished and /proc/<pid>/stat is gone too) this raises
    ProcessGone, so an exited process never looks like one with no threads.
    """
    stats: dict[int, TaskStat] = {}
    checked_alive = False
    for tid in host.tids(pid):
        name = f"task/{tid}/stat"
        try:
            text = host.read_proc_text(pid, name)
        except ProcessGone:
            if not checked_alive:
                # Raises ProcessGone if the whole process has exited.
                host.read_proc_text(pid, "stat")
                checked_alive = True
            continue
        try:
            stats[tid] = parse_stat(text)
        except ParseError as e:
            raise MalformedProcFile(pid, f"/proc/{pid}/{name}", str(e)) from None
    if not stats:
        # Every thread vanished: only an exited process has none.
        raise ProcessGone(pid, f"/proc/{pid}/task")
    return stats
