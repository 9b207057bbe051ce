"""The page size and the clock tick rate come from the host; the fake host answers the whole Host
interface, range_nodes included, so the planner's placement path runs on it unchanged."""

from __future__ import annotations

from autonumad.observe.snapshot import take_snapshot
from autonumad.plan.history import History
from autonumad.sim.fakehost import FakeHost, HostSpec, NodeSpec, ProcessSpec, ThreadSpec, VmaSpec, build_host

GiB = 2**30
BASE = 0x7F0000000000


def spec(utime_ticks=0, pages=None, size_bytes=None):
    return HostSpec(nodes=(NodeSpec((0,), 4 * GiB, 2 * GiB, (10, 20)), NodeSpec((1,), 4 * GiB, 2 * GiB, (20, 10))),
                    processes=(ProcessSpec(100, "app", (ThreadSpec(100, 0, utime_ticks),),
                                           vmas=(VmaSpec(BASE, pages or {0: 100, 1: 300}, size_bytes=size_bytes),)),))


class KiloHzHost(FakeHost):
    """A kernel built with USER_HZ 1000 and 64 KiB pages (arm64 with CONFIG_ARM64_64K_PAGES)."""

    clock_ticks_per_s = 1000
    page_size_bytes = 65536


def cpu_cores(tmp_path, host_class) -> float:
    history = History()
    build_host(tmp_path / "a", spec(utime_ticks=0))
    build_host(tmp_path / "b", spec(utime_ticks=1000))
    history.observe(take_snapshot(host_class(tmp_path / "a")), 0.0)
    history.observe(take_snapshot(host_class(tmp_path / "b")), 10.0)
    (h,) = history.processes.values()
    return h.cpu_cores


def test_cpu_use_is_counted_in_the_hosts_clock_ticks(tmp_path):
    assert cpu_cores(tmp_path / "100", FakeHost) == 1.0  # 1000 ticks at 100 Hz over 10 s
    assert cpu_cores(tmp_path / "1000", KiloHzHost) == 0.1


def test_pages_are_counted_in_the_hosts_page_size(tmp_path):
    build_host(tmp_path, spec(pages={0: 32, 1: 16}))  # 4 KiB pages on the fake tree's lines
    assert take_snapshot(FakeHost(tmp_path)).process(100).pages_by_node == {0: 32, 1: 16}
    snap = take_snapshot(KiloHzHost(tmp_path))
    assert snap.page_size_bytes == 65536 and snap.process(100).pages_by_node == {0: 2, 1: 1}


def test_fake_range_nodes_spreads_each_vmas_pages_over_it(tmp_path):
    host = build_host(tmp_path, spec(pages={0: 100, 1: 300}, size_bytes=400 * 4096))
    first_half, second_quarter = (BASE, BASE + 200 * 4096), (BASE + 200 * 4096, BASE + 300 * 4096)
    assert host.range_nodes(100, [first_half, second_quarter], 1) == [
        {0: 50 * 4096, 1: 150 * 4096}, {0: 25 * 4096, 1: 75 * 4096}]
