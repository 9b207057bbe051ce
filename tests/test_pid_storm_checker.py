"""The pid-reuse storm's checker (tests/hardware/test_hw_pid_reuse.py) on hand-written ftrace text.

The checker is what makes the guest test able to fail: these cases show it
flags a move_pages(2) or sched_setaffinity(2) that reached a process created
after the daemon's decision (the pid reused), and a thread of such a process.
"""

from __future__ import annotations

import pytest

from hardware.test_hw_pid_reuse import TICKS_PER_S, check_trace

DAEMON = 200
HEADER = "# tracer: nop\n#\n#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"


def newtask(ts: float, caller: int, child: int, flags: int = 0x1200011, comm: str = "sh") -> str:
    return f"              {comm}-{caller}     [001] ..... {ts:12.6f}: task_newtask: pid={child} comm={comm} " \
           f"clone_flags={flags:x} oom_score_adj=0"


def move_pages(ts: float, target: int, nodes: int = 0x7ffc) -> str:
    return f"          python3-{DAEMON}     [000] ..... {ts:12.6f}: sys_move_pages(pid: {target:x}, nr_pages: 1, " \
           f"pages: 7ffd, nodes: {nodes:x}, status: 7ffe, flags: 2)"


def setaffinity(ts: float, target: int) -> str:
    return f"          python3-{DAEMON}     [000] ..... {ts:12.6f}: sys_sched_setaffinity(pid: {target:x}, " \
           f"len: 8, user_mask_ptr: 7ff0)"


INITIAL = {DAEMON: (DAEMON, 1.0), 1: (1, 0.5)}


def test_actions_on_decided_processes_pass():
    trace = HEADER + "\n".join([
        newtask(10.0, 1, 350),
        newtask(10.5, 350, 351, flags=0x3d0f00),  # a thread of 350 (CLONE_THREAD)
        move_pages(11.0, 350),
        move_pages(11.1, 350, nodes=0),  # a query: not an action
        setaffinity(11.2, 351),
    ])
    counts = check_trace(trace, INITIAL, DAEMON, {(350, int(10.0 * TICKS_PER_S))})
    assert counts["move_pages"] == 1 and counts["sched_setaffinity"] == 1 and counts["processes_created"] == 1


def test_an_action_on_a_reused_pid_is_caught():
    trace = HEADER + "\n".join([
        newtask(10.0, 1, 350),
        newtask(12.0, 1, 350),  # 350 exited and its pid went to a new process
        move_pages(12.5, 350),
    ])
    with pytest.raises(AssertionError, match="1 action"):
        check_trace(trace, INITIAL, DAEMON, {(350, int(10.0 * TICKS_PER_S))})


def test_a_thread_of_an_undecided_process_is_caught():
    trace = HEADER + "\n".join([
        newtask(10.0, 1, 350),
        newtask(10.0, 1, 360),
        newtask(10.5, 360, 361, flags=0x3d0f00),
        setaffinity(11.0, 361),
    ])
    with pytest.raises(AssertionError, match="process 360"):
        check_trace(trace, INITIAL, DAEMON, {(350, int(10.0 * TICKS_PER_S))})
