"""autonumad.act.syscalls and autonumad.act.affinity: pure parts table-driven, syscalls for real.

The real-kernel tests run on this (single-node) host against child
processes started from tests/hardware/workload.py: querying and "moving"
to node 0 works here, as do all the error paths (bad node, missing or
exiting process) and affinity on every thread. Moves between nodes are
in tests/hardware/ (the 2node guest).
"""

from __future__ import annotations

import errno
from array import array
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad.act import syscalls
from autonumad.act.affinity import (
    AffinityResult,
    CgroupEntry,
    cpuset_cpus,
    get_process_affinity,
    parse_proc_cgroup,
    set_process_affinity,
)
from autonumad.errors import AccessDenied, ParseError, ProcessGone
from autonumad.host import Host, LinuxHost
from autonumad.readers.lists import parse_list
from hardware.workload import Workload, thread_cpus  # tests/hardware/workload.py: the test workload

PAGE = 4096
MIB = 1 << 20


# --- helpers -------------------------------------------------------------------

@pytest.fixture
def workload(spawn):
    return lambda *args: spawn(Workload, *args)


@pytest.fixture(scope="module", autouse=True)
def numa_syscalls_available():
    # A kernel without CONFIG_NUMA answers ENOSYS; nothing here can run there.
    buf = bytearray(PAGE)
    try:
        syscalls.page_nodes(0, [id(buf) & ~(PAGE - 1)])
    except OSError as e:
        if e.errno == errno.ENOSYS:
            pytest.skip("kernel without NUMA syscalls (ENOSYS)")


def dead_pid() -> int:
    """A pid that is not in use: a reaped child's."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# --- pure parts ------------------------------------------------------------------

@pytest.mark.parametrize("status, target, to_move, already, absent, failed", [
    ([], 0, [], 0, 0, {}),
    ([0, 0, 0], 0, [], 3, 0, {}),
    ([1, 0, 1], 0, [0, 2], 1, 0, {}),
    ([-errno.ENOENT, 1, -errno.EFAULT], 0, [1], 0, 1, {"EFAULT": 1}),
    ([2, -errno.EACCES, -errno.EBUSY, 2], 2, [], 2, 0, {"EACCES": 1, "EBUSY": 1}),
    ([syscalls.NOT_REPORTED, 3], 0, [1], 0, 0, {"EAGAIN": 1}),
], ids=["empty", "all-placed", "two-elsewhere", "absent-and-zero-page", "errors-on-target",
        "not-reported"])
def test_classify_query(status, target, to_move, already, absent, failed):
    got = syscalls.classify_query(status, target)
    assert got == (to_move, already, absent, Counter(failed))


@given(st.lists(st.one_of(st.integers(-140, 8), st.just(syscalls.NOT_REPORTED)), max_size=200),
       st.integers(0, 8))
def test_classify_query_accounts_for_every_page(status, target):
    to_move, already, absent, failed = syscalls.classify_query(status, target)
    assert len(to_move) + already + absent + sum(failed.values()) == len(status)
    assert all(status[i] >= 0 and status[i] != target for i in to_move)


def _classify_one_by_one(status, target):
    """classify_query as a loop over every page: the reference its counted form must equal."""
    to_move, already, absent, failed = [], 0, 0, Counter()
    for i, s in enumerate(status):
        if s == target:
            already += 1
        elif s >= 0:
            to_move.append(i)
        elif s == -errno.ENOENT:
            absent += 1
        else:
            failed[syscalls.errno_name(s)] += 1
    return to_move, already, absent, failed


_STATUS = st.one_of(st.integers(-140, 8), st.just(syscalls.NOT_REPORTED), st.just(-errno.EAGAIN))


@given(st.one_of(st.lists(_STATUS, max_size=200),
                 # whole batches on one node, the common case the counted form takes without a loop
                 st.builds(lambda n, k: [n] * k, st.integers(0, 3), st.integers(0, 300))),
       st.integers(0, 3))
def test_classify_query_equals_the_page_by_page_loop(status, target):
    assert syscalls.classify_query(array("i", status), target) == _classify_one_by_one(status, target)


@given(st.lists(st.integers(0, 3), max_size=120), st.integers(0, 3), st.data())
def test_tally_moved_equals_the_page_by_page_loop(before, target, data):
    to_move = [i for i, s in enumerate(before) if s != target]
    arrived = data.draw(st.booleans())
    after = [target] * len(to_move) if arrived else data.draw(
        st.lists(st.one_of(st.integers(0, 3), _STATUS), min_size=len(to_move), max_size=len(to_move)))
    t = syscalls._Tally(PAGE)
    syscalls.tally_moved(array("i", before), to_move, array("i", after), target, t)
    moved, moved_from, failed = 0, Counter(), Counter()
    for k, s in enumerate(after):
        if s == target:
            moved += 1
            moved_from[before[to_move[k]]] += 1
        elif s >= 0:
            failed["EAGAIN"] += 1
        else:
            failed[syscalls.errno_name(s)] += 1
    assert (t.moved, +t.moved_from, +t.failed) == (moved, +moved_from, +failed)


@pytest.mark.parametrize("nodes, words, maxnode", [
    ([], [0], 65),
    ([0], [1], 65),
    ([1, 3], [0b1010], 65),
    ([63], [1 << 63], 65),
    ([64], [0, 1], 129),
    ([0, 130], [1, 0, 1 << 2], 193),
], ids=["empty", "node0", "nodes1,3", "node63", "node64-second-word", "sparse-third-word"])
def test_nodemask_layout_and_maxnode(nodes, words, maxnode):
    # maxnode is the mask's bit count + 1: get_nodes() in mm/mempolicy.c
    # starts with --maxnode.
    mask, got_maxnode = syscalls._nodemask(nodes)
    assert list(mask) == words
    assert got_maxnode == maxnode


@given(st.sets(st.integers(0, 1023), max_size=20))
def test_nodemask_round_trip(nodes):
    mask, maxnode = syscalls._nodemask(nodes)
    assert maxnode == len(mask) * 64 + 1
    decoded = {i * 64 + b for i, w in enumerate(mask) for b in range(64) if w >> b & 1}
    assert decoded == nodes


@pytest.mark.parametrize("status, name", [
    (-errno.EACCES, "EACCES"), (-errno.EBUSY, "EBUSY"), (-errno.EFAULT, "EFAULT"),
    (syscalls.NOT_REPORTED, "EAGAIN"), (-4000, "E4000"),
], ids=["eacces", "ebusy", "efault", "not-reported", "unknown"])
def test_errno_name(status, name):
    assert syscalls.errno_name(status) == name


def test_syscall_numbers_match_the_kernel_tables():
    # arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
    assert syscalls.SYSCALL_NUMBERS["x86_64"] == {
        "mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239,
        "migrate_pages": 256, "move_pages": 279}
    assert syscalls.SYSCALL_NUMBERS["aarch64"] == {
        "mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237,
        "migrate_pages": 238, "move_pages": 239}


@pytest.mark.parametrize("kwargs, message", [
    (dict(start=PAGE + 1), "aligned"),
    (dict(page_size=3000), "power of two"),
    (dict(end=0), "end < start"),
    (dict(batch_pages=0), "batch_pages"),
    (dict(max_pages=-1), "max_pages"),
], ids=["misaligned-start", "bad-page-size", "end-before-start", "zero-batch", "negative-budget"])
def test_move_range_rejects_bad_arguments(kwargs, message):
    args = dict(pid=os.getpid(), start=PAGE, end=4 * PAGE, page_size=PAGE, target_node=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        syscalls.move_range(**args)


@pytest.mark.parametrize("page_size, unit", [
    (4096, 2 * MIB), (2 * MIB, 2 * MIB), (1 << 30, 1 << 30),
], ids=["base-page-pmd", "hugetlb-2M", "hugetlb-1G"])
def test_folio_unit_bytes(page_size, unit):
    if os.sysconf("SC_PAGE_SIZE") != 4096:
        pytest.skip("table written for 4 KiB base pages")
    assert syscalls.folio_unit_bytes(page_size) == unit


def test_move_pages_rejects_bad_flags_and_lengths():
    with pytest.raises(ValueError, match="flags"):
        syscalls.move_pages(0, [0], [0], flags=syscalls.MPOL_MF_STRICT)
    with pytest.raises(ValueError, match="length"):
        syscalls.move_pages(0, [0, PAGE], [0])


# --- /proc/<pid>/cgroup and the cpuset ------------------------------------------------

@pytest.mark.parametrize("text, entries", [
    ("0::/\n", [CgroupEntry(0, (), "/")]),
    ("0::/system.slice/foo.service\n", [CgroupEntry(0, (), "/system.slice/foo.service")]),
    ("9:name=systemd:/\n3:cpuset:/docker/ab\n1:cpu,cpuacct:/\n0::/\n",
     [CgroupEntry(9, ("name=systemd",), "/"), CgroupEntry(3, ("cpuset",), "/docker/ab"),
      CgroupEntry(1, ("cpu", "cpuacct"), "/"), CgroupEntry(0, (), "/")]),
    ("0::/odd:name\n", [CgroupEntry(0, (), "/odd:name")]),
    ("", []),
], ids=["v2-root", "v2-service", "hybrid", "colon-in-path", "empty"])
def test_parse_proc_cgroup(text, entries):
    assert parse_proc_cgroup(text) == tuple(entries)


@pytest.mark.parametrize("text", ["garbage\n", "x::/\n", "0:cpuset\n", "0::relative\n", "-1::/\n"],
                         ids=["no-colons", "bad-id", "one-colon", "relative-path", "negative-id"])
def test_parse_proc_cgroup_rejects(text):
    with pytest.raises(ParseError):
        parse_proc_cgroup(text)


@given(st.text(max_size=200))
def test_parse_proc_cgroup_never_fails_otherwise(text):
    try:
        parse_proc_cgroup(text)
    except ParseError:
        pass


HYBRID_CGROUP = "9:name=systemd:/user.slice\n3:cpuset:/docker/ab:c\n1:cpu,cpuacct:/\n0::/user.slice\n"


@given(st.integers(0, len(HYBRID_CGROUP)))
def test_parse_proc_cgroup_truncated_anywhere(cut):
    try:
        entries = parse_proc_cgroup(HYBRID_CGROUP[:cut])
    except ParseError:
        return
    assert len(entries) <= 4


@settings(max_examples=50)
@given(st.text(alphabet="0123456789:/,abcdey=\n", max_size=120))
def test_parse_proc_cgroup_truncated_lines(text):
    try:
        entries = parse_proc_cgroup(text)
    except ParseError:
        return
    assert all(e.path.startswith("/") for e in entries)


def write_tree(root: Path, files: dict[str, str]) -> Host:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Host(root)


@pytest.mark.parametrize("files, expected", [
    ({"/proc/7/cgroup": "0::/a/b\n", "/sys/fs/cgroup/a/b/cpuset.cpus.effective": "2-3\n",
      "/sys/devices/system/cpu/online": "0-7\n"}, {2, 3}),
    ({"/proc/7/cgroup": "0::/a/b\n", "/sys/fs/cgroup/a/cpuset.cpus.effective": "4\n",
      "/sys/devices/system/cpu/online": "0-7\n"}, {4}),
    ({"/proc/7/cgroup": "3:cpuset:/k8s/pod\n0::/\n",
      "/sys/fs/cgroup/cpuset/k8s/pod/cpuset.effective_cpus": "1,5\n",
      "/sys/devices/system/cpu/online": "0-7\n"}, {1, 5}),
    ({"/proc/7/cgroup": "0::/x\n", "/sys/fs/cgroup/unified/x/cpuset.cpus.effective": "6-7\n"}, {6, 7}),
    ({"/proc/7/cgroup": "0::/x\n", "/sys/fs/cgroup/x/cpuset.cpus.effective": "\n",
      "/sys/devices/system/cpu/online": "0-3\n"}, {0, 1, 2, 3}),
    ({"/proc/7/cgroup": "0::/x\n", "/sys/devices/system/node/node0/cpulist": "0-1\n",
      "/sys/devices/system/node/node1/cpulist": "2-3\n"}, {0, 1, 2, 3}),
    ({"/proc/7/cgroup": "0::/x\n"}, None),
], ids=["v2-own", "v2-parent", "v1-cpuset", "hybrid-unified", "empty-file-falls-back-online",
        "node-cpulists", "nothing-known"])
def test_cpuset_cpus(tmp_path, files, expected):
    host = write_tree(tmp_path, files)
    got = cpuset_cpus(host, 7)
    assert got == (frozenset(expected) if expected is not None else None)


def test_cpuset_cpus_of_missing_process(tmp_path):
    host = write_tree(tmp_path, {"/sys/devices/system/cpu/online": "0\n"})
    with pytest.raises(ProcessGone):
        cpuset_cpus(host, 99)


# --- set_process_affinity over a tree: the walk's logic ----------------------------------

class TreeHost(Host):
    """A Host over a tmp_path tree whose thread affinities live in a dict.

    `spawn` maps a tid to threads that appear (new task dirs) right after
    that tid is set, as a running process would create them; `vanish`
    tids disappear just before being set; `denied` refuse.
    """

    def __init__(self, root: Path, pid: int, tids: list[int], *, spawn=None, vanish=(), denied=()):
        super().__init__(root)
        self.pid = pid
        self.spawn = dict(spawn or {})
        self.vanish = set(vanish)
        self.denied = set(denied)
        self.affinity: dict[int, frozenset[int]] = {}
        for t in tids:
            self._add(t)

    def _add(self, tid: int) -> None:
        (self.root / f"proc/{self.pid}/task/{tid}").mkdir(parents=True, exist_ok=True)

    def set_thread_affinity(self, tid, cpus):
        if tid in self.vanish:
            (self.root / f"proc/{self.pid}/task/{tid}").rmdir()
            raise ProcessGone(tid, f"/proc/{tid}")
        if tid in self.denied:
            raise AccessDenied(tid, f"/proc/{tid}")
        self.affinity[tid] = frozenset(cpus)
        for new in self.spawn.pop(tid, []):
            self._add(new)

    def thread_affinity(self, tid):
        if tid not in self.affinity:
            raise ProcessGone(tid, f"/proc/{tid}")
        return self.affinity[tid]


def tree(tmp_path, tids, online="0-3", cgroup_cpus=None, **kw) -> TreeHost:
    files = {"/proc/10/cgroup": "0::/app\n", "/sys/devices/system/cpu/online": online + "\n"}
    if cgroup_cpus is not None:
        files["/sys/fs/cgroup/app/cpuset.cpus.effective"] = cgroup_cpus + "\n"
    write_tree(tmp_path, files)
    return TreeHost(tmp_path, 10, tids, **kw)


@pytest.mark.parametrize("tids, kw, cpus, cgroup_cpus, expected, set_tids", [
    ([10, 11, 12], {}, {0, 1}, None, AffinityResult(frozenset({0, 1}), 3, 0, {}), [10, 11, 12]),
    ([10, 11], {}, {0, 1, 2}, "1-3", AffinityResult(frozenset({1, 2}), 2, 0, {}), [10, 11]),
    ([10, 11], {"spawn": {11: [12, 13]}, }, {2}, None, AffinityResult(frozenset({2}), 4, 0, {}),
     [10, 11, 12, 13]),
    ([10, 11, 12], {"vanish": [11]}, {3}, None, AffinityResult(frozenset({3}), 2, 1, {}), [10, 12]),
    ([10, 11], {"denied": [11]}, {0}, None, AffinityResult(frozenset({0}), 1, 0, {"EPERM": 1}), [10]),
    ([10, 11], {}, {0}, "2-3", AffinityResult(frozenset(), 0, 0, {"EINVAL": 2}), []),
], ids=["all-threads", "clipped-to-cpuset", "threads-born-during-walk", "thread-exits",
        "one-denied", "nothing-allowed"])
def test_set_process_affinity_walk(tmp_path, tids, kw, cpus, cgroup_cpus, expected, set_tids):
    host = tree(tmp_path, tids, cgroup_cpus=cgroup_cpus, **kw)
    assert set_process_affinity(host, 10, cpus) == expected
    assert sorted(host.affinity) == set_tids
    assert all(v == expected.cpus for v in host.affinity.values())


def test_set_process_affinity_all_denied_raises(tmp_path):
    host = tree(tmp_path, [10, 11], denied=[10, 11])
    with pytest.raises(AccessDenied):
        set_process_affinity(host, 10, {0})


def test_set_process_affinity_gone_process_raises(tmp_path):
    # /proc/10/cgroup still readable, the task list already gone: the
    # process exited between the two reads.
    host = tree(tmp_path, [])
    with pytest.raises(ProcessGone):
        set_process_affinity(host, 10, {0})


def test_set_process_affinity_walk_is_bounded(tmp_path):
    # Every thread set spawns another: the walk stops after MAX_LIST_ROUNDS listings.
    from autonumad.act.affinity import MAX_LIST_ROUNDS

    chain = {100 + i: [100 + i + 1] for i in range(50)}
    host = tree(tmp_path, [10, 100], spawn=chain)
    r = set_process_affinity(host, 10, {1})
    assert r.threads_set == MAX_LIST_ROUNDS + 1  # tid 10 plus one new thread per round
    assert (tmp_path / f"proc/10/task/{100 + MAX_LIST_ROUNDS}").is_dir()


# --- the real kernel: page queries and moves --------------------------------------------

def test_page_nodes_of_a_child_buffer(workload):
    w = workload("--mib", "16", "--touched-mib", "8", "--zero-mib", "4", "--touch-interval-s", "5")
    status = syscalls.page_nodes(w.pid, w.pages())
    assert Counter(status[:2048]) == {0: 2048}                   # written: on node 0
    assert Counter(status[2048:3072]) == {-errno.EFAULT: 1024}   # read only: the zero page
    assert Counter(status[3072:]) == {-errno.ENOENT: 1024}       # never touched


def test_range_nodes_counts_populated_bytes_exactly_or_by_sample(workload):
    # 16 MiB: the first 8 written (on node 0), 4 read (zero page), 4 never touched.
    w = workload("--mib", "16", "--touched-mib", "8", "--zero-mib", "4", "--touch-interval-s", "5")
    whole, written, tail = (w.address, w.end), (w.address, w.address + 8 * MIB), (w.address + 12 * MIB, w.end)
    assert syscalls.range_nodes(w.pid, [whole, written, tail], PAGE, 1 << 20) == [{0: 8 * MIB}, {0: 8 * MIB}, {}]
    # 8,192 pages asked for with 1,000 samples: every 9th page stands for 9 (the last for what is left).
    (sampled,) = syscalls.range_nodes(w.pid, [written], PAGE, 1000)
    assert sampled == {0: 8 * MIB}
    (sampled,) = syscalls.range_nodes(w.pid, [whole], PAGE, 1000)
    assert abs(sampled[0] - 8 * MIB) <= 9 * PAGE


def test_range_nodes_of_a_gone_process():
    with pytest.raises(ProcessGone):
        syscalls.range_nodes(dead_pid(), [(PAGE, 5 * PAGE)], PAGE, 100)


def test_move_pages_to_the_node_they_are_on(workload):
    w = workload("--mib", "8", "--touch-interval-s", "5")
    pages = w.pages()
    assert syscalls.move_pages(w.pid, pages, [0] * len(pages)) == [0] * len(pages)


def test_move_range_counts_every_page(workload):
    w = workload("--mib", "24", "--touched-mib", "16", "--zero-mib", "4", "--touch-interval-s", "5")
    r = syscalls.move_range(w.pid, w.address, w.address + w.size, PAGE, 0, batch_pages=1000)
    assert (r.requested, r.moved, r.already, r.absent) == (6144, 0, 4096, 1024)
    assert r.failed == {"EFAULT": 1024}
    assert r.moved_from == {} and r.gone is False and r.moved_bytes == 0


def test_move_range_partial_trailing_page_is_included(workload):
    w = workload("--mib", "1", "--touch-interval-s", "5")
    r = syscalls.move_range(w.pid, w.address, w.address + 3 * PAGE + 1, PAGE, 0)
    assert r.requested == 4 and r.already == 4


def test_bad_node_is_enodev(workload):
    w = workload("--mib", "1", "--touch-interval-s", "5")
    # Beyond MAX_NUMNODES, and a node id that is not online here: both are
    # "no memory on that node" (do_pages_move: !node_state(node, N_MEMORY)).
    offline = 1 + max(int(n[4:]) for n in os.listdir("/sys/devices/system/node")
                      if n.startswith("node") and n[4:].isdigit())
    for node in (4000, offline):
        with pytest.raises(OSError) as e:
            syscalls.move_pages(w.pid, w.pages()[:8], [node] * 8)
        assert e.value.errno == errno.ENODEV
    # move_range passes it on: it is the caller's mistake, not an outcome.
    with pytest.raises(OSError) as e:
        syscalls.move_range(w.pid, w.address, w.address + w.size, PAGE, offline)
    assert e.value.errno == errno.ENODEV


@pytest.mark.parametrize("call", [
    lambda pid: syscalls.page_nodes(pid, [PAGE]),
    lambda pid: syscalls.move_pages(pid, [PAGE], [0]),
    lambda pid: syscalls.move_range(pid, PAGE, 5 * PAGE, PAGE, 0),
    lambda pid: syscalls.migrate_pages(pid, [0], [0]),
], ids=["page_nodes", "move_pages", "move_range", "migrate_pages"])
def test_missing_process_is_process_gone(call):
    with pytest.raises(ProcessGone):
        call(dead_pid())


def test_zombie_is_process_gone(workload):
    # Killed but not reaped: the pid exists, its mm does not (EINVAL).
    w = workload("--mib", "1", "--touch-interval-s", "5")
    os.kill(w.pid, signal.SIGKILL)
    while Path(f"/proc/{w.pid}/stat").read_text().split(")")[1].split()[0] != "Z":
        time.sleep(0.01)
    with pytest.raises(ProcessGone):
        syscalls.page_nodes(w.pid, [w.address])


@pytest.mark.parametrize("reap", [False, True], ids=["zombie-EINVAL", "reaped-ESRCH"])
def test_child_exiting_between_batches_is_gone_not_an_error(workload, reap):
    # A 64 GiB range from the child's 64 MiB buffer on, mostly unmapped
    # (-EFAULT, cheap to query): 32,768 batches of 2 MiB, about 2 s here.
    # The child is killed 0.1 s in, long after the first batch.
    # Unreaped it is a zombie without an mm (EINVAL); reaped, its pid is
    # free (ESRCH). Either way move_range returns what it did.
    w = workload("--mib", "64", "--touch-interval-s", "30")
    span = 64 << 30

    def kill():
        os.kill(w.pid, signal.SIGKILL)
        if reap:
            w.proc.wait()

    killer = threading.Timer(0.1, kill)
    killer.start()
    t0 = time.perf_counter()
    try:
        r = syscalls.move_range(w.pid, w.address, w.address + span, PAGE, 0, batch_pages=512)
    finally:
        killer.join()
    print(f"move_range stopped after {time.perf_counter() - t0:.3f} s, {r.requested} pages")
    assert r.gone is True
    assert 0 < r.requested < span // PAGE
    # Whole batches only (the unfinished one is not counted), and batches
    # end on 2 MiB boundaries.
    assert (w.address + r.requested * PAGE) % (2 * MIB) == 0
    assert r.already >= min(r.requested, w.size // PAGE)  # the buffer's pages came first


def test_max_pages_does_not_limit_pages_already_placed(workload):
    # The budget counts pages sent for moving; here none need it.
    w = workload("--mib", "4", "--touch-interval-s", "5")
    r = syscalls.move_range(w.pid, w.address, w.address + w.size, PAGE, 0, max_pages=1)
    assert r.requested == r.already == 1024


def test_migrate_pages_within_node_0(workload):
    w = workload("--mib", "8", "--touch-interval-s", "5")
    assert syscalls.migrate_pages(w.pid, [0], [0]) == 0
    with pytest.raises(OSError) as e:
        syscalls.migrate_pages(w.pid, [0], [4000])
    assert e.value.errno == errno.EINVAL


def test_set_and_get_mempolicy_in_a_thread():
    # The policy is per thread: use a throwaway one.
    seen = {}

    def run():
        syscalls.set_mempolicy(syscalls.MPOL_BIND, [0])
        seen["bind"] = syscalls.get_mempolicy_self()
        syscalls.set_mempolicy(syscalls.MPOL_DEFAULT)
        seen["default"] = syscalls.get_mempolicy_self()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == {"bind": (syscalls.MPOL_BIND, frozenset({0})),
                    "default": (syscalls.MPOL_DEFAULT, frozenset())}


def test_workload_binds_its_first_touch(workload):
    w = workload("--mib", "4", "--node", "0", "--touch-interval-s", "5")
    assert set(syscalls.page_nodes(w.pid, w.pages())) == {0}


# --- the real kernel: affinity on every thread --------------------------------------------

def online_cpus() -> frozenset[int]:
    return frozenset(parse_list(Path("/sys/devices/system/cpu/online").read_text()))


def test_cpuset_cpus_of_this_host(workload):
    w = workload("--mib", "1", "--touch-interval-s", "5")
    allowed = cpuset_cpus(LinuxHost(), w.pid)
    # A fresh child's affinity lies within its cpuset, which lies within
    # the online CPUs.
    assert frozenset(os.sched_getaffinity(w.pid)) <= allowed <= online_cpus()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_affinity_on_every_thread_of_a_child(workload):
    w = workload("--mib", "4", "--threads", "4", "--touch-interval-s", "0.05")
    host = LinuxHost()
    tids = host.tids(w.pid)
    assert len(tids) >= 5  # main + 4 touching threads (+ the stdin watcher)

    r = set_process_affinity(host, w.pid, {0})
    assert r == AffinityResult(frozenset({0}), len(tids), 0, {})
    assert set(thread_cpus(w.pid).values()) == {"0"}
    assert set(get_process_affinity(host, w.pid).values()) == {frozenset({0})}

    # A thread started afterwards inherits the mask from its creator.
    os.kill(w.pid, signal.SIGUSR1)
    ev = w.next_event()
    assert ev["event"] == "thread"
    assert thread_cpus(w.pid)[ev["tid"]] == "0"

    both = sorted(os.sched_getaffinity(0))[:2]
    r = set_process_affinity(host, w.pid, both)
    assert r.threads_set == len(tids) + 1 and r.threads_gone == 0
    want = f"{both[0]}-{both[1]}" if both[1] == both[0] + 1 else f"{both[0]},{both[1]}"
    assert set(thread_cpus(w.pid).values()) == {want}


def test_affinity_of_missing_process():
    with pytest.raises(ProcessGone):
        set_process_affinity(LinuxHost(), dead_pid(), {0})
    with pytest.raises(ProcessGone):
        get_process_affinity(LinuxHost(), dead_pid())
