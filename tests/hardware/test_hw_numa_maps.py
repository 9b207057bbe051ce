"""numa_maps as parsed by autonumad agrees with move_pages(2)'s own answer.

Runs inside the scripts/numa-vm guest: a workload first-touches its buffer
on node 1, and two independent kernel interfaces are asked where it is:
/proc/<pid>/numa_maps (fs/proc/task_mmu.c walks the page tables and counts
pages per node, read with autonumad.readers.numa_maps) and move_pages(2)
with nodes=NULL (mm/migrate.c do_pages_stat, one status per address).

They count the same things with two exceptions the tests spell out:
numa_maps leaves out the shared zero page (not a "normal" page), which
move_pages reports as -EFAULT; and neither counts pages never touched
(-ENOENT). numa_maps counts in the VMA's page size (kernelpagesize_kB), so
a hugetlb VMA is queried at 2 MiB steps.
"""

from __future__ import annotations

from collections import Counter

import pytest

from autonumad.host import LinuxHost
from autonumad.readers.numa_maps import read_numa_maps
from autonumad.act.syscalls import move_pages, page_nodes
from hardware.workload import Workload, anon_huge_kib

pytestmark = [pytest.mark.hardware, pytest.mark.topology("2node")]

MIB = 1 << 20
HUGE = 2 * MIB


@pytest.fixture(scope="module", autouse=True)
def two_nodes(two_nodes_no_kernel_balancing):
    pass


@pytest.fixture
def workload(spawn):
    return lambda *args: spawn(Workload, *args, "--touch-interval-s", "30")


def buffer_vma(pid: int, address: int):
    """The numa_maps line of the workload's buffer: its own VMA starts there."""
    vmas = [v for v in read_numa_maps(LinuxHost(), pid).vmas if v.start == address]
    assert len(vmas) == 1, f"no VMA starts at {address:#x}"
    return vmas[0]


def resident_by_node(status: list[int]) -> dict[int, int]:
    return dict(Counter(s for s in status if s >= 0))


@pytest.mark.parametrize("args, touched_mib", [
    (["--mib", "64", "--no-thp"], 64),
    (["--mib", "64", "--thp"], 64),
    (["--mib", "48", "--touched-mib", "32", "--zero-mib", "8", "--no-thp"], 32),
], ids=["base-pages", "thp", "zero-page-and-untouched"])
def test_numa_maps_agrees_with_page_nodes(workload, args, touched_mib):
    w = workload(*args, "--node", "1", "--cpunode", "1")
    if "--thp" in args and anon_huge_kib(w.pid, w.address) == 0:
        pytest.skip("no THP could be allocated")
    vma = buffer_vma(w.pid, w.address)
    status = page_nodes(w.pid, w.pages())

    assert vma.page_size_bytes == 4096  # THP inside a 4 kB VMA is still counted in 4 kB pages
    assert dict(vma.pages_by_node) == resident_by_node(status) == {1: touched_mib * MIB // 4096}
    counts = Counter(status)
    assert counts[-14] == (8 * MIB // 4096 if "--zero-mib" in args else 0)   # -EFAULT: zero page
    assert counts[-2] == w.size // 4096 - touched_mib * MIB // 4096 - counts[-14]  # -ENOENT


def test_numa_maps_follows_a_partial_move(workload):
    w = workload("--mib", "32", "--no-thp", "--node", "1", "--cpunode", "1")
    third = w.pages()[: len(w.pages()) // 3]
    assert set(move_pages(w.pid, third, [0] * len(third))) == {0}

    vma = buffer_vma(w.pid, w.address)
    status = page_nodes(w.pid, w.pages())
    assert dict(vma.pages_by_node) == resident_by_node(status) == {0: len(third), 1: 8192 - len(third)}


def test_numa_maps_agrees_for_hugetlb(workload, hugepages):
    w = workload("--mib", "16", "--hugetlb", "--node", "1", "--cpunode", "1")
    vma = buffer_vma(w.pid, w.address)
    assert vma.huge and vma.page_size_bytes == HUGE
    status = page_nodes(w.pid, list(range(w.address, w.end, HUGE)))
    assert dict(vma.pages_by_node) == resident_by_node(status) == {1: 8}
