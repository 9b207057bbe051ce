"""Table-driven tests for the procfs readers (autonumad/readers/*).

Samples marked "real" are excerpts from a Linux 6.18 kernel (single node);
the two-node numa_maps sample is written by hand in the kernel's format to
cover what a single-node host cannot show (interleave/bind policies, huge
pages, escaped paths, unknown tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autonumad.errors import HostError, MalformedProcFile, ParseError, ProcessGone
from autonumad.host import Host
from autonumad.readers.cgroup import UNKNOWN_CGROUP, parse_cgroup, read_cgroup, read_cgroup_or_unknown
from autonumad.readers.meminfo import parse_meminfo, read_meminfo
from autonumad.readers.numa_maps import NumaMaps, Vma, parse_numa_maps, read_numa_maps
from autonumad.readers.proc_maps import MapRange, parse_maps, read_maps
from autonumad.readers.proc_stat import CpuTimes, cpu_busy_fraction, parse_proc_stat, read_proc_stat
from autonumad.readers.proc_status import parse_status, read_status
from autonumad.readers.task_stat import parse_stat, read_stat, read_thread_stats
from autonumad.readers.vmstat import parse_vmstat, read_vmstat
from autonumad.readers.zoneinfo import NodeWatermarks, Zone, node_watermarks, parse_zoneinfo, read_zoneinfo


def make_host(root: Path, files: dict[str, str]) -> Host:
    """A host tree under `root` holding exactly `files` (host path -> text)."""
    for host_path, text in files.items():
        p = root / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Host(root)


# --------------------------------------------------------------------------
# numa_maps

REAL_NUMA_MAPS = """\
5584da8e1000 default file=/usr/bin/head mapped=2 N0=2 kernelpagesize_kB=4
5584da8ec000 default file=/usr/bin/head anon=1 dirty=1 active=0 N0=1 kernelpagesize_kB=4
5584fb98b000 default heap anon=4 dirty=4 active=0 N0=4 kernelpagesize_kB=4
7f8fe9359000 default file=/usr/lib/locale/C.utf8/LC_CTYPE mapped=32 mapmax=7 N0=32 kernelpagesize_kB=4
7f8fe93b9000 default anon=2 dirty=2 active=0 N0=2 kernelpagesize_kB=4
7fff350b2000 default stack anon=4 dirty=4 active=1 N0=4 kernelpagesize_kB=4
"""

TWO_NODE_NUMA_MAPS = """\
00400000 default file=/usr/bin/app mapped=10 mapmax=2 N0=6 N1=4 kernelpagesize_kB=4
01a2b000 default heap anon=300 dirty=300 active=100 N0=100 N1=200 kernelpagesize_kB=4
7f0000000000 interleave:0-1 anon=1024 dirty=1024 N0=512 N1=512 kernelpagesize_kB=4
7f0040000000 bind:1 file=/dev/hugepages/db\\040buffer huge dirty=3 N1=3 kernelpagesize_kB=2048
7f0080000000 prefer:1 anon=5 dirty=5 swapcache=1 writeback=2 N1=5 kernelpagesize_kB=4 future_token=7 shiny
7f00a0000000 local
7ffd1e5f2000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
"""


def one_vma(line: str) -> Vma:
    (vma,) = parse_numa_maps(line + "\n").vmas
    return vma


VMA_CASES = [
    ("real-file-mapped",
     "5584da8e1000 default file=/usr/bin/head mapped=2 N0=2 kernelpagesize_kB=4",
     dict(start=0x5584da8e1000, policy="default", policy_nodes=(), path="/usr/bin/head", is_file=True,
          mapped_pages=2, anon_pages=0, pages_by_node=((0, 2),), page_size_bytes=4096, active_pages=None)),
    ("real-heap",
     "5584fb98b000 default heap anon=4 dirty=4 active=0 N0=4 kernelpagesize_kB=4",
     dict(path="[heap]", is_file=False, anon_pages=4, dirty_pages=4, mapped_pages=0, active_pages=0)),
    ("real-stack",
     "7fff350b2000 default stack anon=4 dirty=4 active=1 N0=4 kernelpagesize_kB=4",
     dict(path="[stack]", is_file=False, active_pages=1)),
    ("real-mapmax",
     "7f8fe9359000 default file=/usr/lib/locale/C.utf8/LC_CTYPE mapped=32 mapmax=7 N0=32 kernelpagesize_kB=4",
     dict(mapmax=7, mapped_pages=32)),
    ("anonymous", "7f8fe93b9000 default anon=2 dirty=2 active=0 N0=2 kernelpagesize_kB=4",
     dict(path=None, is_file=False)),
    ("two-nodes", "01a2b000 default heap anon=300 dirty=300 N0=100 N1=200 kernelpagesize_kB=4",
     dict(start=0x01a2b000, pages_by_node=((0, 100), (1, 200)))),
    ("nodes-out-of-order-sorted", "1000 default N3=1 N1=2 kernelpagesize_kB=4",
     dict(pages_by_node=((1, 2), (3, 1)))),
    ("interleave", "7f0000000000 interleave:0-1 anon=1024 N0=512 N1=512 kernelpagesize_kB=4",
     dict(policy="interleave", policy_nodes=(0, 1), policy_flags="")),
    ("bind-one-node", "1000 bind:1 anon=1 N1=1 kernelpagesize_kB=4",
     dict(policy="bind", policy_nodes=(1,))),
    ("bind-static", "1000 bind=static:0-1 anon=1 N1=1 kernelpagesize_kB=4",
     dict(policy="bind", policy_flags="static", policy_nodes=(0, 1))),
    ("bind-static-balancing", "1000 bind=static|balancing:0,2 anon=1 N2=1 kernelpagesize_kB=4",
     dict(policy="bind", policy_flags="static|balancing", policy_nodes=(0, 2))),
    ("prefer", "1000 prefer:1 anon=5 N1=5 kernelpagesize_kB=4",
     dict(policy="prefer", policy_nodes=(1,))),
    ("prefer-many", "1000 prefer (many):0-1 anon=5 N1=5 kernelpagesize_kB=4",
     dict(policy="prefer (many)", policy_nodes=(0, 1), anon_pages=5)),
    ("prefer-many-relative", "1000 prefer (many)=relative:0-3 N1=5",
     dict(policy="prefer (many)", policy_flags="relative", policy_nodes=(0, 1, 2, 3))),
    ("weighted-interleave", "1000 weighted interleave:0-1 anon=4 N0=2 N1=2 kernelpagesize_kB=4",
     dict(policy="weighted interleave", policy_nodes=(0, 1), pages_by_node=((0, 2), (1, 2)))),
    ("weighted-interleave-static", "1000 weighted interleave=static:1 anon=4 N1=4",
     dict(policy="weighted interleave", policy_flags="static", policy_nodes=(1,))),
    ("local", "1000 local anon=1 N0=1 kernelpagesize_kB=4", dict(policy="local", policy_nodes=())),
    ("unknown-mode-word", "1000 unknown anon=1 N0=1", dict(policy="unknown")),
    ("hugetlb-2m",
     "7f0040000000 bind:1 file=/dev/hugepages/db huge dirty=3 N1=3 kernelpagesize_kB=2048",
     dict(huge=True, page_size_bytes=2 << 20, pages_by_node=((1, 3),), is_file=True)),
    ("hugetlb-1g", "1000 default file=/mnt/huge1g/x huge dirty=1 N0=1 kernelpagesize_kB=1048576",
     dict(huge=True, page_size_bytes=1 << 30)),
    ("escaped-path", "1000 default file=/tmp/my\\040dir/a\\011b\\075c\\012d mapped=1 N0=1",
     dict(path="/tmp/my dir/a\tb=c\nd", is_file=True)),
    ("deleted-file", "1000 default file=/memfd:buf\\040(deleted) anon=1 N0=1",
     dict(path="/memfd:buf (deleted)")),
    ("path-with-unicode-space", "1000 default file=/tmp/a\u00a0b\x0cc mapped=1 N0=1",
     dict(path="/tmp/a\u00a0b\x0cc")),
    ("unknown-tokens-ignored", "1000 prefer:1 anon=5 N1=5 kernelpagesize_kB=4 future_token=7 shiny",
     dict(anon_pages=5, pages_by_node=((1, 5),))),
    ("swapcache-writeback", "1000 default anon=5 swapcache=1 writeback=2 N1=5",
     dict(swapcache_pages=1, writeback_pages=2)),
    ("no-pages-no-pagesize", "7f00a0000000 local", dict(pages_by_node=(), page_size_bytes=4096)),
    ("unpadded-short-address", "400000 default", dict(start=0x400000)),
    ("truncated-policy-buffer",
     "1000 interleave:0,2,4,6,8,10,12,14,16,18,20,22,24,26,28,30,32,34,36,38,40,42, N0=1",
     dict(policy_nodes=tuple(range(0, 43, 2)))),
]


@pytest.mark.parametrize("line,expected", [c[1:] for c in VMA_CASES], ids=[c[0] for c in VMA_CASES])
def test_vma_fields(line, expected):
    vma = one_vma(line)
    for field, value in expected.items():
        assert getattr(vma, field) == value, field


BAD_NUMA_MAPS = [
    ("address-only", "7f0000000000"),
    ("bad-address", "zz00 default N0=1"),
    ("negative-address", "-1000 default N0=1"),
    ("missing-policy", "1000 anon=1 N0=1"),
    ("heap-as-policy", "1000 heap anon=1"),
    ("bad-node-list", "1000 bind:x anon=1"),
    ("empty-node-list", "1000 bind: anon=1"),
    ("bad-flags", "1000 bind=Static:1 anon=1"),
    ("empty-flags", "1000 bind=:1 anon=1"),
    ("bad-node-count", "1000 default N0=x"),
    ("negative-node-count", "1000 default N0=-5"),
    ("bad-anon", "1000 default anon=1.5 N0=1"),
    ("signed-count", "1000 default dirty=+3 N0=3"),
    ("zero-pagesize", "1000 default N0=1 kernelpagesize_kB=0"),
    ("bad-pagesize", "1000 default N0=1 kernelpagesize_kB=4k"),
    ("good-then-bad-line", "1000 default N0=1\n2000 default N0=?"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_NUMA_MAPS], ids=[c[0] for c in BAD_NUMA_MAPS])
def test_numa_maps_malformed(text):
    with pytest.raises(ParseError):
        parse_numa_maps(text)


def test_numa_maps_error_names_line():
    with pytest.raises(ParseError, match="line 2"):
        parse_numa_maps("1000 default N0=1\n2000 default N0=?\n")


def test_numa_maps_two_node_totals():
    nm = parse_numa_maps(TWO_NODE_NUMA_MAPS)
    assert len(nm.vmas) == 7
    # Base (4 KiB) pages: each 2 MiB huge page on node 1 counts 512.
    assert nm.pages_by_node() == {0: 6 + 100 + 512 + 33, 1: 4 + 200 + 512 + 3 * 512 + 5}
    assert nm.pages_by_node(base_page_size=2 << 20) == {0: 0 + 0 + 1 + 0, 1: 0 + 0 + 1 + 3 + 0}
    assert nm.policies() == {"default", "interleave", "bind", "prefer", "local"}
    assert nm.has_explicit_policy()
    huge = nm.vmas[3]
    assert huge.path == "/dev/hugepages/db buffer"
    assert huge.total_pages == 3
    assert huge.base_pages_by_node() == {1: 3 * 512}


def test_numa_maps_real_sample_totals():
    nm = parse_numa_maps(REAL_NUMA_MAPS)
    assert nm.pages_by_node() == {0: 2 + 1 + 4 + 32 + 2 + 4}
    assert nm.policies() == {"default"}
    assert not nm.has_explicit_policy()


@pytest.mark.parametrize("policies,explicit", [
    (["default"], False),
    (["default", "local"], False),
    (["local"], False),
    (["default", "bind:1"], True),
    (["interleave:0-1"], True),
    (["prefer:0"], True),
    (["weighted interleave:0-1"], True),
], ids=["default", "default+local", "local", "bind", "interleave", "prefer", "weighted"])
def test_has_explicit_policy(policies, explicit):
    text = "".join(f"{0x1000 * (i + 1):x} {p} N0=1\n" for i, p in enumerate(policies))
    assert parse_numa_maps(text).has_explicit_policy() is explicit


@pytest.mark.parametrize("text", ["", "\n"], ids=["empty", "newline"])
def test_numa_maps_empty_is_kernel_thread(text):
    assert parse_numa_maps(text) == NumaMaps(())


def test_read_numa_maps(tmp_path):
    host = make_host(tmp_path, {
        "/proc/10/numa_maps": TWO_NODE_NUMA_MAPS,
        "/proc/11/numa_maps": "1000 default N0=oops\n",
        "/proc/12/numa_maps": "",
    })
    assert read_numa_maps(host, 10).pages_by_node()[1] == 2257
    with pytest.raises(MalformedProcFile) as e:
        read_numa_maps(host, 11)
    assert e.value.pid == 11 and e.value.path == "/proc/11/numa_maps" and "N0" in e.value.reason
    assert read_numa_maps(host, 12).vmas == ()
    with pytest.raises(ProcessGone):
        read_numa_maps(host, 13)


# --------------------------------------------------------------------------
# maps

REAL_MAPS = """\
5638187ce000-5638187d0000 r--p 00000000 fe:00 260131                     /usr/bin/cat
5565ae2e9000-5565ae2f9000 rw-p 00000000 00:00 0 
5565af738000-5565af77a000 rw-p 00000000 00:00 0                          [heap]
7ffb35497000-7ffb35499000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""

MAPS_CASES = [
    ("real-file", "5638187ce000-5638187d0000 r--p 00002000 fe:00 260131                     /usr/bin/cat",
     MapRange(0x5638187ce000, 0x5638187d0000, "r--p", 0x2000, "fe:00", 260131, "/usr/bin/cat")),
    ("real-anon-trailing-space", "5565ae2e9000-5565ae2f9000 rw-p 00000000 00:00 0 ",
     MapRange(0x5565ae2e9000, 0x5565ae2f9000, "rw-p", 0, "00:00", 0, None)),
    ("anon-no-trailing-space", "1000-2000 rw-p 00000000 00:00 0",
     MapRange(0x1000, 0x2000, "rw-p", 0, "00:00", 0, None)),
    ("heap", "5565af738000-5565af77a000 rw-p 00000000 00:00 0                          [heap]",
     MapRange(0x5565af738000, 0x5565af77a000, "rw-p", 0, "00:00", 0, "[heap]")),
    ("path-with-spaces-deleted", "1000-3000 rw-s 00000000 00:01 77   /dev/shm/my file (deleted)",
     MapRange(0x1000, 0x3000, "rw-s", 0, "00:01", 77, "/dev/shm/my file (deleted)")),
    ("escaped-newline", "1000-3000 r--p 00000000 fe:00 5 /tmp/a\\012b",
     MapRange(0x1000, 0x3000, "r--p", 0, "fe:00", 5, "/tmp/a\nb")),
    ("vsyscall", "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
     MapRange(0xffffffffff600000, 0xffffffffff601000, "--xp", 0, "00:00", 0, "[vsyscall]")),
]


@pytest.mark.parametrize("line,expected", [c[1:] for c in MAPS_CASES], ids=[c[0] for c in MAPS_CASES])
def test_maps_line(line, expected):
    assert parse_maps(line + "\n") == (expected,)


def test_maps_real_sample():
    ranges = parse_maps(REAL_MAPS)
    assert [r.path for r in ranges] == ["/usr/bin/cat", None, "[heap]", "[vdso]", "[vsyscall]"]
    assert ranges[0].size_bytes == 0x2000


BAD_MAPS = [
    ("too-few-fields", "1000-2000 rw-p 00000000 00:00"),
    ("no-dash", "1000 rw-p 00000000 00:00 0"),
    ("bad-hex", "10g0-2000 rw-p 00000000 00:00 0"),
    ("end-before-start", "2000-1000 rw-p 00000000 00:00 0"),
    ("bad-perms", "1000-2000 rw 00000000 00:00 0"),
    ("bad-inode", "1000-2000 rw-p 00000000 00:00 x"),
    ("bad-dev", "1000-2000 rw-p 00000000 0000 0"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_MAPS], ids=[c[0] for c in BAD_MAPS])
def test_maps_malformed(text):
    with pytest.raises(ParseError):
        parse_maps(text)


def test_read_maps(tmp_path):
    host = make_host(tmp_path, {"/proc/5/maps": REAL_MAPS, "/proc/6/maps": "garbage\n"})
    assert len(read_maps(host, 5)) == 5
    with pytest.raises(MalformedProcFile):
        read_maps(host, 6)
    with pytest.raises(ProcessGone):
        read_maps(host, 7)


# --------------------------------------------------------------------------
# status

REAL_STATUS = """\
Name:\tcat
Umask:\t0022
State:\tR (running)
Tgid:\t3907
Ngid:\t0
Pid:\t3907
PPid:\t3903
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t256
Groups:\t 
Kthread:\t0
VmPeak:\t    3060 kB
VmRSS:\t    1764 kB
RssAnon:\t     112 kB
RssFile:\t    1652 kB
Threads:\t1
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed:\t00000000,00000001
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t0
"""

REAL_KTHREAD_STATUS = """\
Name:\tkthreadd
State:\tS (sleeping)
Tgid:\t2
Ngid:\t0
Pid:\t2
PPid:\t0
Uid:\t0\t0\t0\t0
Kthread:\t1
Threads:\t1
Cpus_allowed_list:\t0-1
Mems_allowed_list:\t0
"""


def status_with(**replace: str) -> str:
    lines = []
    for line in REAL_STATUS.splitlines():
        key = line.partition(":")[0]
        if key in replace:
            if replace[key] is not None:
                lines.append(f"{key}:\t{replace[key]}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


STATUS_CASES = [
    ("real", REAL_STATUS,
     dict(name="cat", tgid=3907, pid=3907, ppid=3903, uids=(0, 0, 0, 0), threads=1,
          vm_rss_bytes=1764 * 1024, rss_anon_bytes=112 * 1024, cpus_allowed=(0, 1), mems_allowed=(0,),
          state="R", ngid=0, kthread=False)),
    ("real-kernel-thread", REAL_KTHREAD_STATUS,
     dict(name="kthreadd", vm_rss_bytes=None, rss_anon_bytes=None, kthread=True, state="S")),
    ("name-with-spaces-and-parens", status_with(Name="Web Content (x)"), dict(name="Web Content (x)")),
    ("name-with-colon-tab", status_with(Name="a:b\tc "), dict(name="a:b\tc ")),
    ("name-escaped-newline-backslash", status_with(Name="a\\nb\\\\n"), dict(name="a\nb\\n")),
    ("thread-in-group", status_with(Tgid="100", Pid="101", Threads="4"), dict(tgid=100, pid=101, threads=4)),
    ("users", status_with(Uid="1000\t1001\t1002\t1003"), dict(uids=(1000, 1001, 1002, 1003))),
    ("multi-node", status_with(Cpus_allowed_list="0-3,8-11", Mems_allowed_list="0-1,3"),
     dict(cpus_allowed=(0, 1, 2, 3, 8, 9, 10, 11), mems_allowed=(0, 1, 3))),
    ("no-cpusets", status_with(Mems_allowed_list=None), dict(mems_allowed=())),
    ("old-kernel-no-ngid-kthread", status_with(Ngid=None, Kthread=None), dict(ngid=None, kthread=None)),
    ("zombie", status_with(State="Z (zombie)", VmRSS=None, RssAnon=None), dict(state="Z", vm_rss_bytes=None)),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in STATUS_CASES], ids=[c[0] for c in STATUS_CASES])
def test_status_fields(text, expected):
    status = parse_status(text)
    for field, value in expected.items():
        assert getattr(status, field) == value, field


BAD_STATUS = [
    ("no-pid", status_with(Pid=None)),
    ("no-cpus", status_with(Cpus_allowed_list=None)),
    ("bad-pid", status_with(Pid="x")),
    ("bad-rss-unit", status_with(VmRSS="1764 MB")),
    ("bad-rss", status_with(VmRSS="lots kB")),
    ("bad-uid", status_with(Uid="0 x")),
    ("empty-uid", status_with(Uid="")),
    ("empty-state", status_with(State="")),
    ("bad-cpu-list", status_with(Cpus_allowed_list="0-")),
    ("empty", ""),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_STATUS], ids=[c[0] for c in BAD_STATUS])
def test_status_malformed(text):
    with pytest.raises(ParseError):
        parse_status(text)


def test_read_status(tmp_path):
    host = make_host(tmp_path, {"/proc/3907/status": REAL_STATUS, "/proc/4/status": "Name:\tx\n"})
    assert read_status(host, 3907).pid == 3907
    with pytest.raises(MalformedProcFile, match="/proc/4/status"):
        read_status(host, 4)
    with pytest.raises(ProcessGone):
        read_status(host, 5)


# --------------------------------------------------------------------------
# stat

REAL_STAT = ("3909 (cat) R 3903 3903 3016 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 19219 3133440 389 "
             "18446744073709551615 94487811264512 94487811284393 140725797550528 0 0 0 0 0 0 0 0 0 17 1 "
             "0 0 0 0 0 94487811300400 94487811302016 94488765853696 140725797554914 140725797554934 "
             "140725797554934 140725797556203 0\n")


def stat_line(tid=7, comm="app", state="S", ppid=1, utime=11, stime=22, threads=3, start=444, rss=55,
              processor=1, extra=13) -> str:
    """A stat line with the given fields at their proc(5) positions (1-based)."""
    f = ["0"] * (39 + extra)
    f[0], f[1], f[2], f[3] = str(tid), f"({comm})", state, str(ppid)
    f[13], f[14], f[19], f[21], f[23], f[38] = map(str, (utime, stime, threads, start, rss, processor))
    return " ".join(f) + "\n"


STAT_CASES = [
    ("real", REAL_STAT,
     dict(tid=3909, comm="cat", state="R", ppid=3903, utime_ticks=0, stime_ticks=0, num_threads=1,
          starttime_ticks=19219, processor=1, rss_pages=389)),
    ("fields-by-position", stat_line(),
     dict(tid=7, comm="app", state="S", ppid=1, utime_ticks=11, stime_ticks=22, num_threads=3,
          starttime_ticks=444, rss_pages=55, processor=1)),
    ("comm-with-spaces-parens", stat_line(comm="a) (b ) c"), dict(comm="a) (b ) c", processor=1)),
    ("comm-with-newline", stat_line(comm="x\ny"), dict(comm="x\ny")),
    ("empty-comm", stat_line(comm=""), dict(comm="")),
    ("exactly-39-fields", stat_line(extra=0, processor=5), dict(processor=5)),
    ("zombie", stat_line(state="Z"), dict(state="Z")),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in STAT_CASES], ids=[c[0] for c in STAT_CASES])
def test_stat_fields(text, expected):
    stat = parse_stat(text)
    for field, value in expected.items():
        assert getattr(stat, field) == value, field


BAD_STAT = [
    ("no-parens", "7 app S 1 2 3"),
    ("close-before-open", "7 )app( S 1"),
    ("bad-pid", stat_line().replace("7 (", "x (", 1)),
    ("too-few-fields", stat_line(extra=0).rsplit(" ", 1)[0]),
    ("long-state", stat_line(state="SS")),
    ("non-numeric", stat_line().replace(" 444 ", " x ")),
    ("empty", ""),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_STAT], ids=[c[0] for c in BAD_STAT])
def test_stat_malformed(text):
    with pytest.raises(ParseError):
        parse_stat(text)


def test_read_stat_and_threads(tmp_path):
    host = make_host(tmp_path, {
        "/proc/7/stat": stat_line(tid=7),
        "/proc/7/task/7/stat": stat_line(tid=7, processor=0),
        "/proc/7/task/8/stat": stat_line(tid=8, processor=3),
    })
    # Thread 9 is listed but its stat is gone: it exited between listing and reading.
    (tmp_path / "proc/7/task/9").mkdir()
    assert read_stat(host, 7).tid == 7
    stats = read_thread_stats(host, 7)
    assert {tid: s.processor for tid, s in stats.items()} == {7: 0, 8: 3}


def test_read_thread_stats_process_gone(tmp_path):
    # The task directory still lists a thread, but the process has exited.
    (tmp_path / "proc/7/task/8").mkdir(parents=True)
    host = Host(tmp_path)
    with pytest.raises(ProcessGone):
        read_thread_stats(host, 7)
    with pytest.raises(ProcessGone):
        read_thread_stats(host, 99)  # never existed: no task directory


def test_read_thread_stats_process_exits_mid_read(tmp_path):
    # Thread 7 was read, then the process exited: thread 8's stat and the
    # process's own stat are gone. A partial thread list must not be returned.
    host = make_host(tmp_path, {"/proc/7/task/7/stat": stat_line(tid=7)})
    (tmp_path / "proc/7/task/8").mkdir()
    with pytest.raises(ProcessGone):
        read_thread_stats(host, 7)


def test_read_thread_stats_malformed(tmp_path):
    host = make_host(tmp_path, {"/proc/7/stat": stat_line(), "/proc/7/task/7/stat": "junk"})
    with pytest.raises(MalformedProcFile, match="task/7/stat"):
        read_thread_stats(host, 7)


# --------------------------------------------------------------------------
# vmstat

REAL_VMSTAT = """\
nr_free_pages 831840
nr_zone_inactive_anon 1229
numa_hit 1520345
numa_miss 0
pgpromote_success 0
pgdemote_kswapd 0
"""

VMSTAT_CASES = [
    ("real", REAL_VMSTAT, {"nr_free_pages": 831840, "numa_hit": 1520345, "pgpromote_success": 0}),
    ("tiered-counters", "pgpromote_success 2579\npgpromote_candidate 0\npgdemote_kswapd 51085\n",
     {"pgpromote_success": 2579, "pgdemote_kswapd": 51085}),
    ("blank-lines-and-no-final-newline", "\nnuma_hit 5\n\nnuma_miss 6", {"numa_hit": 5, "numa_miss": 6}),
    ("empty", "", {}),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in VMSTAT_CASES], ids=[c[0] for c in VMSTAT_CASES])
def test_vmstat(text, expected):
    counters = parse_vmstat(text)
    for name, value in expected.items():
        assert counters[name] == value
    if not expected:
        assert len(counters) == 0


def test_vmstat_is_read_only():
    with pytest.raises(TypeError):
        parse_vmstat(REAL_VMSTAT)["numa_hit"] = 0  # type: ignore[index]


@pytest.mark.parametrize("text", ["numa_hit\n", "numa_hit 1 2\n", "numa_hit x\n"],
                         ids=["no-value", "three-fields", "non-numeric"])
def test_vmstat_malformed(text):
    with pytest.raises(ParseError):
        parse_vmstat(text)


def test_read_vmstat(tmp_path):
    assert read_vmstat(make_host(tmp_path / "a", {"/proc/vmstat": REAL_VMSTAT}))["numa_hit"] == 1520345
    for name, files in [("missing", {}), ("malformed", {"/proc/vmstat": "numa_hit x\n"}),
                        ("empty", {"/proc/vmstat": ""})]:
        with pytest.raises(HostError) as e:
            read_vmstat(make_host(tmp_path / name, files))
        assert e.value.path == "/proc/vmstat", name


# --------------------------------------------------------------------------
# meminfo

REAL_MEMINFO = """\
MemTotal:       24684084 kB
MemFree:        24249012 kB
Active(anon):       1528 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
"""

REAL_NODE_MEMINFO = """\
Node 0 MemTotal:        3762380 kB
Node 0 MemFree:         3327088 kB
Node 0 MemUsed:          435292 kB
Node 0 HugePages_Total:     4
"""

MEMINFO_CASES = [
    ("real-proc", REAL_MEMINFO,
     {"MemTotal": 24684084 * 1024, "MemFree": 24249012 * 1024, "Active(anon)": 1528 * 1024,
      "HugePages_Total": 0, "HugePages_Free": 0, "Hugepagesize": 2 << 20}),
    ("real-node", REAL_NODE_MEMINFO,
     {"MemTotal": 3762380 * 1024, "MemFree": 3327088 * 1024, "MemUsed": 435292 * 1024, "HugePages_Total": 4}),
    ("two-digit-node", "Node 12 MemFree:  8 kB\n", {"MemFree": 8192}),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in MEMINFO_CASES], ids=[c[0] for c in MEMINFO_CASES])
def test_meminfo(text, expected):
    assert dict(parse_meminfo(text)) == expected


BAD_MEMINFO = [
    ("no-colon", "MemTotal 5 kB\n"),
    ("bad-unit", "MemTotal: 5 MB\n"),
    ("non-numeric", "MemTotal: lots kB\n"),
    ("no-value", "MemTotal:\n"),
    ("bad-node-prefix", "Node x MemTotal: 5 kB\n"),
    ("empty-name", ": 5 kB\n"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_MEMINFO], ids=[c[0] for c in BAD_MEMINFO])
def test_meminfo_malformed(text):
    with pytest.raises(ParseError):
        parse_meminfo(text)


def test_read_meminfo(tmp_path):
    assert read_meminfo(make_host(tmp_path / "a", {"/proc/meminfo": REAL_MEMINFO}))["MemTotal"] == 24684084 * 1024
    for name, files in [("missing", {}), ("malformed", {"/proc/meminfo": "MemTotal: x kB\n"}),
                        ("no-memtotal", {"/proc/meminfo": "MemFree: 1 kB\n"})]:
        with pytest.raises(HostError) as e:
            read_meminfo(make_host(tmp_path / name, files))
        assert e.value.path == "/proc/meminfo", name


# --------------------------------------------------------------------------
# zoneinfo

REAL_ZONEINFO = """\
Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 1286
      nr_mapped    2702
      pgpromote_success 0
  pages free     3840
        boost    0
        min      68
        low      85
        high     102
        promo    119
        spanned  4095
        present  3998
        managed  3840
        cma      0
        protection: (0, 3019, 3659, 3659, 3659)
      nr_free_pages 3840
      numa_hit     0
  pagesets
    cpu: 0
              count:    0
              high:     0
              batch:    1
              high_min: 42
              high_max: 240
  vm stats threshold: 4
  node_unreclaimable:  0
  start_pfn:           1
Node 0, zone    DMA32
  pages free     772915
        boost    0
        min      13883
        low      17353
        high     20823
        promo    24293
        spanned  1044480
        present  782336
        managed  772915
        cma      0
        protection: (0, 0, 640, 640, 640)
  pagesets
    cpu: 0
              count:    0
              high:     8676
  start_pfn:           4096
Node 0, zone  Movable
  pages free     0
        boost    0
        min      32
        low      32
        high     32
        promo    32
        spanned  0
        present  0
        managed  0
        cma      0
        protection: (0, 0, 0, 0, 0)
"""

# A 5.x kernel: no promo line. Node 1 is CPU-less memory with one zone.
OLD_TWO_NODE_ZONEINFO = """\
Node 0, zone   Normal
  pages free     1000
        boost    0
        min      10
        low      20
        high     30
        spanned  4096
        present  4096
        managed  4000
        protection: (0, 0, 0, 0)
Node 1, zone   Normal
  pages free     2000
        boost    0
        min      11
        low      21
        high     31
        spanned  8192
        present  8192
        managed  8000
        protection: (0, 0, 0, 0)
"""


def test_zoneinfo_real():
    zones = parse_zoneinfo(REAL_ZONEINFO)
    assert [z.name for z in zones] == ["DMA", "DMA32", "Movable"]
    assert zones[0] == Zone(node=0, name="DMA", free_pages=3840, min_pages=68, low_pages=85, high_pages=102,
                            promo_pages=119, spanned_pages=4095, present_pages=3998, managed_pages=3840,
                            boost_pages=0)
    # The per-cpu "high:" (8676) must not be taken for the watermark.
    assert zones[1].high_pages == 20823


def test_zoneinfo_old_kernel_without_promo():
    zones = parse_zoneinfo(OLD_TWO_NODE_ZONEINFO)
    assert [(z.node, z.promo_pages) for z in zones] == [(0, None), (1, None)]


@pytest.mark.parametrize("text,expected", [
    (REAL_ZONEINFO, {0: NodeWatermarks(3840 + 772915, 68 + 13883, 85 + 17353, 102 + 20823, 119 + 24293)}),
    (OLD_TWO_NODE_ZONEINFO, {0: (1000, 10, 20, 30, None), 1: (2000, 11, 21, 31, None)}),
    (REAL_ZONEINFO.split("Node 0, zone  Movable")[1].join(["Node 0, zone  Movable", ""]),
     {0: (0, 0, 0, 0, 0)}),
], ids=["real-skips-empty-movable", "old-two-node", "only-empty-zone"])
def test_node_watermarks(text, expected):
    assert node_watermarks(parse_zoneinfo(text)) == expected


def test_node_watermarks_mixed_promo_is_none():
    zones = parse_zoneinfo(REAL_ZONEINFO.replace("        promo    24293\n", ""))
    assert node_watermarks(zones)[0].promo_pages is None


BAD_ZONEINFO = [
    ("bad-header", "Node x, zone Normal\n  pages free 1\n"),
    ("header-without-zone", "Node 0 Normal\n"),
    ("value-before-header", "  pages free     1\n"),
    ("missing-managed", REAL_ZONEINFO.replace("        managed  3840\n", "")),
    ("bad-number", REAL_ZONEINFO.replace("min      68", "min      6x")),
    ("negative", REAL_ZONEINFO.replace("min      68", "min      -68")),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_ZONEINFO], ids=[c[0] for c in BAD_ZONEINFO])
def test_zoneinfo_malformed(text):
    with pytest.raises(ParseError):
        parse_zoneinfo(text)


def test_read_zoneinfo(tmp_path):
    assert len(read_zoneinfo(make_host(tmp_path / "a", {"/proc/zoneinfo": REAL_ZONEINFO}))) == 3
    for name, files in [("missing", {}), ("empty", {"/proc/zoneinfo": ""}),
                        ("malformed", {"/proc/zoneinfo": "Node x, zone A\n"})]:
        with pytest.raises(HostError) as e:
            read_zoneinfo(make_host(tmp_path / name, files))
        assert e.value.path == "/proc/zoneinfo", name


# --------------------------------------------------------------------------
# /proc/stat

REAL_PROC_STAT = """\
cpu  1584 0 749 35784 90 0 18 7 0 0
cpu0 354 0 281 18474 9 0 5 2 0 0
cpu1 1229 0 467 17309 80 0 13 5 0 0
intr 76368 0 0 0 0
ctxt 171794
btime 1795803098
"""

PROC_STAT_CASES = [
    ("real", REAL_PROC_STAT,
     {0: CpuTimes(0, 354 + 281 + 5 + 2, 354 + 281 + 18474 + 9 + 5 + 2),
      1: CpuTimes(1, 1229 + 467 + 13 + 5, 1229 + 467 + 17309 + 80 + 13 + 5)}),
    # guest (100) and guest_nice (7) are inside user (500) and nice (10): not added again.
    ("guest-not-double-counted", "cpu0 500 10 20 1000 5 1 2 3 100 7\n",
     {0: CpuTimes(0, 500 + 10 + 20 + 1 + 2 + 3, 500 + 10 + 20 + 1000 + 5 + 1 + 2 + 3)}),
    ("old-kernel-four-columns", "cpu3 10 0 5 85\n", {3: CpuTimes(3, 15, 100)}),
    ("sparse-online-cpus", "cpu 0 0 0 0\ncpu0 1 0 0 1\ncpu8 2 0 0 2\n",
     {0: CpuTimes(0, 1, 2), 8: CpuTimes(8, 2, 4)}),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in PROC_STAT_CASES], ids=[c[0] for c in PROC_STAT_CASES])
def test_proc_stat(text, expected):
    assert parse_proc_stat(text) == expected


@pytest.mark.parametrize("text", ["cpu  1 2 3 4\nintr 5\n", "cpu0 1 2 3\n", "cpu0 1 x 3 4\n", "cpu0x 1 2 3 4\n",
                                  "cpu0 1 2 3 -4\n"],
                         ids=["aggregate-only", "too-few-columns", "non-numeric", "bad-name", "negative"])
def test_proc_stat_malformed(text):
    with pytest.raises(ParseError):
        parse_proc_stat(text)


BUSY_CASES = [
    ("half-busy", {0: CpuTimes(0, 100, 1000)}, {0: CpuTimes(0, 150, 1100)}, {0: 0.5}),
    ("idle", {0: CpuTimes(0, 100, 1000)}, {0: CpuTimes(0, 100, 1100)}, {0: 0.0}),
    ("no-time-passed", {0: CpuTimes(0, 100, 1000)}, {0: CpuTimes(0, 100, 1000)}, {0: 0.0}),
    ("busy-went-backwards-clamped", {0: CpuTimes(0, 100, 1000)}, {0: CpuTimes(0, 90, 1100)}, {0: 0.0}),
    ("busy-exceeds-total-clamped", {0: CpuTimes(0, 100, 1000)}, {0: CpuTimes(0, 300, 1100)}, {0: 1.0}),
    ("cpu-came-online", {0: CpuTimes(0, 0, 10)}, {0: CpuTimes(0, 5, 20), 1: CpuTimes(1, 5, 5)}, {0: 0.5}),
]


@pytest.mark.parametrize("prev,cur,expected", [c[1:] for c in BUSY_CASES], ids=[c[0] for c in BUSY_CASES])
def test_cpu_busy_fraction(prev, cur, expected):
    assert cpu_busy_fraction(prev, cur) == pytest.approx(expected)


def test_read_proc_stat(tmp_path):
    assert len(read_proc_stat(make_host(tmp_path / "a", {"/proc/stat": REAL_PROC_STAT}))) == 2
    with pytest.raises(HostError, match="/proc/stat"):
        read_proc_stat(make_host(tmp_path / "b", {"/proc/stat": "intr 1\n"}))
    with pytest.raises(HostError, match="/proc/stat"):
        read_proc_stat(make_host(tmp_path / "c", {}))


# --------------------------------------------------------------------------
# cgroup

REAL_HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/83610ccb5e2bb50a58ecbcc126779cf4
3:cpuset:/
0::/
"""

CGROUP_CASES = [
    ("v2", "0::/system.slice/foo.service\n", "/system.slice/foo.service"),
    ("real-hybrid-prefers-v2", REAL_HYBRID_CGROUP, "/"),
    ("hybrid-v2-over-cpuset", "3:cpuset:/pinned\n9:name=systemd:/a.scope\n0::/user.slice/a.scope\n",
     "/user.slice/a.scope"),
    ("v1-cpuset-over-systemd", "9:name=systemd:/a.scope\n3:cpuset:/pinned\n", "/pinned"),
    ("v1-cpuset", "9:name=systemd:/user.slice\n3:cpuset:/pinned\n2:cpu,cpuacct:/x\n", "/pinned"),
    ("v1-cpuset-in-list", "3:cpuset,cpu:/shared\n", "/shared"),
    ("v1-systemd-only", "9:name=systemd:/system.slice/db.service\n4:memory:/m\n", "/system.slice/db.service"),
    ("v1-other-only", "4:memory:/m\n2:pids:/p\n", "/m"),
    ("path-with-colon", "0::/machine.slice/libpod-abc:def.scope\n", "/machine.slice/libpod-abc:def.scope"),
    ("deleted", "0::/gone (deleted)\n", "/gone (deleted)"),
    # No hierarchy mounted (busybox init, issue 10): the root cgroup, not malformed.
    ("no-hierarchy-empty", "", "/"),
    ("no-hierarchy-newline", "\n", "/"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CGROUP_CASES], ids=[c[0] for c in CGROUP_CASES])
def test_cgroup(text, expected):
    assert parse_cgroup(text) == expected


@pytest.mark.parametrize("text", ["garbage\n", "x::/a\n", "0:/a\n"],
                         ids=["no-colons", "bad-id", "two-fields"])
def test_cgroup_malformed(text):
    with pytest.raises(ParseError):
        parse_cgroup(text)


def test_read_cgroup(tmp_path):
    host = make_host(tmp_path, {"/proc/3/cgroup": "0::/a.service\n", "/proc/4/cgroup": "",
                                "/proc/6/cgroup": "garbage\n"})
    assert read_cgroup(host, 3) == "/a.service"
    assert read_cgroup(host, 4) == "/"  # empty: no hierarchy mounted, the root cgroup
    with pytest.raises(MalformedProcFile):
        read_cgroup(host, 6)
    with pytest.raises(ProcessGone):
        read_cgroup(host, 5)
    # The optional reading never hides a live process; it does not hide a gone one either.
    assert read_cgroup_or_unknown(host, 3) == ("/a.service", None)
    path, why = read_cgroup_or_unknown(host, 6)
    assert path == UNKNOWN_CGROUP and "/proc/6/cgroup" in why
    with pytest.raises(ProcessGone):
        read_cgroup_or_unknown(host, 5)
