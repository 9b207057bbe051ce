"""EPERM from move_pages/migrate_pages/sched_setaffinity: the message names what can refuse it."""

from __future__ import annotations

import errno

from autonumad.act.syscalls import _pid_error, eperm_cause
from autonumad.errors import AccessDenied


def status(tmp_path, seccomp: str):
    p = tmp_path / "status"
    p.write_text(f"Name:\tautonumad\nNoNewPrivs:\t1\nSeccomp:\t{seccomp}\nSeccomp_filters:\t1\n")
    return str(p)


def test_eperm_under_a_seccomp_filter_names_the_filter(tmp_path):
    assert "seccomp filter" in eperm_cause(status(tmp_path, "2"))


def test_eperm_without_a_filter_blames_the_ptrace_check_only(tmp_path):
    cause = eperm_cause(status(tmp_path, "0"))
    assert "CAP_SYS_PTRACE" in cause and "seccomp" not in cause


def test_eperm_with_an_unreadable_status_still_says_something(tmp_path):
    assert "CAP_SYS_PTRACE" in eperm_cause(str(tmp_path / "missing"))


def test_whole_call_eperm_is_access_denied():
    e = _pid_error(1234, "move_pages", OSError(errno.EPERM, "move_pages: Operation not permitted"))
    assert isinstance(e, AccessDenied) and "EPERM" in str(e)
