"""The daemon's guarantees that are not the policy's: one object the loop calls at fixed points.

`Safety` gathers what issue 10 adds around the loop, so the loop
(service/daemon.py) carries one call per point instead of the machinery:

* `start()`: the pins a crashed run left are undone (act/pins.py);
* `pass_seen(snapshot)`: a pass that left every process out for one reason
  warns (observe/skips.py); pins of processes gone or replaced are pruned;
* `outcome(o)`: a pin set or undone is recorded on disk;
* `state_doc()`: what state.json adds: the daemon's own start time and boot
  (`reload` signals the pid only if they match: service/runtime.py), the
  skip summary;
* `write_state(doc)`: state.json written without following symlinks;
* `stop()`: a clean stop removes state.json and the pins file.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from autonumad.act.pins import PinLedger
from autonumad.errors import AutonumadError
from autonumad.observe.skips import SkipWatch
from autonumad.service import runtime

log = logging.getLogger("autonumad")


def own_start_ticks() -> int | None:
    """This process's start time (proc(5) /proc/self/stat field 22)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class Safety:
    def __init__(self, host, config):
        self.host = host
        self.dir = runtime.runtime_dir_for(config, host)
        self.skips = SkipWatch()
        self.pins = PinLedger(host, self.dir)

    def start(self, dry_run: bool = False) -> None:
        if dry_run:
            # A dry run changes nothing, not even to undo a crashed run's pins:
            # their file stays for the next real start.
            self.pins.keep_on_close = True
            return
        self.pins.recover()

    def pass_seen(self, snapshot) -> None:
        self.skips.observe(snapshot)
        self.pins.prune()

    def outcome(self, o) -> None:
        self.pins.outcome(o)

    def state_doc(self) -> dict[str, Any]:
        return {"start_ticks": own_start_ticks(), "boot_id": runtime.boot_id(), "skipped": self.skips.doc()}

    def write_state(self, doc: dict[str, Any]) -> None:
        try:
            runtime.write_file(self.dir, runtime.STATE_FILE_NAME,
                               (json.dumps({**doc, **self.state_doc()}, indent=1) + "\n").encode())
        except (OSError, AutonumadError) as e:
            log.debug("state.json not written: %s", e)

    def stop(self) -> None:
        if not self.pins.keep_on_close:
            self.pins.close()
        runtime.remove_file(self.dir, runtime.STATE_FILE_NAME)
