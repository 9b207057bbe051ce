"""Hardware tests: they run only inside a scripts/numa-vm guest.

scripts/hardware-tests boots one guest per topology and runs
`pytest -m hardware tests/hardware` in each, with AUTONUMAD_VM_TOPOLOGY set
to the guest's topology name.  Outside a guest every test here is skipped.

- Every test under tests/hardware gets the `hardware` marker automatically.
- `@pytest.mark.topology("tiered", ...)` limits a test to the named
  topologies; without it a test runs on every topology.
- `@pytest.mark.systemd` marks a test that needs systemd as PID 1 (a guest
  booted with `numa-vm --init systemd`); every test in a module named
  `test_*_systemd.py` gets it too.  It is skipped in other guests, and
  scripts/hardware-tests runs it only in its `systemd` guest.
- `@pytest.mark.every_guest` marks a test that also runs in the guests that
  differ from the default in one way (no cgroup hierarchy, the 6.1 kernel);
  scripts/hardware-tests selects it there with `-m "hardware and every_guest"`.
- The `vm_topology` fixture returns the current guest's topology name;
  `vm_guest` returns the guest's init, cgroup setup and kernel series.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOPOLOGY_ENV = "AUTONUMAD_VM_TOPOLOGY"
INIT_ENV = "AUTONUMAD_VM_INIT"
KNOWN_TOPOLOGIES = ("2node", "tiered", "4node", "2x2", "4x2")


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
        if Path(str(item.path)).name.endswith("_systemd.py"):
            item.add_marker(pytest.mark.systemd)
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
        init = os.environ.get(INIT_ENV, "busybox")
        if item.get_closest_marker("systemd") and init != "systemd":
            item.add_marker(pytest.mark.skip(
                reason=f"needs systemd as PID 1 (numa-vm --init systemd); this guest's init is {init}"))


@pytest.fixture(scope="session")
def vm_topology() -> str:
    """Name of the numa-vm topology this guest was booted with."""
    topology = current_topology()
    if topology is None:
        pytest.skip(f"{TOPOLOGY_ENV} is unset: not inside a scripts/numa-vm guest")
    return topology


@pytest.fixture(scope="session")
def vm_guest() -> dict[str, str]:
    """How this guest was booted: {"init", "cgroup", "kernel"} as numa-vm's options."""
    if current_topology() is None:
        pytest.skip(f"{TOPOLOGY_ENV} is unset: not inside a scripts/numa-vm guest")
    return {"init": os.environ.get(INIT_ENV, "busybox"),
            "cgroup": os.environ.get("AUTONUMAD_VM_CGROUP", "v2"),
            "kernel": os.environ.get("AUTONUMAD_VM_KERNEL", "6.12")}


@pytest.fixture(scope="module")
def two_nodes_no_kernel_balancing():
    """Two memory nodes, with the kernel's NUMA balancing off for the module."""
    from hardware.workload import memory_nodes, numa_balancing

    if len(memory_nodes()) < 2:
        pytest.skip("needs two nodes with memory (run in scripts/numa-vm)")
    with numa_balancing(0):
        yield


@pytest.fixture
def hugepages():
    """16 free 2 MiB hugetlb pages on each of nodes 0 and 1, pools restored after."""
    paths = [Path(f"/sys/devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages")
             for n in (0, 1)]
    if not all(p.exists() for p in paths):
        pytest.skip("no 2 MiB hugetlb pools")
    saved = [p.read_text() for p in paths]
    try:
        for p in paths:
            p.write_text("16")
        if any(int(p.read_text()) < 16 for p in paths):
            pytest.skip("could not reserve 16 huge pages per node")
        yield
    finally:
        for p, v in zip(paths, saved):
            p.write_text(v)


@pytest.fixture
def workloads():
    """A list the test appends its `hardware.workload.Workload`s to; each is stopped afterwards.
    (test_hw_damon.py and test_hw_tiering.py override it with a launcher of their own workload.)"""
    started: list = []
    yield started
    for w in started:
        w.stop()
