"""The pure parts of scripts/numa-vm (the package scripts/numavm) and the
guest matrix of scripts/hardware-tests, tested on the host without a guest.

What needs QEMU (booting, the guest's mounts, systemd as PID 1) is tested in
the guests themselves: tests/hardware/test_vm_kernel.py, test_vm_systemd.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from numavm import cache, cli, guest, initramfs, run, topology  # noqa: E402


# -- topologies -------------------------------------------------------------

def numa_opts(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "-numa"]


def test_2node_qemu_options_exactly():
    args = topology.TOPOLOGIES["2node"].qemu_args(1536)
    assert args == [
        "-machine", "pc", "-m", "3072M", "-smp", "2,sockets=2,cores=1,threads=1",
        "-object", "memory-backend-ram,id=m0,size=1536M", "-numa", "node,nodeid=0,memdev=m0,cpus=0",
        "-object", "memory-backend-ram,id=m1,size=1536M", "-numa", "node,nodeid=1,memdev=m1,cpus=1",
        "-numa", "dist,src=0,dst=1,val=21"]


@pytest.mark.parametrize("name", sorted(topology.TOPOLOGIES))
def test_every_topology_is_complete(name):
    topo = topology.TOPOLOGIES[name]
    args = topo.qemu_args(512)
    nodes = [o for o in numa_opts(args) if o.startswith("node,")]
    assert len(nodes) == len(topo.nodes)
    assert args[args.index("-m") + 1] == f"{512 * len(topo.nodes)}M"
    # Every pair of nodes has a distance (QEMU would otherwise make one up).
    pairs = {(int(m[0]), int(m[1])) for m in
             (re.match(r"dist,src=(\d+),dst=(\d+)", o).groups() for o in numa_opts(args)
              if o.startswith("dist,"))}
    n = len(topo.nodes)
    assert pairs == {(a, b) for a in range(n) for b in range(a + 1, n)}
    # CPUs: each given once, in order, numbered from 0.
    cpus = []
    for o in nodes:
        m = re.search(r"cpus=(\d+)(?:-(\d+))?", o)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            cpus.extend(range(lo, hi + 1))
    assert cpus == list(range(topo.ncpus))
    assert args[args.index("-smp") + 1].startswith(f"{topo.ncpus},")


def test_tiered_has_hmat_latency_and_bandwidth_for_every_pair():
    topo = topology.TOPOLOGIES["tiered"]
    args = topo.qemu_args(1024)
    assert args[args.index("-machine") + 1] == "pc,hmat=on"
    nodes = [o for o in numa_opts(args) if o.startswith("node,")]
    assert all("initiator=" in o for o in nodes)
    assert "initiator=0" in nodes[2] and "cpus=" not in nodes[2]
    hmat = [o for o in numa_opts(args) if o.startswith("hmat-lb,")]
    # With latency only the kernel puts every node in one tier.
    for ini in (0, 1):
        for tgt in (0, 1, 2):
            base = f"hmat-lb,initiator={ini},target={tgt},hierarchy=memory"
            assert any(o.startswith(base + ",data-type=access-latency") for o in hmat)
            assert any(o.startswith(base + ",data-type=access-bandwidth") for o in hmat)


def test_2x2_gives_each_node_two_cpus():
    nodes = [o for o in numa_opts(topology.TOPOLOGIES["2x2"].qemu_args(1536)) if o.startswith("node,")]
    assert nodes == ["node,nodeid=0,memdev=m0,cpus=0-1", "node,nodeid=1,memdev=m1,cpus=2-3"]


@pytest.mark.parametrize("text,mib", [("768M", 768), ("2G", 2048), ("1GiB", 1024), ("128m", 128)])
def test_parse_mem(text, mib):
    assert topology.parse_mem(text) == mib


@pytest.mark.parametrize("text", ["100M", "2T", "", "1.5G", "G", "-1G"])
def test_parse_mem_rejects(text):
    with pytest.raises(ValueError):
        topology.parse_mem(text)


# -- command line -----------------------------------------------------------

def test_parse_args_defaults_and_options():
    o = cli.parse_args(["true"])
    assert (o["topology"], o["init"], o["cgroup"], o["kernel"], o["command"]) == \
        ("2node", "busybox", "v2", "6.12", ["true"])
    o = cli.parse_args(["--init=systemd", "--kernel", "6.1", "--topology", "tiered", "--",
                        "-x", "--init"])
    assert (o["init"], o["kernel"], o["topology"], o["command"]) == \
        ("systemd", "6.1", "tiered", ["-x", "--init"])
    assert cli.parse_args(["--cgroup", "none", "sh"])["cgroup"] == "none"
    assert cli.parse_args(["--cgroup", "v1", "--kernel", "6.1", "sh"])["cgroup"] == "v1"


@pytest.mark.parametrize("argv,message", [
    (["--init", "systemd", "--cgroup", "none", "true"], "mounts its own cgroup2 hierarchy"),
    (["--init", "systemd", "--cgroup", "v1", "true"], "--cgroup v1 is for the busybox init"),
    (["--kernel", "4.19", "true"], "unknown kernel '4.19'"),
    (["--init", "openrc", "true"], "unknown init 'openrc'"),
    (["--cgroup", "v3", "true"], "unknown cgroup setup 'v3'"),
    (["--topology", "8node", "true"], "unknown topology '8node'"),
    (["--memory", "64M", "true"], "--memory wants a size"),
    (["--timeout", "-1", "true"], "--timeout wants a number"),
    (["--init"], "--init needs a value"),
    ([], "no COMMAND given"),
    (["--bogus", "true"], "unknown option --bogus"),
])
def test_parse_args_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("numa-vm: ")


def test_entry_point_help_and_one_line_usage_error():
    r = subprocess.run([str(SCRIPTS / "numa-vm"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--init INIT", "--cgroup SETUP", "--kernel SERIES", "--topology NAME"):
        assert opt in r.stdout
    r = subprocess.run([str(SCRIPTS / "numa-vm"), "--kernel", "2.6", "true"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0] == "numa-vm: unknown kernel '2.6' (choose from 6.12, 6.1, 5.10)"


# -- cache: kernel choice, modules, state -----------------------------------

APT_NAMES = """\
linux-image-6.12.38+deb12-amd64-unsigned
linux-image-6.12.117+deb12-amd64-unsigned
linux-image-6.12.117+deb12-cloud-amd64-unsigned
linux-image-6.12.9+deb12-amd64-unsigned
linux-image-6.12.200+deb12-rt-amd64-unsigned
linux-image-6.12.117+deb12-amd64
linux-image-6.1.0-50-amd64-unsigned
linux-image-6.1.0-57-amd64-unsigned
linux-image-6.1.0-9-amd64-unsigned
linux-image-6.1.0-60-cloud-amd64-unsigned
""".splitlines()


def test_newest_kernel_of_each_series_by_number_not_by_text():
    assert cache.pick_kernel_package(APT_NAMES, cache.KERNELS["6.12"]["pattern"]) == \
        "linux-image-6.12.117+deb12-amd64-unsigned"
    assert cache.pick_kernel_package(APT_NAMES, cache.KERNELS["6.1"]["pattern"]) == \
        "linux-image-6.1.0-57-amd64-unsigned"
    assert cache.pick_kernel_package(["linux-image-amd64"], cache.KERNELS["6.1"]["pattern"]) is None


def fake_module(path: Path, depends: str, compress: bool = True) -> bytes:
    data = b"\x7fELF fake module\x00name=" + path.name.split(".")[0].encode() + \
        b"\x00depends=" + depends.encode() + b"\x00vermagic=6.1\x00"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(data) if compress else data)
    return data


def test_extract_modules_orders_dependencies_and_skips_builtins(tmp_path):
    moddir = tmp_path / "lib" / "modules" / "6.1.0-57-amd64"
    k = moddir / "kernel"
    (moddir).mkdir(parents=True)
    (moddir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n"
                                             "kernel/fs/binfmt_misc.ko\n")
    want = {
        "9p": fake_module(k / "fs/9p/9p.ko.xz", "9pnet,netfs"),
        "netfs": fake_module(k / "fs/netfs/netfs.ko.xz", "fscache"),
        "fscache": fake_module(k / "fs/fscache/fscache.ko", "", compress=False),
        "9pnet": fake_module(k / "net/9p/9pnet.ko.xz", ""),
        "9pnet_virtio": fake_module(k / "net/9p/9pnet_virtio.ko.xz", "9pnet,virtio_ring"),
        "virtio_ring": fake_module(k / "drivers/virtio/virtio_ring.ko.xz", ""),
        "overlay": fake_module(k / "fs/overlayfs/overlay.ko.xz", ""),
        "autofs4": fake_module(k / "fs/autofs/autofs4.ko.xz", ""),
    }
    dest = tmp_path / "out"
    dest.mkdir()
    order, sd_order = cache.extract_modules(str(moddir), str(dest))
    assert sorted(order) == sorted(set(want) - {"autofs4"})
    for mod, deps in (("9p", ["9pnet", "netfs"]), ("netfs", ["fscache"]),
                      ("9pnet_virtio", ["9pnet", "virtio_ring"])):
        for d in deps:
            assert order.index(d) < order.index(mod), (d, mod, order)
    # autofs is not there (autofs4 is), binfmt_misc is built in: both fine.
    assert sd_order == ["autofs4"]
    for name, data in want.items():
        assert (dest / f"{name}.ko").read_bytes() == data


def test_extract_modules_names_a_missing_required_module(tmp_path):
    moddir = tmp_path / "m"
    fake_module(moddir / "9p.ko.xz", "9pnet")
    (moddir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    with pytest.raises(cache.VMError, match="kernel module 9pnet not found"):
        cache.extract_modules(str(moddir), str(tmp_path))


def write_state(c: cache.Cache, **over) -> dict:
    kdir = Path(c.path) / "kernel-x"
    (kdir / "modules").mkdir(parents=True, exist_ok=True)
    (kdir / "vmlinuz").write_bytes(b"k")
    (kdir / "busybox").write_bytes(b"b")
    state = {"layout": cache.CACHE_LAYOUT, "series": c.kernel, "vmlinuz": "kernel-x/vmlinuz",
             "busybox": "kernel-x/busybox", "modules_dir": "kernel-x/modules",
             "kernel_version": "6.1.0-57-amd64", "busybox_version": "1",
             "modules": ["9p"], "systemd_modules": ["autofs4"]}
    state.update(over)
    Path(c.state_path()).write_text(json.dumps(state))
    return state


def test_state_per_series_and_older_layouts_are_fetched_again(tmp_path):
    c12 = cache.Cache(str(tmp_path), False, "6.12")
    c61 = cache.Cache(str(tmp_path), False, "6.1")
    # 6.12 keeps the file name older numa-vm versions used.
    assert os.path.basename(c12.state_path()) == "state.json"
    assert os.path.basename(c61.state_path()) == "state-6.1.json"
    assert c61.load_state() is None
    write_state(c61)
    assert c61.load_state()["series"] == "6.1"
    assert c12.load_state() is None           # its own file, not 6.1's
    write_state(c61, layout=1)                # before the systemd modules
    assert c61.load_state() is None
    write_state(c61, series="6.12")
    assert c61.load_state() is None
    write_state(c61, vmlinuz="kernel-x/gone")
    assert c61.load_state() is None
    Path(c61.state_path()).write_text("[1, 2]")
    assert c61.load_state() is None


def test_a_series_outside_the_hosts_sources_gets_a_private_apt_state(tmp_path):
    # 5.10 (bullseye-security) is read through its own sources list and lists under the cache;
    # the host's sources serve the others and are never written.
    c510 = cache.Cache(str(tmp_path), False, "5.10")
    opts = c510.kernel_apt_options()
    base = tmp_path / "apt-5.10"
    assert opts == ["-o", f"Dir::Etc::SourceList={base}/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null",
                    "-o", f"Dir::State::Lists={base}/lists", "-o", f"Dir::Cache={base}/cache"]
    assert (base / "sources.list").read_text().split()[-2:] == ["bullseye-security", "main"]
    assert (base / "lists" / "partial").is_dir() and (base / "cache" / "archives" / "partial").is_dir()
    assert os.path.basename(c510.state_path()) == "state-5.10.json"
    assert cache.pick_kernel_package(["linux-image-5.10.0-9-amd64-unsigned", "linux-image-5.10.0-46-amd64-unsigned",
                                      "linux-image-5.10.0-46-rt-amd64-unsigned"],
                                     cache.KERNELS["5.10"]["pattern"]) == "linux-image-5.10.0-46-amd64-unsigned"
    assert cache.Cache(str(tmp_path), False, "6.12").kernel_apt_options() == []
    assert not (tmp_path / "apt-6.12").exists()


def test_systemd_guest_needs_the_host_systemd():
    assert "systemd" not in cache.Cache("/nonexistent", False).packages
    assert cache.Cache("/nonexistent", False, systemd=True).packages["systemd"] == "/lib/systemd/systemd"


# -- initramfs ----------------------------------------------------------------

def parse_newc(blob: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every entry of a newc archive, trailer included."""
    out, pos = [], 0
    while True:
        assert blob[pos:pos + 6] == b"070701", pos
        fields = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = blob[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = blob[pos: pos + size]
        pos += size
        pos += -pos % 4
        out.append((name, mode, data))
        if name == "TRAILER!!!":
            return out


def test_cpio_writer_round_trips():
    w = initramfs.CpioWriter()
    w.add_dir("bin")
    w.add_file("bin/busybox", b"\x7fELF" * 3, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_node("dev/console", 0o020600, 5, 1)
    blob = w.finish()
    assert len(blob) % 512 == 0
    entries = parse_newc(blob)
    assert [e[0] for e in entries] == ["bin", "bin/busybox", "bin/sh", "dev/console", "TRAILER!!!"]
    assert stat.S_ISDIR(entries[0][1])
    assert entries[1][2] == b"\x7fELF" * 3 and entries[1][1] & 0o777 == 0o755
    assert stat.S_ISLNK(entries[2][1]) and entries[2][2] == b"busybox"
    assert stat.S_ISCHR(entries[3][1])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio(1) to cross-check with")
def test_cpio_writer_output_is_read_by_cpio(tmp_path):
    w = initramfs.CpioWriter()
    w.add_dir("modules")
    w.add_file("modules/order", b"9p\n", 0o644)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(w.finish())
    r = subprocess.run(["cpio", "-t", "-F", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["modules", "modules/order"]


def test_initramfs_key_follows_its_contents():
    state = {"kernel_version": "6.12.117", "busybox_version": "1.35", "modules": ["9p"],
             "systemd_modules": ["autofs4"]}
    k = initramfs.key(state)
    assert initramfs.key(dict(state)) == k
    assert initramfs.key(dict(state, systemd_modules=[])) != k
    assert initramfs.key(dict(state, modules=["9p", "overlay"])) != k
    assert initramfs.key(dict(state, kernel_version="6.1.0-57-amd64")) != k


# -- what the guest runs ------------------------------------------------------

OPTS = {"topology": "2node", "init": "busybox", "cgroup": "v2", "kernel": "6.12",
        "command": ["true"]}


def sh_syntax_ok(text: str, tmp_path: Path) -> None:
    f = tmp_path / "script.sh"
    f.write_text(text)
    r = subprocess.run(["sh", "-n", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("init,cgroup", [("busybox", "v2"), ("busybox", "none"), ("busybox", "v1"),
                                         ("systemd", "v2")])
def test_stage2_for_each_guest(init, cgroup, tmp_path):
    text = guest.stage2_script(["/work/my checkout"], "/work/my checkout", "2node", init, cgroup)
    sh_syntax_ok(text, tmp_path)
    assert "mount -t overlay" in text
    assert "'/work/my checkout'" in text          # quoted, spaces and all
    # Only the default busybox guest mounts a hierarchy; systemd mounts its own.
    assert ("cgroup2" in text) == (init == "busybox" and cgroup == "v2")
    # v1: one legacy hierarchy per controller, each mount checked (a kernel without
    # v1 cpusets fails the boot rather than giving a guest without them).
    for c in guest.CGROUP_V1_CONTROLLERS:
        assert (f"mount -t cgroup -o {c} {c} $R/sys/fs/cgroup/{c} || fail" in text) == (cgroup == "v1")
    if init == "systemd":
        assert text.rstrip().splitlines()[-1].startswith("exec switch_root $R /lib/systemd/systemd")
        assert "rm -f $R/.dockerenv" in text
        for unit in guest.SYSTEMD_MASKS:
            assert f"ln -sf /dev/null $R/etc/systemd/system/{unit}" in text
        assert "mount --move /io $R/run/numa-vm/io" in text
        assert "chroot" not in text
    else:
        assert "chroot $R /bin/sh /run/numa-vm/run.sh" in text
        assert "switch_root" not in text


def test_systemd_job_unit_powers_off_however_the_command_ends():
    job = guest.SYSTEMD_JOB
    assert "Type=exec" in job                     # not oneshot: the boot finishes
    assert "SuccessAction=poweroff-immediate" in job
    assert "FailureAction=poweroff-immediate" in job
    assert "Wants=numa-vm-job.service" in guest.SYSTEMD_TARGET
    assert "Requires=basic.target" in guest.SYSTEMD_TARGET
    # The status reaches the host's control share before the power-off.
    assert "$IO/status" in guest.SYSTEMD_JOB_SCRIPT


def test_control_files_per_init():
    busybox = guest.control_files(OPTS, ["/c"], "/c", "2node", 1536)
    assert set(busybox) == {"stage2.sh", "run.sh"}
    sd = guest.control_files(dict(OPTS, init="systemd"), ["/c"], "/c", "2node", 1536)
    assert set(sd) == {"stage2.sh", "run.sh", "numa-vm.target", "numa-vm-job.service", "job.sh"}


def test_kernel_cmdline():
    plain = guest.kernel_cmdline(OPTS, "2node", False)
    assert "quiet loglevel=1" in plain and "systemd." not in plain
    sd = guest.kernel_cmdline(dict(OPTS, init="systemd"), "tiered", False)
    for word in ("systemd.unit=numa-vm.target", "systemd.hostname=numa-vm-tiered", "fstab=no"):
        assert word in sd.split()
    assert "systemd.journald.forward_to_console=1" in guest.kernel_cmdline(
        dict(OPTS, init="systemd"), "2node", True)
    assert "loglevel=6" in guest.kernel_cmdline(OPTS, "2node", True)


def test_guest_env_passes_only_the_listed_variables(monkeypatch):
    monkeypatch.setenv("AUTONUMAD_FOO", "1")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = guest.guest_env(dict(OPTS, cgroup="none", kernel="6.1"), 768)
    assert env["AUTONUMAD_FOO"] == "1" and env["LC_TIME"] == "C"
    assert "SECRET_TOKEN" not in env
    assert (env["AUTONUMAD_VM_TOPOLOGY"], env["AUTONUMAD_VM_NODE_MEMORY_MIB"],
            env["AUTONUMAD_VM_INIT"], env["AUTONUMAD_VM_CGROUP"], env["AUTONUMAD_VM_KERNEL"]) == \
        ("2node", "768", "busybox", "none", "6.1")


def test_run_script_runs_the_command_with_exactly_its_environment(tmp_path):
    script = guest.run_script(["sh", "-c", 'echo "$FOO|$HOME_X|$(pwd)"; exit 7', "it's"],
                              str(tmp_path), {"FOO": "a 'b' $c", "PATH": os.environ["PATH"]})
    (tmp_path / "run.sh").write_text(script)
    r = subprocess.run(["sh", str(tmp_path / "run.sh")], capture_output=True, text=True,
                       env=dict(os.environ, HOME_X="leaked"))
    assert r.returncode == 7
    assert r.stdout == f"a 'b' $c||{tmp_path}\n"


def test_writable_shares_drop_nested_directories():
    assert guest.writable_shares("/work/wt/vm", "/work/wt/vm/tests") == ["/work/wt/vm"]
    assert guest.writable_shares("/work/wt/vm", "/srv/data") == ["/srv/data", "/work/wt/vm"]
    assert guest.writable_shares("/work/wt/vm", "/") == ["/work/wt/vm"]
    assert guest.writable_shares("/work/a", "/work/ab") == ["/work/a", "/work/ab"]


def test_qemu_command_shares_and_escaped_commas():
    topo = topology.TOPOLOGIES["2node"]
    args = run.qemu_command("qemu", topo, 1536, "/c/vmlinuz", "/c/initrd", "console=ttyS0",
                            "/tmp/io/console.log", "/tmp/io", ["/work/a,b", "/srv"], "single")
    virtfs = [args[i + 1] for i, a in enumerate(args) if a == "-virtfs"]
    assert virtfs[0].startswith("local,path=/,mount_tag=hostroot,") and "readonly=on" in virtfs[0]
    assert virtfs[1].startswith("local,path=/tmp/io,mount_tag=nvio,")
    assert virtfs[2].startswith("local,path=/work/a,,b,mount_tag=nvrw0,")
    assert virtfs[3].startswith("local,path=/srv,mount_tag=nvrw1,")
    assert args[args.index("-accel") + 1] == "tcg,thread=single"
    assert "-nic" in args and args[args.index("-nic") + 1] == "none"


def test_failure_reason_prefers_the_guests_own_words(tmp_path):
    (tmp_path / "console.log").write_text("boot\nNUMA-VM-ERROR: cannot mount /proc\n")
    (tmp_path / "qemu.stderr").write_text("qemu-system-x86_64: warning: x\nsomething broke\n")
    assert run.failure_reason(str(tmp_path)) == "cannot mount /proc"
    (tmp_path / "error").write_text("cannot mount the  host root\n")
    assert run.failure_reason(str(tmp_path)) == "cannot mount the host root"
    (tmp_path / "error").unlink()
    (tmp_path / "console.log").write_text("Kernel panic - not syncing: VFS\n")
    assert run.failure_reason(str(tmp_path)) == "Kernel panic - not syncing: VFS"
    (tmp_path / "console.log").write_text("")
    assert run.failure_reason(str(tmp_path)) == "qemu: something broke"


# -- scripts/hardware-tests' guest matrix ------------------------------------

def load_hardware_tests():
    loader = importlib.machinery.SourceFileLoader("hardware_tests", str(SCRIPTS / "hardware-tests"))
    spec = importlib.util.spec_from_loader("hardware_tests", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_hardware_tests_default_matrix_and_selection(monkeypatch):
    ht = load_hardware_tests()
    monkeypatch.delenv("AUTONUMAD_HW_GUESTS", raising=False)
    monkeypatch.delenv("AUTONUMAD_HW_TOPOLOGIES", raising=False)
    guests, timeout, rest = ht.parse_args(["-q"])
    assert [g.name for g in guests] == ["2node", "tiered", "4node", "2x2", "systemd", "nocgroup", "6.1",
                                          "5.10", "cgroupv1"]
    assert rest == ["-q"]
    assert [g.name for g in ht.parse_args(["--all"])[0]] == [g.name for g in ht.GUESTS]
    assert [g.name for g in ht.parse_args(["--topology", "tiered", "--guest", "6.1"])[0]] == \
        ["tiered", "6.1"]
    monkeypatch.setenv("AUTONUMAD_HW_TOPOLOGIES", "4node")
    assert [g.name for g in ht.parse_args([])[0]] == ["4node"]
    # Every guest's numa-vm options parse, so a typo in the matrix fails here.
    for g in ht.GUESTS:
        o = cli.parse_args(g.vm_args + ["true"])
        assert o["command"] == ["true"]
    by = ht.BY_NAME
    assert by["systemd"].setup_args() == ["--init", "systemd"]
    assert by["6.1"].setup_args() == ["--kernel", "6.1"]
    assert "systemd" in by["systemd"].select and "not systemd" in by["2node"].select
    # 2x2 runs only the autonuma-benchmark patterns by default, everything on demand.
    assert by["2x2"].select == "hardware and autonuma" and by["2x2"].marker == "autonuma"
    assert by["2x2-full"].vm_args == by["2x2"].vm_args and not by["2x2-full"].default


@pytest.mark.parametrize("argv", [["--guest", "nope"], ["--topology", "systemd"],
                                  ["--timeout", "soon"]])
def test_hardware_tests_usage_errors(argv):
    ht = load_hardware_tests()
    with pytest.raises(SystemExit) as e:
        ht.parse_args(argv)
    assert e.value.code == 2


def test_hardware_tests_markers_are_declared():
    # --strict-markers: a marker the guests select on must be registered.
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for marker in ("systemd", "every_guest", "autonuma", "topology", "hardware"):
        assert re.search(rf'"\s*{marker}\b[^"]*:', text), marker


# -- the run loop, with a stand-in for QEMU ------------------------------------

FAKE_QEMU = r'''#!/bin/sh
# Stands in for qemu-system-x86_64: finds the control share among its
# arguments and plays the guest's part there, as $FAKE_GUEST says.
for a in "$@"; do
    case "$a" in local,path=*,mount_tag=nvio,*) io=${a#local,path=}; io=${io%%,mount_tag=*};; esac
done
case "$FAKE_GUEST" in
ok)    : > "$io/started"; echo "out line"; echo "to stdout" > "$io/stdout"
       echo "to stderr" > "$io/stderr"; echo 3 > "$io/status";;
panic) echo "Kernel panic - not syncing: Attempted to kill init!" > "$io/console.log";;
hang)  : > "$io/started"; sleep 30;;
esac
'''


def fake_host(tmp_path: Path, monkeypatch) -> dict:
    """A prepared cache and a PATH whose qemu-system-x86_64 is FAKE_QEMU."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "qemu-system-x86_64").write_text(FAKE_QEMU)
    (bin_ / "numactl").write_text("#!/bin/sh\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    c = cache.Cache(str(tmp_path / "cache"), False, "6.12")
    state = write_state(c)
    Path(c.path, f"initramfs-{initramfs.key(state)}.cpio").write_bytes(b"")
    return dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}",
                AUTONUMAD_VM_CACHE=c.path, TMPDIR=str(tmp_path))


def test_run_guest_returns_the_commands_status_and_streams_its_output(tmp_path, monkeypatch):
    env = fake_host(tmp_path, monkeypatch)
    r = subprocess.run([str(SCRIPTS / "numa-vm"), "true"], capture_output=True, text=True,
                       env=dict(env, FAKE_GUEST="ok"), cwd=tmp_path, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "to stdout\n", "to stderr\n")
    # The run directory is gone.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("numa-vm.")]


def test_run_guest_failure_and_timeout_are_one_line(tmp_path, monkeypatch):
    env = fake_host(tmp_path, monkeypatch)
    r = subprocess.run([str(SCRIPTS / "numa-vm"), "true"], capture_output=True, text=True,
                       env=dict(env, FAKE_GUEST="panic"), cwd=tmp_path, timeout=60)
    assert r.returncode == 125
    assert r.stderr.startswith("numa-vm: guest failed to boot (2node): Kernel panic - not syncing")
    assert len(r.stderr.splitlines()) == 1
    r = subprocess.run([str(SCRIPTS / "numa-vm"), "--timeout", "2", "true"], capture_output=True,
                       text=True, env=dict(env, FAKE_GUEST="hang"), cwd=tmp_path, timeout=60)
    assert r.returncode == 124
    assert r.stderr == "numa-vm: timeout: guest (2node) still running after 2 s; killed it\n"


def test_kernel_package_override_must_be_of_the_series(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTONUMAD_VM_KERNEL_PACKAGE", "linux-image-6.12.38+deb12-amd64-unsigned")
    assert cache.Cache(str(tmp_path), False, "6.12").kernel_package() == \
        "linux-image-6.12.38+deb12-amd64-unsigned"
    with pytest.raises(cache.VMError, match="is not a 6.1 kernel"):
        cache.Cache(str(tmp_path), False, "6.1").kernel_package()


def test_hardware_tests_repeats_a_guests_failures_for_the_log_tail(tmp_path, capsys):
    # What a failing guest prints, passed through whole, and its failure
    # lines kept for the summary at the end of the log.
    ht = load_hardware_tests()
    script = ("printf 'collected 4 items\\nE   AssertionError: 3 workers pinned to node 0\\n"
              "FAILED tests/hardware/test_x.py::test_a - AssertionError\\n"
              "ERROR tests/hardware/test_x.py::test_b - assert 1 == 0\\n'; echo oops >&2; exit 1")
    rc, failed = ht.run_guest(["sh", "-c", script], str(tmp_path))
    assert rc == 1
    assert failed == ["FAILED tests/hardware/test_x.py::test_a - AssertionError",
                      "ERROR tests/hardware/test_x.py::test_b - assert 1 == 0",
                      "E   AssertionError: 3 workers pinned to node 0"]
    out = capsys.readouterr().out
    assert "collected 4 items" in out and "oops" in out
    rc, failed = ht.run_guest(["sh", "-c", "echo fine"], str(tmp_path))
    assert (rc, failed) == (0, [])
