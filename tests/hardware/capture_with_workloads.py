"""Capture a host tree from a real multi-node kernel, with workloads worth reading.

Run inside a numa-vm guest (scripts/capture-vm-hosts does it for each
topology). Starts three small workloads whose placement the unit tests
exercise, then runs scripts/capture-host with their pids:

  - misplaced: 16 MiB first-touched on the last memory node, pinned to node 0's CPUs, 2 extra threads;
  - interleaved: 8 MiB under `numactl --interleave=all`;
  - local: 8 MiB on node 0, running on node 0.

    python tests/hardware/capture_with_workloads.py OUTDIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = REPO / "tests" / "hardware" / "workload.py"


def main(out: str) -> int:
    nodes = sorted(int(p.name[4:]) for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    has_cpu = [n for n in nodes if Path(f"/sys/devices/system/node/node{n}/cpulist").read_text().strip()]
    far = nodes[-1]
    specs = [
        [sys.executable, str(WORKLOAD), "--mib", "16", "--node", str(far), "--cpunode", str(has_cpu[0]),
         "--threads", "2", "--touch-interval-s", "1"],
        ["numactl", "--interleave=all", sys.executable, str(WORKLOAD), "--mib", "8", "--touch-interval-s", "1"],
        [sys.executable, str(WORKLOAD), "--mib", "8", "--node", str(has_cpu[0]), "--cpunode", str(has_cpu[0]),
         "--touch-interval-s", "1"],
    ]
    # The kernel's own balancing would start moving the misplaced one.
    knob = Path("/proc/sys/kernel/numa_balancing")
    mode = knob.read_text()
    knob.write_text("0")
    procs = []
    try:
        for argv in specs:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append((p, json.loads(p.stdout.readline())))
        knob.write_text(mode)  # capture the kernel's default knob value
        pids = ",".join(str(info["pid"]) for _, info in procs)
        subprocess.run([sys.executable, str(REPO / "scripts" / "capture-host"), out, "--force", "--pids", pids],
                       check=True)
    finally:
        knob.write_text(mode)
        for p, _ in procs:
            p.stdin.close()
            p.wait(20)
    (Path(out) / "CAPTURED.json").write_text(json.dumps({
        "topology": __import__("os").environ.get("AUTONUMAD_VM_TOPOLOGY"),
        "kernel": Path("/proc/sys/kernel/osrelease").read_text().strip(),
        "workloads": [{"name": name, "pid": info["pid"], "address": info["address"],
                       "size_bytes": info["size_bytes"]}
                      for name, (_, info) in zip(("misplaced", "interleaved", "local"), procs)],
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
