"""The sd_notify protocol against real datagram sockets, and journald-aware logging."""

from __future__ import annotations

import logging
import os
import re
import socket
import time

import pytest

from autonumad.service.logsetup import LOG_LEVELS, level_number, setup_logging, stderr_is_journal, syslog_priority
from autonumad.service.sdnotify import Notifier, notify_address


@pytest.fixture
def listener(tmp_path_factory):
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    # tmp_path_factory gives a short directory: sun_path holds at most 107 bytes.
    path = tmp_path_factory.mktemp("n") / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_no_notify_socket_is_a_silent_no_op():
    n = Notifier(env={})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False


def test_ready_reaches_a_path_socket(listener):
    path, sock = listener
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.enabled and n.ready() is True
    assert received(sock) == ["READY=1"]
    n.close()


def test_ready_with_status(listener):
    path, sock = listener
    Notifier(env={"NOTIFY_SOCKET": path}).ready("first pass done: 12 processes")
    assert received(sock) == ["READY=1", "STATUS=first pass done: 12 processes"]


def test_abstract_namespace_socket():
    name = f"autonumad-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).stopping()
        assert received(sock) == ["STOPPING=1"]
    finally:
        sock.close()


def test_reloading_carries_monotonic_usec(listener):
    path, sock = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(env={"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(sock)
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


@pytest.mark.parametrize("call,expected", [
    (lambda n: n.watchdog(), ["WATCHDOG=1"]),
    (lambda n: n.watchdog_trigger(), ["WATCHDOG=trigger"]),
    (lambda n: n.status("pass 3\nmoved 12 MiB"), ["STATUS=pass 3 moved 12 MiB"]),
    (lambda n: n.extend_timeout(2.5), ["EXTEND_TIMEOUT_USEC=2500000"]),
    (lambda n: n.notify("ERRNO=5", "STATUS=x"), ["ERRNO=5", "STATUS=x"]),
], ids=["watchdog", "trigger", "status-newline-flattened", "extend-timeout", "raw"])
def test_messages(listener, call, expected):
    path, sock = listener
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert call(n) is True
    assert received(sock) == expected


def test_one_socket_reused_for_many_messages(listener):
    path, sock = listener
    n = Notifier(env={"NOTIFY_SOCKET": path})
    for _ in range(3):
        n.watchdog()
    assert [received(sock) for _ in range(3)] == [["WATCHDOG=1"]] * 3


def test_send_failure_is_logged_once_and_never_raised(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="autonumad.service.sdnotify")
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
    assert n.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sd_notify" in warnings[0].getMessage()
    assert any(r.levelno == logging.DEBUG for r in caplog.records)


def test_socket_that_went_away_mid_run(listener, caplog):
    path, sock = listener
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.watchdog()
    sock.close()
    os.unlink(path)
    assert n.watchdog() is False  # ENOENT/ECONNREFUSED: logged, not raised


@pytest.mark.parametrize("value,expected", [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@abstract", b"\0abstract"),
    ("@", None),
    ("vsock:2:1234", None),
    ("relative/path", None),
], ids=["path", "abstract", "bare-at", "vsock", "relative"])
def test_notify_address(value, expected):
    assert notify_address(value) == expected


def test_unusable_notify_socket_warns_and_disables(caplog):
    n = Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and "vsock:2:1234" in caplog.text


@pytest.mark.parametrize("env,pid,expected", [
    ({}, 100, None),
    ({"WATCHDOG_USEC": "30000000"}, 100, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "100"}, 100, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "101"}, 100, None),
    ({"WATCHDOG_USEC": "0"}, 100, None),
    ({"WATCHDOG_USEC": "soon"}, 100, None),
    ({"WATCHDOG_USEC": "-5"}, 100, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, 100, None),
    ({"WATCHDOG_USEC": "1000"}, 100, 0.0005),
], ids=["unset", "half-of-timeout", "pid-matches", "other-pid", "zero", "garbage", "negative", "garbage-pid",
        "tiny"])
def test_watchdog_interval(env, pid, expected):
    assert Notifier(env=env, pid=pid).watchdog_interval_s() == expected


def test_watchdog_pid_defaults_to_our_own():
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env=env).watchdog_interval_s() == 1.0


# -- logging -----------------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def journal_env_for(f) -> dict[str, str]:
    st = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_detected_only_for_the_same_stream(tmp_path):
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        env = journal_env_for(a)
        assert stderr_is_journal(env, a)
        assert not stderr_is_journal(env, b)  # inherited variable, stderr redirected elsewhere
        assert not stderr_is_journal({}, a)
        assert not stderr_is_journal({"JOURNAL_STREAM": "x:y"}, a)


def test_journal_format_has_priority_prefix_and_no_timestamp(tmp_path, restore_root_logger):
    with open(tmp_path / "stream", "w") as f:
        setup_logging("debug", stream=f, env=journal_env_for(f))
        log = logging.getLogger("autonumad.test")
        log.info("moved 12 pages")
        log.warning("two\nlines")
        log.debug("detail")
    assert (tmp_path / "stream").read_text().splitlines() == [
        "<6>moved 12 pages", "<4>two", "<4>lines", "<7>detail"]


def test_traceback_lines_keep_the_error_priority(tmp_path, restore_root_logger):
    with open(tmp_path / "stream", "w") as f:
        setup_logging("info", stream=f, journal=True)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("autonumad.test").exception("pass failed")
    lines = (tmp_path / "stream").read_text().splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_console_format_has_time_and_level(tmp_path, restore_root_logger):
    with open(tmp_path / "stream", "w") as f:
        setup_logging("info", stream=f, env={})
        logging.getLogger("autonumad.test").info("hello")
        logging.getLogger("autonumad.test").debug("hidden")
    text = (tmp_path / "stream").read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    hello\n", text)


def test_setup_again_replaces_our_handler_and_level(tmp_path, restore_root_logger):
    with open(tmp_path / "stream", "w") as f:
        setup_logging("info", stream=f, journal=True)
        setup_logging("error", stream=f, journal=True)
        log = logging.getLogger("autonumad.test")
        log.warning("dropped")
        log.error("kept")
    assert (tmp_path / "stream").read_text() == "<3>kept\n"


@pytest.mark.parametrize("levelno,priority", [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (logging.DEBUG, 7),
    (logging.INFO + 5, 6), (logging.WARNING + 1, 4), (1, 7),
], ids=["critical", "error", "warning", "info", "debug", "between-info-warning", "above-warning", "below-debug"])
def test_syslog_priority(levelno, priority):
    assert syslog_priority(levelno) == priority


def test_level_names():
    assert [level_number(n) for n in LOG_LEVELS] == [10, 20, 30, 40, 50]
    assert level_number(" INFO ") == logging.INFO
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        level_number("loud")


def test_setup_replaces_an_earlier_basic_config_on_the_same_stream(tmp_path, restore_root_logger):
    # The CLI may call logging.basicConfig() before the config (and its
    # log_level) is read; that handler must not print every line a second time.
    with open(tmp_path / "stream", "w") as f:
        early = logging.StreamHandler(f)
        logging.getLogger().addHandler(early)
        setup_logging("info", stream=f, journal=True)
        logging.getLogger("autonumad.test").info("once")
    assert early not in logging.getLogger().handlers
    assert (tmp_path / "stream").read_text() == "<6>once\n"


def test_setup_keeps_handlers_writing_elsewhere(tmp_path, restore_root_logger):
    with open(tmp_path / "other", "w") as other, open(tmp_path / "stream", "w") as f:
        elsewhere = logging.StreamHandler(other)
        logging.getLogger().addHandler(elsewhere)
        setup_logging("info", stream=f, journal=True)
        logging.getLogger("autonumad.test").info("both")
    assert (tmp_path / "other").read_text() == "both\n"
    assert (tmp_path / "stream").read_text() == "<6>both\n"
