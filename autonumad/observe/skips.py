"""Why processes were left out of a pass, and the loud case: all of them, for one reason.

A snapshot leaves out a process whose files it cannot read (`Skipped`).
One at a time that is routine (a process exits, one file is odd). When
*every* candidate of a pass is left out for the same reason, the daemon is
balancing nothing, and the cause is on the host, not in the processes: a
file layout this daemon does not understand, missing privileges
(CAP_SYS_PTRACE for numa_maps), a kernel without an interface. That is
logged once as a warning (again only when the reason changes), shown by
`status`, written to state.json and counted in
`autonumad_processes_skipped_total{reason,file}` (issue 10: "0 processes
balanced: ..." rather than nothing).

A reason is the skip's kind (gone, denied, malformed, error) and the
per-process file it concerns (numa_maps, status, stat, task, cgroup, ...);
both come from small fixed sets, so they can be metric labels.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

log = logging.getLogger("autonumad")

# The files a snapshot reads per process (observe/snapshot.py) plus "task"
# (the thread directory); anything else is "other", so the label set stays fixed.
SKIP_FILES = ("status", "statm", "stat", "task", "numa_maps", "cgroup", "maps", "other")
_FILE = re.compile(r"/proc/\d+/(?:task/\d+/)?([a-z_]+)")


def skip_file(message: str) -> str:
    """The per-process file a skip message names ("numa_maps"), or "other"."""
    m = _FILE.search(message)
    if m is None:
        return "other"
    name = m.group(1)
    return name if name in SKIP_FILES else "other"


def skip_reason(kind: str, message: str) -> str:
    """"malformed numa_maps": the kind of a skip and the file it concerns."""
    return f"{kind} {skip_file(message)}"


@dataclass(frozen=True, slots=True)
class SkipSummary:
    """Skips of one snapshot, by reason.

    `candidates` are the processes read in detail (balanced or skipped);
    `sole_reason` is set when there was at least one candidate and every one
    was skipped for that same reason.
    """

    candidates: int
    skipped: int
    by_reason: Mapping[str, int] = field(default_factory=dict)
    sole_reason: str | None = None
    example: str | None = None  # one message of the sole reason, for the log line

    def as_json(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "skipped": self.skipped, "by_reason": dict(self.by_reason),
                "all_skipped_reason": self.sole_reason, "example": self.example}

    def headline(self) -> str | None:
        """The operator's one line when nothing was balanced, else None."""
        if self.sole_reason is None:
            return None
        return (f"0 of {self.candidates} processes balanced: every one was left out ({self.sole_reason}), "
                f"e.g. {self.example}")


def summarize_skips(snapshot) -> SkipSummary:
    """Count a snapshot's skips by reason; see SkipSummary."""
    by_reason: dict[str, int] = {}
    examples: dict[str, str] = {}
    for s in snapshot.skipped:
        r = skip_reason(s.kind, s.message)
        by_reason[r] = by_reason.get(r, 0) + 1
        examples.setdefault(r, s.message)
    skipped = len(snapshot.skipped)
    candidates = skipped + len(snapshot.processes)
    sole = next(iter(by_reason)) if len(by_reason) == 1 and skipped == candidates else None
    return SkipSummary(candidates, skipped, by_reason, sole, examples.get(sole) if sole else None)


class SkipWatch:
    """The daemon's view over passes: warn once per change of the all-skipped reason."""

    def __init__(self) -> None:
        self.last: SkipSummary | None = None
        self._warned: str | None = None

    def observe(self, snapshot) -> SkipSummary:
        summary = summarize_skips(snapshot)
        if summary.sole_reason != self._warned:
            if summary.sole_reason is not None:
                log.warning("%s", summary.headline())
            elif self._warned is not None:
                log.info("processes are being read again (the previous pass left every one out: %s)",
                         self._warned)
            self._warned = summary.sole_reason
        self.last = summary
        return summary

    def doc(self) -> dict[str, Any] | None:
        """For state.json (read by `status`)."""
        return self.last.as_json() if self.last is not None else None
