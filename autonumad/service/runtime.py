"""The runtime directory: one host's state, written so nobody else can redirect it.

What lives there (`/run/autonumad` under systemd's RuntimeDirectory=):
state.json (the running daemon, read by `reload` and the views), the saved
kernel-knob originals (act/sysctl.py), the affinities the daemon set
(act/pins.py), DAMON's owned kdamonds (observe/damon.py) and the
single-instance lock.

Rules (issue 10):

* **One host per directory.** Under `--root DIR` (a fake host) the default
  directory is `DIR/run/autonumad`, never the real `/run/autonumad`: a
  test or demo must not consume, or write into its tree, a real crashed
  daemon's saved originals. Files that belong to one host say which
  (`host_doc()`: the root's real path and the kernel's boot id,
  /proc/sys/kernel/random/boot_id, random(4)).
* **A directory only root (or the daemon's own user) can write.** Owned by
  root or by our euid, not writable by group or others, not a symlink;
  otherwise the daemon refuses to use it with one line.
* **No file write follows a planted symlink.** Temporary files are created
  with O_CREAT|O_EXCL|O_NOFOLLOW relative to a directory fd opened with
  O_NOFOLLOW|O_DIRECTORY, then renamed over the target (rename(2) replaces
  a symlink at the destination instead of following it); reads use
  O_NOFOLLOW too.
* **One daemon per directory.** `InstanceLock` is an flock(2) on
  `<dir>/lock`, held for the daemon's lifetime: a second `run` refuses
  instead of "recovering" the live daemon's saved knobs and pins, and
  `sysctl apply` (the unit's ExecStartPre and ExecReload) restores leftovers
  of a crashed run only while no daemon holds it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from autonumad.errors import AutonumadError

log = logging.getLogger("autonumad")

DEFAULT_RUNTIME_DIR = "/run/autonumad"
LOCK_FILE_NAME = "lock"
STATE_FILE_NAME = "state.json"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# Runtime files may be read back whole; none is legitimately larger.
_MAX_FILE_BYTES = 16 << 20


class RuntimeDirError(AutonumadError):
    """The runtime directory or one of its files cannot be used safely."""


class AnotherInstance(AutonumadError):
    """Another autonumad daemon holds this runtime directory's lock."""


# -- which directory ------------------------------------------------------------------


def runtime_dir_for(config, host) -> Path:
    """The runtime directory for `host`: inside a fake host's root unless the config names one."""
    configured = config.daemon.runtime_dir
    if Path(host.root).resolve() != Path("/") and os.path.normpath(configured) == DEFAULT_RUNTIME_DIR:
        return Path(host.root).resolve() / DEFAULT_RUNTIME_DIR.lstrip("/")
    return Path(configured)


def with_host_runtime_dir(config, host):
    """`config` with daemon.runtime_dir set to `runtime_dir_for(config, host)`."""
    d = str(runtime_dir_for(config, host))
    if d == config.daemon.runtime_dir:
        return config
    return replace(config, daemon=replace(config.daemon, runtime_dir=d))


def keep_runtime_dir(new_config, running_config):
    """A reload keeps the runtime directory the daemon started with.

    The saved knobs, pins, DAMON ownership and the lock live there; moving
    mid-run would orphan them. A changed value is logged as needing a restart.
    """
    old, new = running_config.daemon.runtime_dir, new_config.daemon.runtime_dir
    if new == old:
        return new_config
    log.warning("daemon.runtime_dir changed to %s: that needs a restart; keeping %s until then", new, old)
    return replace(new_config, daemon=replace(new_config.daemon, runtime_dir=old))


# -- the directory's safety -------------------------------------------------------------


def check_dir(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """Create `path` if asked (mode 0755, like RuntimeDirectoryMode=), then check it is safe to write in.

    Raises RuntimeDirError with one line: a symlink, not a directory, owned by
    another user than root or us, writable by group or others, or read-only.
    """
    p = Path(path)
    if create:
        try:
            p.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeDirError(f"runtime directory {p}: cannot create: {e.strerror or e}") from None
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise RuntimeDirError(f"runtime directory {p}: does not exist") from None
    except OSError as e:
        raise RuntimeDirError(f"runtime directory {p}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"runtime directory {p}: is a symlink; refusing (it could point anywhere)")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {p}: not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise RuntimeDirError(f"runtime directory {p}: owned by uid {st.st_uid}, must be owned by root")
    if stat.S_IMODE(st.st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeDirError(f"runtime directory {p}: mode {stat.S_IMODE(st.st_mode):04o} is writable by "
                              f"group or others (chmod go-w)")
    if not os.access(p, os.W_OK | os.X_OK):
        raise RuntimeDirError(f"runtime directory {p}: not writable (read-only file system or permissions)")
    return p


def _dir_fd(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP or e.errno == errno.ENOTDIR:
            raise RuntimeDirError(f"runtime directory {path}: not a directory (a symlink?)") from None
        raise


def write_file(directory: str | os.PathLike[str], name: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `directory/name` with `data` atomically, following no symlink (see the module doc).

    Raises RuntimeDirError for an unsafe directory and OSError for I/O errors.
    """
    d = check_dir(directory)
    dfd = _dir_fd(d)
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        try:
            os.unlink(tmp, dir_fd=dfd)  # a leftover of ours from a crash (or a planted name)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        try:
            os.fsync(dfd)
        except OSError:
            pass
    finally:
        os.close(dfd)


def read_file(directory: str | os.PathLike[str], name: str) -> bytes | None:
    """The bytes of `directory/name`, None if it does not exist; a symlink or non-file is a RuntimeDirError."""
    path = Path(directory) / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RuntimeDirError(f"{path}: is a symlink; refusing to read it") from None
        raise RuntimeDirError(f"{path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RuntimeDirError(f"{path}: not a regular file")
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_FILE_BYTES:
                raise RuntimeDirError(f"{path}: larger than {_MAX_FILE_BYTES} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise RuntimeDirError(f"{path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def remove_file(directory: str | os.PathLike[str], name: str) -> None:
    try:
        os.unlink(Path(directory) / name)
    except FileNotFoundError:
        pass


# -- which host and boot ---------------------------------------------------------------


def boot_id() -> str | None:
    """This kernel's boot id (random(4)); None where /proc does not offer it."""
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def host_doc(host) -> dict[str, Any]:
    """Which host a runtime file belongs to: the root's real path and the boot id of the machine."""
    return {"root": os.path.realpath(host.root), "boot_id": boot_id()}


def foreign_host(recorded: Any, host) -> str | None:
    """Why a file recorded for `recorded` does not belong to `host` now, or None if it does.

    "root": it was written for another host tree; "boot": for this tree
    before the machine rebooted (every kernel setting it describes was
    reset by the reboot).
    """
    here = host_doc(host)
    if not isinstance(recorded, dict):
        return "root"
    if recorded.get("root") != here["root"]:
        return "root"
    if recorded.get("boot_id") and here["boot_id"] and recorded.get("boot_id") != here["boot_id"]:
        return "boot"
    return None


# -- one daemon per directory --------------------------------------------------------


class InstanceLock:
    """flock(2) on `<dir>/lock`, held while the daemon runs (see the module doc)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        self.fd: int | None = None

    def acquire(self) -> "InstanceLock":
        d = check_dir(self.dir)
        dfd = _dir_fd(d)
        try:
            fd = os.open(LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except OSError as e:
            raise RuntimeDirError(f"{d / LOCK_FILE_NAME}: cannot open: {e.strerror or e}") from None
        finally:
            os.close(dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise AnotherInstance(f"another autonumad daemon{f' (pid {holder})' if holder else ''} is running "
                                  f"with runtime directory {d}; refusing to start a second one") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "InstanceLock":
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def _lock_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def daemon_running(directory: str | os.PathLike[str]) -> bool:
    """True if a daemon holds the lock of `directory` (tried without taking it for long)."""
    path = Path(directory) / LOCK_FILE_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: no daemon has ever run here (or it is unreadable: not ours to judge)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return False


def signal_daemon(directory: str | os.PathLike[str], state: dict, signum: int) -> int:
    """Send `signum` to the daemon state.json names, only if that pid is still that daemon.

    main signalled whatever process had the number (`reload` killed an
    unrelated `sleep`). Now: a daemon must hold the directory's lock, and
    the pid's start time (stat field 22) must be the one the daemon wrote
    into state.json; the signal goes through a pidfd opened before that
    check (pidfd_send_signal(2)), so it cannot reach a process that took
    the pid after it. Returns the pid; raises AutonumadError otherwise.
    """
    import signal as _signal

    path = Path(directory) / STATE_FILE_NAME
    pid, start = state.get("pid"), state.get("start_ticks")
    if type(pid) is not int or pid <= 0:
        raise AutonumadError(f"{path}: no daemon pid in it")
    if not daemon_running(directory):
        raise AutonumadError(f"{path}: names pid {pid}, but no autonumad daemon is running with runtime "
                             f"directory {directory} (a stale file from a daemon that did not stop cleanly)")
    if type(start) is not int:
        raise AutonumadError(f"{path}: no start time for pid {pid} (written by an older autonumad?): not "
                             f"signalling a pid whose identity cannot be checked")
    opener = getattr(os, "pidfd_open", None)
    pidfd = None
    try:
        if opener is not None:
            try:
                pidfd = opener(pid)
            except ProcessLookupError:
                raise AutonumadError(f"pid {pid} from {path} is not running") from None
            except OSError:
                pidfd = None  # no pidfds here: the start-time check alone
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                now = int(f.read().rsplit(b")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            raise AutonumadError(f"pid {pid} from {path} is not running") from None
        if now != start:
            raise AutonumadError(f"pid {pid} from {path} is another process now (started at tick {now}, the "
                                 f"daemon at {start}): not signalled")
        sent = False
        if pidfd is not None:
            try:
                _signal.pidfd_send_signal(pidfd, signum)
                sent = True
            except ProcessLookupError:
                raise
            except OSError:
                pass  # refused by a seccomp filter (EPERM): the start-time check alone
        if not sent:
            os.kill(pid, signum)
    except ProcessLookupError:
        raise AutonumadError(f"pid {pid} from {path} is not running") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return pid


# -- a fake host stays inside its root --------------------------------------------------


def inside_root(root_real: str, fs_path: str) -> str:
    """`fs_path` if it resolves inside `root_real` (a realpath), else PermissionError.

    A fake host is a directory tree anyone may have built; a symlink in it
    (proc/123/numa_maps -> /etc/shadow, sys/.../knob -> /proc/sys/kernel/...)
    must not make a view read, or an actuator write, outside the tree. The
    EACCES maps to the usual outcomes: AccessDenied for a process's file,
    "absent" for an optional one, a HostError naming the file otherwise.
    """
    real = os.path.realpath(fs_path)
    if real != root_real and not real.startswith(root_real + "/"):
        raise PermissionError(errno.EACCES, "a symlink leads out of the fake host's root", fs_path)
    return fs_path
