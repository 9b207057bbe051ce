"""Kernel assist (plan/assist.py): the kernel's hint-fault sampling on only while
a process whose busy threads fit on no node is misplaced, off at plateau or
over budget; and the daemon holding kernel.numa_balancing accordingly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from autonumad.plan.assist import MIN_ON_S, PLATEAU_PASSES, KernelAssist
from autonumad.service.config import compile_config
from autonumad.service.daemon import Daemon
from autonumad.sim.fakehost import build_host

from test_placement import SIXTY_FOUR, host2x2, proc

K = (100, 5)


def vm(faults=0, migrated=0):
    return {"numa_hint_faults": faults, "numa_pages_migrated": migrated}


def test_on_for_a_spread_process_then_off_at_plateau_and_not_again():
    a = KernelAssist()
    assert a.step(0.0, [K], [K], vm()) and a.on
    assert a.adjust({"numa_balancing": 0}, 0) == {"numa_balancing": 1}
    t, migrated = 0.0, 0
    for _ in range(3):  # the kernel is migrating: stays on
        t += 1.0
        migrated += 5000
        assert not a.step(t, [K], [K], vm(1000 * int(t), migrated))
    for i in range(PLATEAU_PASSES):
        t += 1.0
        changed = a.step(t, [K], [K], vm(1000 * int(t), migrated))
        assert changed == (i == PLATEAU_PASSES - 1)
    assert not a.on and "plateau" in a.reason and t >= MIN_ON_S
    assert a.adjust({"numa_balancing": 0}, 0) == {"numa_balancing": 0}
    assert not a.step(t + 1, [K], [K], vm())  # the same process is not assisted again
    assert a.step(t + 2, [(200, 7)], [K, (200, 7)], vm()) and a.on  # a new one is


def test_hint_fault_budget_turns_it_off():
    a = KernelAssist(hint_faults_per_s_budget=5000)
    a.step(0.0, [K], [K], vm())
    assert a.step(1.0, [K], [K], vm(faults=9000, migrated=9000)) and not a.on
    assert "hint faults/s" in a.reason


def test_the_operator_can_forbid_it_and_it_leaves_the_knob_alone():
    a = KernelAssist(allowed=False)
    assert not a.step(0.0, [K], [K], vm()) and not a.on
    assert "veto" in a.reason
    assert a.adjust({}, 0) == {}  # never switched: the config's knobs as they are


def test_off_when_the_process_is_gone():
    a = KernelAssist()
    a.step(0.0, [K], [K], vm())
    assert a.step(1.0, [], [], vm()) and not a.on


def test_the_tiering_bit_is_kept():
    a = KernelAssist()
    a.step(0.0, [K], [K], vm())
    assert a.adjust({"numa_balancing": 2}, 0) == {"numa_balancing": 3}


def test_daemon_turns_kernel_balancing_on_for_numa02_and_off_at_plateau(tmp_path):
    spec = host2x2([proc(100, (0, 1, 2, 3), {0: SIXTY_FOUR})])
    knobs = dict(spec.knobs)
    knobs["/proc/sys/kernel/numa_balancing"] = "0"
    host = build_host(tmp_path / "root", replace(spec, knobs=knobs))
    cfg = compile_config({"daemon": {"runtime_dir": str(tmp_path / "run")}, "metrics": {"listen": ""},
                          "kernel": {"numa_balancing": "off"}})
    now = [100.0]
    d = Daemon(host, cfg, clock=lambda: now[0])
    knob = Path(tmp_path / "root" / "proc/sys/kernel/numa_balancing")
    from autonumad.act.sysctl import KnobManager

    d.knobs = KnobManager(host, Path(tmp_path / "run"))
    d._apply_knobs()
    report = d.run_pass()
    assert report.decision.verdicts[100].rule == "spread-by-capacity"
    assert knob.read_text().strip() == "1"
    for _ in range(PLATEAU_PASSES + 4):  # /proc/vmstat is still: nothing migrates
        now[0] += 1.0
        d.run_pass()
    assert knob.read_text().strip() == "0", d.assist.reason
    assert "plateau" in d.assist.reason


def test_daemon_with_kernel_assist_forbidden_never_touches_the_knob(tmp_path):
    spec = host2x2([proc(100, (0, 1, 2, 3), {0: SIXTY_FOUR})])
    host = build_host(tmp_path / "root", spec)
    cfg = compile_config({"daemon": {"runtime_dir": str(tmp_path / "run")}, "metrics": {"listen": ""},
                          "balance": {"kernel_assist": False}, "kernel": {"numa_balancing": "off"}})
    d = Daemon(host, cfg)
    from autonumad.act.sysctl import KnobManager

    d.knobs = KnobManager(host, Path(tmp_path / "run"))
    d._apply_knobs()
    d.run_pass()
    assert (tmp_path / "root" / "proc/sys/kernel/numa_balancing").read_text().strip() == "0"
