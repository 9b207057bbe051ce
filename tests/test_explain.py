"""`autonumad explain` and the daemon run the same planner with the same configuration.

For every process of the demo host and of both captured hosts, the rule explain prints is the rule
the daemon's pass gave it, with the daemon's own configuration, found through its state file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autonumad.cli import main, open_host
from autonumad.service.config import load_config
from autonumad.service.daemon import Daemon
from autonumad.sim.demo import build_demo_host

HOSTS = Path(__file__).parent / "data" / "hosts"


def explain(capsys, *argv: str) -> dict:
    assert main(["explain", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def host_tree(name: str, root: Path) -> None:
    if name == "demo":
        build_demo_host(root)
    else:
        shutil.copytree(HOSTS / name, root)


# The captured workloads are small: 1 MiB lets the daemon read them in detail. exclude_comm is what
# explain without the daemon's configuration gets wrong.
CONFIG = '''[daemon]
runtime_dir = "{run}"
[balance]
min_rss_bytes = "1MiB"
exclude_comm = ["^python3$", "^backup"]
[metrics]
listen = ""
'''


@pytest.mark.parametrize("passes, sample", [(1, "0"), (2, "0.01")], ids=["first-pass", "two-reads"])
@pytest.mark.parametrize("name", ["demo", "vm-2node", "vm-tiered"])
def test_explain_gives_the_daemons_rule_for_every_process(tmp_path, capsys, name, passes, sample):
    # One read (--sample-s 0) plans as the daemon's first pass; two reads as its later ones, where
    # CPU use between passes decides "idle" and which threads are busy.
    root, run = tmp_path / "root", tmp_path / "run"
    host_tree(name, root)
    cfg = tmp_path / "autonumad.toml"
    cfg.write_text(CONFIG.format(run=run))
    cfg.chmod(0o600)
    # Dry run: the tree explain reads afterwards is the one the daemon planned on.
    d = Daemon(open_host(root), load_config(cfg), config_path=str(cfg), dry_run=True, manage_knobs=False)
    for _ in range(passes):
        report = d.run_pass()
    verdicts = report.decision.verdicts
    assert len(verdicts) >= 3
    # The state file carries the same verdicts: the guest test compares explain against it.
    state = json.loads((run / "state.json").read_text())
    start = {p.pid: p.start_ticks for p in report.snapshot.processes}
    assert state["verdicts"] == {str(pid): {"comm": v.comm, "start_ticks": start[pid], "rule": v.rule,
                                            "reason": v.reason}
                                 for pid, v in verdicts.items()}
    for pid, v in verdicts.items():
        doc = explain(capsys, str(pid), "--root", str(root), "--runtime-dir", str(run), "--sample-s", sample)
        assert doc["config"] == {"path": str(cfg), "source": f"the running daemon (pid {json.loads((run / 'state.json').read_text())['pid']})"}
        assert (pid, doc["rule"], doc["reason"]) == (pid, v.rule, v.reason)
        assert doc["daemon_last_pass"] == {"pass": passes, "rule": v.rule, "reason": v.reason}
    d._shutdown()


def test_explain_without_the_daemons_config_says_which_it_used(tmp_path, capsys):
    root = tmp_path / "root"
    build_demo_host(root)
    doc = explain(capsys, "5001", "--root", str(root))
    assert doc["config"]["source"] in ("built-in defaults", "the default file")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[balance]\nexclude_comm = ["^backup"]\n')
    cfg.chmod(0o600)
    doc = explain(capsys, "5001", "--root", str(root), "--config", str(cfg))
    assert doc["config"] == {"path": str(cfg), "source": "--config"} and doc["rule"] == "excluded-comm"


def test_explain_shows_the_daemons_own_verdict_when_its_history_makes_them_differ(tmp_path, capsys):
    # The daemon remembers cool-downs between passes; explain plans with a fresh history. When the
    # daemon's last pass gave another rule, explain shows it beside its own, never silently.
    root, run = tmp_path / "root", tmp_path / "run"
    host_tree("demo", root)
    cfg = tmp_path / "autonumad.toml"
    cfg.write_text(CONFIG.format(run=run))
    cfg.chmod(0o600)
    d = Daemon(open_host(root), load_config(cfg), config_path=str(cfg), dry_run=True, manage_knobs=False)
    pid = next(iter(d.run_pass().decision.verdicts))
    state = json.loads((run / "state.json").read_text())
    mine = state["verdicts"][str(pid)]
    state["verdicts"][str(pid)] = {**mine, "rule": "cooling-down", "reason": "moved 3 s ago"}
    (run / "state.json").write_text(json.dumps(state))
    assert main(["explain", str(pid), "--root", str(root), "--runtime-dir", str(run), "--sample-s", "0"]) == 0
    out = capsys.readouterr().out
    assert "the running daemon's last pass (#1) said cooling-down: moved 3 s ago" in " ".join(out.split())
    # The same pid with another start time is another process (pid reuse): its verdict is not shown.
    state["verdicts"][str(pid)]["start_ticks"] = mine["start_ticks"] + 1
    (run / "state.json").write_text(json.dumps(state))
    assert main(["explain", str(pid), "--root", str(root), "--runtime-dir", str(run), "--sample-s", "0",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon_last_pass"] is None
    d._shutdown()
