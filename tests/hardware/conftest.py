"""Hardware tests: they run only inside a scripts/numa-vm guest.

scripts/hardware-tests boots one guest per topology and runs
`pytest -m hardware tests/hardware` in each, with AUTONUMAD_VM_TOPOLOGY set
to the guest's topology name.  Outside a guest every test here is skipped.

- Every test under tests/hardware gets the `hardware` marker automatically.
- `@pytest.mark.topology("tiered", ...)` limits a test to the named
  topologies; without it a test runs on every topology.
- The `vm_topology` fixture returns the current guest's topology name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOPOLOGY_ENV = "AUTONUMAD_VM_TOPOLOGY"
KNOWN_TOPOLOGIES = ("2node", "tiered", "4node")


def current_topology() -> str | None:
    return os.environ.get(TOPOLOGY_ENV) or None


def _is_hardware_item(item: pytest.Item) -> bool:
    try:
        Path(str(item.path)).resolve().relative_to(HERE)
    except ValueError:
        return False
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on the items before `-m hardware` deselects.
    topology = current_topology()
    for item in items:
        if not _is_hardware_item(item):
            continue
        item.add_marker(pytest.mark.hardware)
        if topology is None:
            item.add_marker(pytest.mark.skip(
                reason=f"hardware test: needs a scripts/numa-vm guest ({TOPOLOGY_ENV} is unset);"
                       " run scripts/hardware-tests"))
            continue
        wanted: list[str] = []
        for mark in item.iter_markers("topology"):
            wanted.extend(mark.args)
        for name in wanted:
            if name not in KNOWN_TOPOLOGIES:
                raise pytest.UsageError(
                    f"{item.nodeid}: unknown topology {name!r} in @pytest.mark.topology"
                    f" (known: {', '.join(KNOWN_TOPOLOGIES)})")
        if wanted and topology not in wanted:
            item.add_marker(pytest.mark.skip(
                reason=f"topology {topology} not in {', '.join(wanted)}"))


@pytest.fixture(scope="session")
def vm_topology() -> str:
    """Name of the numa-vm topology this guest was booted with."""
    topology = current_topology()
    if topology is None:
        pytest.skip(f"{TOPOLOGY_ENV} is unset: not inside a scripts/numa-vm guest")
    return topology


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


@pytest.fixture(scope="module")
def two_nodes_no_kernel_balancing():
    """Two memory nodes, with the kernel's NUMA balancing off for the module."""
    from hardware.workload import memory_nodes, numa_balancing

    if len(memory_nodes()) < 2:
        pytest.skip("needs two nodes with memory (run in scripts/numa-vm)")
    with numa_balancing(0):
        yield
