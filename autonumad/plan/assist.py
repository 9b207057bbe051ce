"""Kernel assist: the kernel's hint-fault sampling, on only while a process
whose threads span nodes is misplaced, and off again at plateau.

Userspace cannot see which thread touches which page without sampling.
For a process whose busy threads fit on no single node (placement.py's
verdict `spread-by-capacity`: autonuma-benchmark's numa02), the threads
stay where the scheduler spread them, and each thread's data should follow
it. The kernel's NUMA balancing does exactly that, by hint faults
(PROT_NONE sampling that every process on the host pays for). So the
daemon borrows it, briefly:

1. *On* (kernel.numa_balancing NORMAL, keeping the configured tiering bit)
   when some process has the verdict `spread-by-capacity`, it has not been
   assisted to a plateau before, and `balance.kernel_assist` allows it
   (the operator's veto; default allowed).
2. *Off* again (the configured value) when any of:
   - *plateau*: the kernel migrated fewer than PLATEAU_PAGES_PER_S pages
     per second (/proc/vmstat numa_pages_migrated) over PLATEAU_PASSES
     passes in a row, after at least MIN_ON_S: the sampling has done what
     it can; the processes it served are remembered and not assisted again
     while they live;
   - *budget*: hint faults (/proc/vmstat numa_hint_faults) ran above
     `balance.kernel_assist_hint_faults_per_s` over a pass: sampling costs
     more than it is allowed to; the processes are remembered too;
   - no process needs it any more (exited, or placed on one node).
While it is on, the policy's rule 6 leaves page moves to the kernel
(kernel-balancing), and autonumad still places tasks.

Not built: the bulk extrapolation the issue describes (moving the rest of a
range the kernel's migrations show to be accessed from one node), and
hardware sampling (PEBS/IBS); the QEMU TCG test guest has no PMU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PLATEAU_PAGES_PER_S = 256.0  # 1 MiB/s of 4 KiB pages
PLATEAU_PASSES = 3
MIN_ON_S = 4.0
NUMA_BALANCING_NORMAL = 1
SPREAD_RULE = "spread-by-capacity"

ProcKey = tuple[int, int]


@dataclass
class KernelAssist:
    allowed: bool = True
    hint_faults_per_s_budget: float = 20000.0
    on: bool = False
    reason: str = "off: no process needs the kernel's sampling"
    on_since_s: float | None = None
    serving: frozenset[ProcKey] = frozenset()
    done: set[ProcKey] = field(default_factory=set)  # assisted to plateau or budget: not again
    _last: tuple[float, int, int] | None = None  # (time, hint faults, pages migrated)
    _quiet_passes: int = 0
    switches: int = 0

    def step(self, now_s: float, spread: Iterable[ProcKey], alive: Iterable[ProcKey],
             vmstat: Mapping[str, int]) -> bool:
        """One pass: `spread` are the processes with the verdict spread-by-capacity,
        `alive` every process scanned. Returns True when on/off changed."""
        alive = set(alive)
        self.done &= alive
        want = frozenset(k for k in spread if k not in self.done)
        faults, migrated = vmstat.get("numa_hint_faults", 0), vmstat.get("numa_pages_migrated", 0)
        last, self._last = self._last, (now_s, faults, migrated)
        if not self.on:
            if want and self.allowed:
                self.on, self.on_since_s, self.serving, self._quiet_passes = True, now_s, want, 0
                self.reason = (f"on: {len(want)} process(es) with busy threads on several nodes and memory the "
                               f"scheduler cannot follow (spread-by-capacity); the kernel samples, until plateau")
                self.switches += 1
                return True
            if want and not self.allowed:
                self.reason = "off: balance.kernel_assist is false (the operator's veto)"
            return False
        self.serving = self.serving | want
        dt = now_s - last[0] if last else 0.0
        if not (want or (self.serving & alive) - self.done):
            return self._off("off: no process needs the kernel's sampling any more")
        if dt <= 0:
            return False
        fault_rate = max(0, faults - last[1]) / dt
        migrate_rate = max(0, migrated - last[2]) / dt
        if fault_rate > self.hint_faults_per_s_budget:
            self.done |= self.serving
            return self._off(f"off: {fault_rate:,.0f} hint faults/s is above balance.kernel_assist_hint_faults_per_s "
                             f"({self.hint_faults_per_s_budget:,.0f})")
        self._quiet_passes = self._quiet_passes + 1 if migrate_rate < PLATEAU_PAGES_PER_S else 0
        if self._quiet_passes >= PLATEAU_PASSES and self.on_since_s is not None \
                and now_s - self.on_since_s >= MIN_ON_S:
            self.done |= self.serving
            return self._off(f"off: plateau, the kernel migrated under {PLATEAU_PAGES_PER_S:g} pages/s for "
                             f"{PLATEAU_PASSES} passes")
        return False

    def _off(self, reason: str) -> bool:
        self.on, self.on_since_s, self.serving, self._quiet_passes = False, None, frozenset(), 0
        self.reason = reason
        self.switches += 1
        return True

    def adjust(self, desired: Mapping[str, int | bool], baseline: int) -> dict[str, int | bool]:
        """The knobs to hold: `desired` (the config's), with numa_balancing's NORMAL bit
        set while on; while off, the config's value, or `baseline` (the value the daemon
        found) when the config keeps it, once the assist has ever switched."""
        out = dict(desired)
        base = int(out.get("numa_balancing", baseline))
        if self.on:
            out["numa_balancing"] = base | NUMA_BALANCING_NORMAL
        elif self.switches:
            out["numa_balancing"] = base
        return out
