"""The cache: host packages, Debian kernels (one per series), busybox.

Everything comes from Debian packages (apt-get download by exact name, then
dpkg-deb -x) and is kept under default_cache_dir(); see docs/numa-vm.md,
"First use: the cache".  Setup runs under an flock on the cache's .lock and
renames finished files into place, so concurrent numa-vms either wait for
one setup or use a finished cache.
"""

import fcntl
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time

from . import initramfs
from .common import VMError, log, run_quiet

# Debian kernels a guest can boot: the series named on the command line ->
# how to find the newest package of it in apt's lists, and the cache's state
# file for it (6.12's keeps the name older numa-vm versions used, so an
# existing cache stays valid).
KERNELS = {
    # bookworm-backports / -security: linux-image-6.12.N+deb12-amd64-unsigned
    "6.12": {"prefix": "linux-image-6.12.",
             "pattern": r"linux-image-6\.12\.(\d+)\+deb12-amd64-unsigned",
             "state": "state.json"},
    # bookworm's stock kernel (what linux-image-amd64 depends on):
    # linux-image-6.1.0-ABI-amd64-unsigned, newest ABI number wins.
    "6.1": {"prefix": "linux-image-6.1.0-",
            "pattern": r"linux-image-6\.1\.0-(\d+)-amd64-unsigned",
            "state": "state-6.1.json"},
    # Debian 11's kernel, from bullseye-security (LTS): a pre-6.x kernel (no
    # memory tiers, no NUMA balancing mode 2, no DAMON). Not in a bookworm
    # host's sources, so numa-vm reads that suite into a private apt state
    # under the cache (the host's sources are left as they are).
    "5.10": {"prefix": "linux-image-5.10.0-",
             "pattern": r"linux-image-5\.10\.0-(\d+)-amd64-unsigned",
             "state": "state-5.10.json",
             "apt_source": "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
                           " http://deb.debian.org/debian-security bullseye-security main"},
}
DEFAULT_KERNEL = "6.12"
# Host packages: qemu to run the guest, numactl because the guest runs the
# host's root filesystem and tests call it there.
HOST_PACKAGES = {"qemu-system-x86": "qemu-system-x86_64", "numactl": "numactl"}
# --init systemd runs the host's own systemd as the guest's PID 1.
SYSTEMD_PACKAGES = {"systemd": "/lib/systemd/systemd"}
# Modules the initramfs loads (their dependencies are found and loaded first;
# built-in ones are skipped): virtio_pci is built into 6.12 but a module in
# 6.1, where virtio itself is one too.
WANTED_MODULES = ["virtio_pci", "9p", "9pnet_virtio", "overlay"]
# Modules systemd wants before it can run (the guest has no module tree, so
# systemd cannot load them itself): autofs for its automount units (called
# autofs4 up to 6.5) and binfmt_misc for proc-sys-fs-binfmt_misc.mount.
# Whichever exist in the kernel package as modules are kept.
SYSTEMD_MODULES = ["autofs", "autofs4", "binfmt_misc"]
# Bumped when state.json gains something older caches lack (a re-fetch).
CACHE_LAYOUT = 2


def default_cache_dir():
    env = os.environ.get("AUTONUMAD_VM_CACHE")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/cache/autonumad/numa-vm"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "autonumad", "numa-vm")

def pick_kernel_package(names, pattern):
    """The newest package among apt's names that fully matches pattern.

    pattern's one group is the number that orders them (6.12's point release,
    6.1's ABI number); None when nothing matches.
    """
    pat = re.compile(pattern)
    found = sorted((int(m.group(1)), m.group(0)) for m in
                   (pat.fullmatch(n.strip()) for n in names) if m)
    return found[-1][1] if found else None


def extract_modules(moddir, dest):
    """Decompress the modules the guest loads and their dependencies.

    Returns the load order of WANTED_MODULES (always loaded) and that of
    the SYSTEMD_MODULES the package has (loaded under --init systemd).
    """
    if not os.path.isdir(moddir):
        raise VMError(f"kernel package has no {moddir}")
    builtin = set()
    try:
        with open(os.path.join(moddir, "modules.builtin")) as f:
            for line in f:
                builtin.add(os.path.basename(line.strip()).split(".ko")[0].replace("-", "_"))
    except OSError:
        pass
    index = {}
    for dirpath, _, files in os.walk(moddir):
        for fn in files:
            if ".ko" in fn:
                index[fn.split(".ko")[0].replace("-", "_")] = os.path.join(dirpath, fn)
    order, loaded = [], {}

    def load(name, order):
        name = name.replace("-", "_")
        if name in loaded or name in builtin:
            return
        path = index.get(name)
        if path is None:
            raise VMError(f"kernel module {name} not found in the kernel package")
        if path.endswith(".xz"):
            data = lzma.decompress(open(path, "rb").read())
        elif path.endswith(".ko"):
            data = open(path, "rb").read()
        else:
            raise VMError(f"unsupported module compression: {os.path.basename(path)}")
        loaded[name] = True
        m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
        for dep in (m.group(1).decode().split(",") if m else []):
            if dep:
                load(dep, order)
        with open(os.path.join(dest, name + ".ko"), "wb") as f:
            f.write(data)
        order.append(name)

    for name in WANTED_MODULES:
        load(name, order)
    sd_order = []
    for name in SYSTEMD_MODULES:
        if name in index:
            load(name, sd_order)
    return order, sd_order


class Cache:
    def __init__(self, path, verbose, kernel=DEFAULT_KERNEL, systemd=False):
        self.path = path
        self.verbose = verbose
        self.kernel = kernel
        self.packages = dict(HOST_PACKAGES, **(SYSTEMD_PACKAGES if systemd else {}))
        self.apt_updated = False

    def progress(self, msg):
        log(msg)

    # -- fast path ---------------------------------------------------------

    def state_path(self):
        return os.path.join(self.path, KERNELS[self.kernel]["state"])

    def load_state(self):
        try:
            with open(self.state_path()) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        try:
            need = [state["vmlinuz"], state["busybox"], state["modules_dir"]]
            if state.get("layout") != CACHE_LAYOUT or state.get("series") != self.kernel:
                return None
        except (KeyError, AttributeError, TypeError):
            return None
        if not all(os.path.exists(os.path.join(self.path, p)) for p in need):
            return None
        return state

    def ready(self):
        """Return (state, initramfs path) if everything is in place, else None."""
        if any(shutil.which(b) is None for b in self.packages.values()):
            return None
        state = self.load_state()
        if state is None:
            return None
        initrd = os.path.join(self.path, f"initramfs-{initramfs.key(state)}.cpio")
        if not os.path.exists(initrd):
            return None
        return state, initrd

    # -- slow path (under the lock) ----------------------------------------

    def ensure(self):
        r = self.ready()
        if r:
            return r
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise VMError(f"cannot create cache directory {self.path}: {e.strerror}")
        lock_path = os.path.join(self.path, ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise VMError(f"cannot open {lock_path}: {e.strerror}")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.progress(f"waiting for another numa-vm to finish setting up {self.path}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            r = self.ready()
            if r:
                return r
            t0 = time.monotonic()
            self.progress(f"setting up {self.path} (the first time takes a few minutes)")
            self.setup()
            r = self.ready()
            if not r:
                raise VMError("setup finished but the cache is still incomplete")
            self.progress(f"setup done in {time.monotonic() - t0:.0f} s")
            return r
        finally:
            os.close(fd)

    def apt_env(self):
        env = dict(os.environ)
        env["DEBIAN_FRONTEND"] = "noninteractive"
        env.setdefault("LC_ALL", "C")
        return env

    def apt_update(self):
        if self.apt_updated:
            return
        self.progress("apt-get update")
        last = None
        for attempt in range(20):
            try:
                run_quiet(["apt-get", "-q", "update"], "apt-get update", env=self.apt_env())
                self.apt_updated = True
                return
            except VMError as e:
                last = e
                if "lock" not in str(e).lower():
                    raise
                time.sleep(15)     # another apt is running
        raise last

    def apt_get(self, args, what, cwd=None):
        """apt-get with one retry after an apt-get update."""
        cmd = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=900"] + args
        try:
            return run_quiet(cmd, what, cwd=cwd, env=self.apt_env())
        except VMError:
            if self.apt_updated:
                raise
            self.apt_update()
            return run_quiet(cmd, what, cwd=cwd, env=self.apt_env())

    def setup(self):
        if os.geteuid() != 0:
            missing = [p for p, b in self.packages.items() if shutil.which(b) is None]
            if missing or self.load_state() is None:
                raise VMError("first-time setup needs root (apt-get); run it once as root"
                              " or set AUTONUMAD_VM_CACHE to a prepared cache")
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise VMError(f"{tool} not found: numa-vm needs a Debian host")
        missing = [p for p, b in self.packages.items() if shutil.which(b) is None]
        if missing:
            self.progress("apt-get install " + " ".join(missing))
            self.apt_get(["install", "--no-install-recommends"] + missing,
                         "apt-get install " + " ".join(missing))
            still = [p for p, b in self.packages.items() if shutil.which(b) is None]
            if still:
                raise VMError("installed " + " ".join(still) + " but its program is not on PATH")
        state = self.load_state()
        if state is None:
            state = self.fetch_kernel_and_busybox()
        initramfs.build(self.path, state)

    def kernel_apt_options(self):
        """apt options that read the kernel's own suite, for a series the host's sources lack."""
        source = KERNELS[self.kernel].get("apt_source")
        if not source:
            return []
        base = os.path.join(self.path, f"apt-{self.kernel}")
        for d in ("lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        with open(os.path.join(base, "sources.list"), "w") as f:
            f.write(source + "\n")
        return ["-o", f"Dir::Etc::SourceList={base}/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={base}/lists", "-o", f"Dir::Cache={base}/cache"]

    def kernel_package(self, opts=None):
        """The kernel package to fetch; `opts`: kernel_apt_options(), if the caller has them."""
        spec = KERNELS[self.kernel]
        opts = self.kernel_apt_options() if opts is None else opts
        if opts:
            self.progress(f"apt-get update ({spec['apt_source'].split()[-2]})")
            run_quiet(["apt-get", "-q", *opts, "update"], "apt-get update", env=self.apt_env())
        pkg = os.environ.get("AUTONUMAD_VM_KERNEL_PACKAGE")
        if pkg:
            # It names one package, for one series: a 6.12 package must not
            # end up cached as the 6.1 kernel.
            if not pkg.startswith(spec["prefix"]):
                raise VMError(f"AUTONUMAD_VM_KERNEL_PACKAGE={pkg} is not a {self.kernel} kernel"
                              f" (--kernel {self.kernel} wants {spec['prefix']}...)")
            return pkg
        for attempt in (0, 1):
            out = subprocess.run(["apt-cache", *opts, "pkgnames", spec["prefix"]],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True).stdout
            found = pick_kernel_package(out.splitlines(), spec["pattern"])
            if found:
                return found
            if attempt == 0 and not opts:
                self.apt_update()
        raise VMError(f"no package matching {spec['pattern']} known to apt"
                      " (is bookworm-security or backports configured?)")

    def download_deb(self, pkg, workdir, apt_options=()):
        self.progress(f"apt-get download {pkg}")
        self.apt_get([*apt_options, "download", pkg], f"apt-get download {pkg}", cwd=workdir)
        debs = [f for f in os.listdir(workdir)
                if f.startswith(pkg.split("=")[0] + "_") and f.endswith(".deb")]
        if len(debs) != 1:
            raise VMError(f"apt-get download {pkg} produced no single .deb")
        deb = os.path.join(workdir, debs[0])
        version = run_quiet(["dpkg-deb", "-f", deb, "Version"], "dpkg-deb -f").strip()
        return deb, version

    def fetch_kernel_and_busybox(self):
        apt_options = self.kernel_apt_options()
        pkg = self.kernel_package(apt_options)
        m = re.fullmatch(r"linux-image-(.+)-unsigned", pkg)
        if not m:
            raise VMError(f"unexpected kernel package name {pkg}")
        kver = m.group(1)
        work = tempfile.mkdtemp(prefix="setup.", dir=self.path)
        os.chmod(work, 0o755)          # apt-get download runs as _apt
        try:
            deb, kdeb_version = self.download_deb(pkg, work, apt_options)
            self.progress(f"unpacking {os.path.basename(deb)}")
            root = os.path.join(work, "root")
            run_quiet(["dpkg-deb", "-x", deb, root], f"dpkg-deb -x {deb}")
            os.unlink(deb)
            kdir_name = f"kernel-{kver}"
            kdir = os.path.join(work, kdir_name)
            os.makedirs(os.path.join(kdir, "modules"))
            vmlinuz = os.path.join(root, "boot", f"vmlinuz-{kver}")
            if not os.path.exists(vmlinuz):
                raise VMError(f"{pkg} has no boot/vmlinuz-{kver}")
            shutil.copy2(vmlinuz, os.path.join(kdir, "vmlinuz"))
            config = os.path.join(root, "boot", f"config-{kver}")
            if os.path.exists(config):
                shutil.copy2(config, os.path.join(kdir, "config"))
            order, sd_order = extract_modules(os.path.join(root, "lib", "modules", kver),
                                                   os.path.join(kdir, "modules"))
            shutil.rmtree(root)

            bb_deb, bb_version = self.download_deb("busybox-static", work)
            bb_root = os.path.join(work, "bb")
            run_quiet(["dpkg-deb", "-x", bb_deb, bb_root], "dpkg-deb -x busybox-static")
            bb_src = os.path.join(bb_root, "bin", "busybox")
            if not os.path.exists(bb_src):
                raise VMError("busybox-static package has no bin/busybox")
            shutil.copy2(bb_src, os.path.join(kdir, "busybox"))
            shutil.rmtree(bb_root)
            os.unlink(bb_deb)

            final = os.path.join(self.path, kdir_name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(kdir, final)
            state = {
                "layout": CACHE_LAYOUT,
                "series": self.kernel,
                "kernel_package": pkg,
                "kernel_package_version": kdeb_version,
                "kernel_version": kver,
                "busybox_version": bb_version,
                "vmlinuz": f"{kdir_name}/vmlinuz",
                "busybox": f"{kdir_name}/busybox",
                "modules_dir": f"{kdir_name}/modules",
                "modules": order,
                "systemd_modules": sd_order,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            tmp = self.state_path() + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f, indent=1)
            os.rename(tmp, self.state_path())
            return state
        finally:
            shutil.rmtree(work, ignore_errors=True)
