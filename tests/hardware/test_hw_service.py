"""Running as a service on a real kernel (issue 5's "done when").

The config sets numa_balancing = "off": the daemon holds the knob at 0 while
it runs; after a SIGKILL the knob stays 0 until the next start, which finds
the saved originals and restores them (then applies the config again); a
reload with an invalid file is rejected and the daemon runs on with the old
config; SIGTERM restores the original.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardware.workload import start_daemon, write_config

REPO = Path(__file__).resolve().parents[2]
AUTONUMAD = [sys.executable, "-m", "autonumad"]
KNOB = Path("/proc/sys/kernel/numa_balancing")

pytestmark = pytest.mark.topology("2node")


@pytest.fixture
def original_mode():
    before = KNOB.read_text()
    KNOB.write_text("1")
    yield "1"
    KNOB.write_text(before)


def test_knob_held_restored_after_sigkill_and_sigterm_and_bad_reload_kept(tmp_path, original_mode):
    good = (f'[daemon]\ninterval_s = 1.0\nruntime_dir = "{tmp_path}/run"\n'
            '[kernel]\nnuma_balancing = "off"\n[metrics]\nlisten = ""\n')
    cfg = write_config(tmp_path / "autonumad.toml", good)
    log = tmp_path / "daemon.log"

    first = start_daemon(cfg, log)
    assert KNOB.read_text().strip() == "0"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # Killed: nothing restored the knob, but the originals are saved.
    assert KNOB.read_text().strip() == "0"
    saved = json.loads((tmp_path / "run" / "saved-knobs.json").read_text())
    assert saved["knobs"]["numa_balancing"]["value"] == 1

    second = start_daemon(cfg, log)
    try:
        text = log.read_text()
        assert "restored kernel knob numa_balancing to 1" in text, text
        assert KNOB.read_text().strip() == "0"  # and the config applied again

        write_config(cfg, "[balance]\ntarget_local_fraction = 2.0\nno_such_key = 1\n")
        r = subprocess.run([*AUTONUMAD, "reload", "--wait", "--timeout", "60",
                            "--runtime-dir", str(tmp_path / "run")],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "rejected" in r.stderr
        time.sleep(2)
        assert second.poll() is None  # still running
        assert KNOB.read_text().strip() == "0"  # on the old config
        state = json.loads((tmp_path / "run" / "state.json").read_text())
        assert state["last_reload"]["ok"] is False
        assert "target_local_fraction" in state["last_reload"]["error"]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    assert KNOB.read_text().strip() == original_mode
    assert not (tmp_path / "run" / "saved-knobs.json").exists()
