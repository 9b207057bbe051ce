"""scripts/capture-host on the real kernel produces the trees the unit tests use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from autonumad.cli import open_host
from autonumad.host import LinuxHost
from autonumad.readers.knobs import read_knobs
from autonumad.readers.nodes import read_topology

REPO = Path(__file__).resolve().parents[2]
HOSTS = REPO / "tests" / "data" / "hosts"


def shape(root: Path) -> set[str]:
    """Relative file paths with pids and tids replaced: what a capture contains."""
    out = set()
    for p in root.rglob("*"):
        if p.is_file() and p.name != "CAPTURED.json":
            out.add(re.sub(r"^proc/\d+/(task/\d+/)?", lambda m: "proc/PID/" + ("task/TID/" if m.group(1) else ""),
                           str(p.relative_to(root))))
    return out


def test_capture_matches_the_live_kernel_and_the_committed_tree(tmp_path, vm_topology):
    out = tmp_path / "capture"
    subprocess.run([sys.executable, str(REPO / "tests/hardware/capture_with_workloads.py"), str(out)], check=True,
                   cwd=REPO, timeout=600)
    live, fake = read_topology(LinuxHost()), read_topology(open_host(out))
    assert [(n.id, n.cpus, dict(n.distances), n.memory_total_bytes) for n in fake.nodes] == \
           [(n.id, n.cpus, dict(n.distances), n.memory_total_bytes) for n in live.nodes]
    assert [(t.id, t.nodes) for t in fake.tiers] == [(t.id, t.nodes) for t in live.tiers]
    assert read_knobs(open_host(out)).as_json() == read_knobs(LinuxHost()).as_json()
    committed = HOSTS / f"vm-{vm_topology}"
    if committed.is_dir():
        # Same kinds of files as the tree the unit tests read (scripts/capture-vm-hosts made it).
        assert shape(out) == shape(committed)
