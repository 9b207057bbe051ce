"""Shared test settings.

Hypothesis' per-example deadline (200 ms by default) measures wall time, which
on a 2-core CI machine also running QEMU guests says more about the machine
than about the parsers: property tests check behaviour, benchmarks under
scripts/ check speed. The example counts stay hypothesis' defaults.

Inside a numa-vm guest (hardware tests only, no property tests) hypothesis is
not imported at all: under TCG its import alone costs seconds per guest.
"""

import os

import pytest

if not os.environ.get("AUTONUMAD_VM_TOPOLOGY"):
    from hypothesis import HealthCheck, settings

    settings.register_profile("autonumad", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("autonumad")


@pytest.fixture
def spawn():
    """Start workload processes and stop every one of them after the test.

    `spawn(cls, *args)` calls `cls(*args)` (a workload launcher with a
    `stop()`, e.g. hardware.workload.Workload) and returns it.
    """
    started = []

    def start(cls, *args):
        w = cls(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
