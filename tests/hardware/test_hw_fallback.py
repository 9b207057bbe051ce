"""Tiering without DAMON: the soft-dirty fallback drives the daemon, and `status` says which tracker runs.

Runs in the tiered guest with DAMON's sysfs hidden: an empty tmpfs mounted
over /sys/kernel/mm/damon, so the kernel looks like one built without
CONFIG_DAMON_SYSFS (Debian's 6.1 kernel, for one) to everything that looks.
The real daemon (`autonumad run`, tracker "auto") must fall back to
soft-dirty bits, promote the workload's written hot mapping from the slow
node to the node its task runs on, leave the cold mapping there, and
`autonumad status --json` must name the tracker and why.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autonumad.observe.damon import ADMIN_DIR
from hardware.tier_workload import TierWorkload
from hardware.workload import numa_balancing, start_daemon, write_config

pytestmark = [pytest.mark.hardware, pytest.mark.topology("tiered")]

REPO = Path(__file__).resolve().parents[2]
DAMON_DIR = Path(ADMIN_DIR).parent  # /sys/kernel/mm/damon
MIB = 1 << 20


@pytest.fixture
def damon_hidden():
    if not DAMON_DIR.is_dir():
        yield  # a kernel without DAMON: nothing to hide
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0555", "nodamon", str(DAMON_DIR)], check=True)
    try:
        assert not Path(ADMIN_DIR).exists()
        yield
    finally:
        subprocess.run(["umount", str(DAMON_DIR)], check=True)


def status(cfg: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "autonumad", "status", "--json", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_softdirty_fallback_promotes_and_status_names_it(tmp_path, spawn, damon_hidden):
    # Soft-dirty sees writes: the workload writes its hot mapping continuously and
    # never touches the cold one again (no TLB flushing needed, DAMON is not watching).
    w = spawn(TierWorkload, "--hot-mib", "32", "--cold-mib", "96", "--node", "2", "--cpunode", "0",
              "--flush-tlb-ms", "0")
    hot_pages, cold_pages = 32 * MIB // 4096, 96 * MIB // 4096
    assert w.nodes(w.hot).get(2, 0) == hot_pages and w.nodes(w.cold).get(2, 0) == cold_pages
    cfg = write_config(tmp_path / "autonumad.toml",
                       f'[daemon]\ninterval_s = 2.0\nruntime_dir = "{tmp_path}/run"\n'
                       '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n[tiering]\ntracker = "auto"\n')
    log = tmp_path / "daemon.log"
    with numa_balancing(0):
        daemon = start_daemon(cfg, log)
        try:
            t0 = time.monotonic()
            while w.nodes(w.hot).get(0, 0) < 0.99 * hot_pages:
                assert daemon.poll() is None, log.read_text()
                assert time.monotonic() - t0 < 120, log.read_text()
                time.sleep(1)
            print(f"hot mapping on node 0 after {time.monotonic() - t0:.1f} s")
            st = status(cfg)["tiering"]
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, log.read_text()
    assert st["from_daemon"] is True
    assert st["tracker"] == "softdirty (DAMON unavailable: no /sys/kernel/mm/damon/admin)", st
    cold = w.nodes(w.cold)
    assert cold.get(0, 0) + cold.get(1, 0) < 0.05 * cold_pages, cold
    assert "hotness tracker softdirty" in log.read_text()
