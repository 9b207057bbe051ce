"""The procfs readers against the running kernel, on the test process itself.

Read-only and deterministic enough for the default run on any Linux host
(one node or many): each test checks a reader's output against a second,
independent source (os.sched_getaffinity, os.getpid, threading, mmap, the
other readers). Multi-node behaviour is covered by tests/hardware/ in the
NUMA VM.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading

import pytest

from autonumad.host import LinuxHost
from autonumad.readers.cgroup import read_cgroup
from autonumad.readers.meminfo import read_meminfo
from autonumad.readers.numa_maps import read_numa_maps
from autonumad.readers.proc_maps import read_maps
from autonumad.readers.proc_stat import read_proc_stat
from autonumad.readers.proc_status import read_status
from autonumad.readers.task_stat import read_stat, read_thread_stats
from autonumad.readers.vmstat import read_vmstat
from autonumad.readers.zoneinfo import node_watermarks, read_zoneinfo

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/proc/self/numa_maps"),
    reason="needs a Linux /proc with numa_maps (CONFIG_NUMA)")

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def host():
    return LinuxHost()


def test_numa_maps_sees_a_fresh_mapping(host):
    import ctypes

    size = 64 * PAGE
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for off in range(0, size, PAGE):
            buf[off] = 1  # first touch: every page becomes resident
        view = ctypes.c_char.from_buffer(buf)
        addr = ctypes.addressof(view)
        del view  # release the export so the mapping can be closed
        # numa_maps has only starts; find our VMA (possibly merged with a
        # neighbour) through maps.
        (mapping,) = [r for r in read_maps(host, os.getpid()) if r.start <= addr < r.end]
        (vma,) = [v for v in read_numa_maps(host, os.getpid()).vmas if v.start == mapping.start]
        assert mapping.path is None and vma.path is None and not vma.is_file
        assert vma.anon_pages >= 64 and vma.total_pages >= 64
        assert vma.page_size_bytes == PAGE
    finally:
        buf.close()


def test_numa_maps_and_maps_agree_on_starts(host):
    pid = os.getpid()
    starts = {r.start for r in read_maps(host, pid)}
    nm = read_numa_maps(host, pid)
    assert nm.vmas
    # Every numa_maps VMA is a maps VMA (maps also lists [vsyscall], which numa_maps skips).
    assert {v.start for v in nm.vmas} <= starts


def test_numa_maps_total_close_to_rss(host):
    pid = os.getpid()
    pages = sum(read_numa_maps(host, pid).pages_by_node(PAGE).values())
    rss = read_status(host, pid).vm_rss_bytes
    # Not equal (the process keeps allocating between the two reads, and
    # the accounting differs slightly), but a unit error would be off by
    # 4x or 1024x.
    assert rss is not None
    assert 0.75 < pages * PAGE / rss < 1.25


def test_status_matches_os(host):
    status = read_status(host, os.getpid())
    assert status.pid == status.tgid == os.getpid()
    assert status.ppid == os.getppid()
    assert status.uids[0] == os.getuid() and status.uids[1] == os.geteuid()
    assert set(status.cpus_allowed) == os.sched_getaffinity(0)
    assert status.mems_allowed, "a task always has an allowed node"
    assert status.state in "RS"
    assert status.threads == threading.active_count()


def test_kernel_thread_has_no_rss(host):
    # kthreadd is pid 2 whenever the pid namespace is the host's.
    try:
        status = read_status(host, 2)
    except Exception:
        pytest.skip("no kthreadd visible (pid namespace)")
    if status.name != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here")
    assert status.vm_rss_bytes is None
    assert read_numa_maps(host, 2).vmas == ()


def test_thread_stats_list_every_thread(host):
    release = threading.Event()
    ready = threading.Event()
    tids: list[int] = []

    def worker():
        tids.append(threading.get_native_id())
        ready.set()
        release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    try:
        ready.wait(10)
        stats = read_thread_stats(host, os.getpid())
        assert {os.getpid(), tids[0]} <= set(stats)
        allowed = os.sched_getaffinity(0)
        for s in stats.values():
            assert s.processor in allowed
            assert s.num_threads == len(stats)
        assert read_stat(host, os.getpid()).starttime_ticks == stats[os.getpid()].starttime_ticks
    finally:
        release.set()
        t.join()


def test_host_level_files(host):
    vmstat = read_vmstat(host)
    assert vmstat["nr_free_pages"] >= 0
    meminfo = read_meminfo(host)
    assert 0 < meminfo["MemFree"] <= meminfo["MemTotal"]
    zones = read_zoneinfo(host)
    marks = node_watermarks(zones)
    assert marks and all(m.min_pages <= m.low_pages <= m.high_pages for m in marks.values())
    free_pages = sum(m.free_pages for m in marks.values())
    # The same kernel counter (NR_FREE_PAGES) read a moment apart through two
    # files. (/proc/meminfo's MemFree is not compared: some virtualised
    # kernels report it from a different source.)
    assert 0.5 < free_pages / vmstat["nr_free_pages"] < 2
    cpus = read_proc_stat(host)
    assert set(cpus) >= os.sched_getaffinity(0)


def test_cgroup_path(host):
    assert read_cgroup(host, os.getpid()).startswith("/")
