"""A fake DAMON sysfs on a FakeHost tree, for tests and the demo.

`FakeDamonHost` is a FakeHost whose writes under /sys/kernel/mm/damon/admin
behave like mm/damon/sysfs.c in the respects autonumad relies on:

- writing a `nr_*` file creates that many numbered directories with the
  kernel's default files (and `nr_kdamonds` fails with EBUSY while any
  kdamond is on, and otherwise recreates every kdamond directory);
- writing "on" to a kdamond's `state` needs a context with targets whose
  pids exist under /proc, and gives it a pid; "off" clears the pid and the
  tried regions;
- "update_schemes_tried_regions" fills every scheme's `tried_regions/` from
  `regions_by_pid` (pid -> [(start, end, nr_accesses, age)]), kept to the
  scheme's access pattern and its `target` filter; it fails with EINVAL
  while the kdamond is off, as the kernel does.

The state lives in the tree, so a second FakeDamonHost on the same root (a
restarted daemon) sees what the first left behind.
"""

from __future__ import annotations

import errno
import itertools
import shutil
from pathlib import Path

from autonumad.sim.fakehost import FakeHost

ADMIN = "sys/kernel/mm/damon/admin"
_fake_kdamond_pids = itertools.count(70000)


def install_damon(root: str | Path) -> None:
    """Give a fake host tree an empty DAMON sysfs (no kdamonds)."""
    d = Path(root) / ADMIN / "kdamonds"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nr_kdamonds").write_text("0\n")


def _put(d: Path, files: dict[str, str]) -> None:
    for name, value in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")


def _make_children(parent: Path, n: int, make) -> None:
    for old in parent.iterdir():
        if old.name.isdigit():
            shutil.rmtree(old)
    for i in range(n):
        d = parent / str(i)
        d.mkdir()
        make(d)


def _kdamond(d: Path) -> None:
    _put(d, {"state": "off", "pid": "-1", "contexts/nr_contexts": "0"})


def _context(d: Path) -> None:
    _put(d, {"avail_operations": "vaddr\nfvaddr\npaddr", "operations": "vaddr",
             "monitoring_attrs/intervals/sample_us": "5000",
             "monitoring_attrs/intervals/aggr_us": "100000",
             "monitoring_attrs/intervals/update_us": "1000000",
             "monitoring_attrs/nr_regions/min": "10", "monitoring_attrs/nr_regions/max": "1000",
             "targets/nr_targets": "0", "schemes/nr_schemes": "0"})


def _target(d: Path) -> None:
    _put(d, {"pid_target": "0", "regions/nr_regions": "0"})


def _scheme(d: Path) -> None:
    files = {"action": "pageout", "apply_interval_us": "0", "filters/nr_filters": "0",
             "tried_regions/total_bytes": "0"}
    for what in ("sz", "nr_accesses", "age"):
        files[f"access_pattern/{what}/min"] = "0"
        files[f"access_pattern/{what}/max"] = "0"
    _put(d, files)


def _filter(d: Path) -> None:
    _put(d, {"type": "anon", "matching": "N", "memcg_path": "", "damon_target_idx": "0",
             "addr_start": "0", "addr_end": "0"})


_MAKERS = {"nr_kdamonds": _kdamond, "nr_contexts": _context, "nr_targets": _target,
           "nr_schemes": _scheme, "nr_filters": _filter}


class FakeDamonHost(FakeHost):
    """A FakeHost with a simulated DAMON sysfs (call install_damon on the root first)."""

    def __init__(self, root, regions_by_pid=None):
        super().__init__(root)
        self.regions_by_pid: dict[int, list[tuple[int, int, int, int]]] = dict(regions_by_pid or {})
        self.writes: list[tuple[str, str]] = []  # every DAMON write, for tests

    def write_text(self, host_path: str, value: str) -> None:
        rel = host_path.lstrip("/")
        if not rel.startswith(ADMIN + "/"):
            return super().write_text(host_path, value)
        self.writes.append((host_path, value.strip()))
        p = self.root / rel
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "no such DAMON file", host_path)
        v = value.strip()
        kd = self._kdamond_dir(p)
        if p.name == "nr_kdamonds":
            if any((k / "state").read_text().strip() == "on" for k in self._kdamonds()):
                raise OSError(errno.EBUSY, "a kdamond is running", host_path)
        elif kd is not None and p.name != "state" and (kd / "state").read_text().strip() == "on":
            # Parameters of a running kdamond change only through "commit";
            # the files accept writes. Only directory counts are refused.
            if p.name.startswith("nr_"):
                raise OSError(errno.EBUSY, "kdamond is running", host_path)
        if p.name in _MAKERS:
            if not v.isdigit():
                raise OSError(errno.EINVAL, "not a number", host_path)
            _make_children(p.parent, int(v), _MAKERS[p.name])
            p.write_text(v + "\n")
            return
        if p.name == "state" and kd is not None:
            return self._state(kd, v, host_path)
        p.write_text(v + "\n")

    # -- kdamond commands --
    def _kdamonds(self) -> list[Path]:
        base = self.root / ADMIN / "kdamonds"
        return [d for d in base.iterdir() if d.name.isdigit()]

    def _kdamond_dir(self, p: Path) -> Path | None:
        base = self.root / ADMIN / "kdamonds"
        try:
            parts = p.relative_to(base).parts
        except ValueError:
            return None
        return base / parts[0] if parts and parts[0].isdigit() else None

    def _state(self, kd: Path, cmd: str, host_path: str) -> None:
        on = (kd / "state").read_text().strip() == "on"
        if cmd == "on":
            if on:
                raise OSError(errno.EBUSY, "already on", host_path)
            ctx = kd / "contexts/0"
            if not ctx.is_dir():
                raise OSError(errno.EINVAL, "no context", host_path)
            for t in self._targets(ctx):
                pid = int((t / "pid_target").read_text())
                if not self.path(f"/proc/{pid}").is_dir():
                    raise OSError(errno.ESRCH, "no such process", host_path)
            (kd / "state").write_text("on\n")
            (kd / "pid").write_text(f"{next(_fake_kdamond_pids)}\n")
        elif cmd == "off":
            if not on:
                raise OSError(errno.EINVAL, "not running", host_path)
            (kd / "state").write_text("off\n")
            (kd / "pid").write_text("-1\n")
            self._clear_tried(kd)
        elif cmd in ("commit", "update_schemes_stats", "clear_schemes_tried_regions",
                     "update_schemes_tried_regions", "update_schemes_tried_bytes"):
            if not on:
                raise OSError(errno.EINVAL, "not running", host_path)
            if cmd == "clear_schemes_tried_regions":
                self._clear_tried(kd)
            elif cmd == "update_schemes_tried_regions":
                self._fill_tried(kd)
        else:
            raise OSError(errno.EINVAL, "unknown command", host_path)

    @staticmethod
    def _targets(ctx: Path) -> list[Path]:
        t = ctx / "targets"
        return sorted((d for d in t.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))

    @staticmethod
    def _schemes(kd: Path) -> list[Path]:
        s = kd / "contexts/0/schemes"
        if not s.is_dir():
            return []
        return sorted((d for d in s.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))

    def _clear_tried(self, kd: Path) -> None:
        for s in self._schemes(kd):
            _make_children(s / "tried_regions", 0, lambda d: None)
            (s / "tried_regions/total_bytes").write_text("0\n")

    def _fill_tried(self, kd: Path) -> None:
        targets = [int((t / "pid_target").read_text()) for t in self._targets(kd / "contexts/0")]
        for s in self._schemes(kd):
            def rng(what: str) -> tuple[int, int]:
                return (int((s / f"access_pattern/{what}/min").read_text()),
                        int((s / f"access_pattern/{what}/max").read_text()))
            sz, acc, age = rng("sz"), rng("nr_accesses"), rng("age")
            keep_idx = None
            nf = int((s / "filters/nr_filters").read_text())
            for fi in range(nf):
                f = s / f"filters/{fi}"
                if (f / "type").read_text().strip() == "target" and (f / "matching").read_text().strip() == "N":
                    keep_idx = int((f / "damon_target_idx").read_text())
            found = []
            for ti, pid in enumerate(targets):
                if keep_idx is not None and ti != keep_idx:
                    continue
                for (a, b, n, g) in self.regions_by_pid.get(pid, ()):
                    if sz[0] <= b - a <= sz[1] and acc[0] <= n <= acc[1] and age[0] <= g <= age[1]:
                        found.append((a, b, n, g))
            tr = s / "tried_regions"
            _make_children(tr, 0, lambda d: None)
            for i, (a, b, n, g) in enumerate(found):
                _put(tr / str(i), {"start": str(a), "end": str(b), "nr_accesses": str(n), "age": str(g),
                                   "sz_filter_passed": str(b - a)})
            (tr / "total_bytes").write_text(f"{sum(b - a for a, b, _, _ in found)}\n")
