"""The initramfs: busybox, the modules, and an /init that hands over to stage 2.

numa-vm writes it itself as an uncompressed newc cpio (CpioWriter), so no
cpio or initramfs-tools is needed on the host.  Its file name carries key(),
a hash of everything in it, so a changed init script or module list builds
a new one beside the old.
"""

import hashlib
import os
import stat
import time

from .common import log

NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=512000"

INIT_SCRIPT = r"""#!/bin/sh
# numa-vm initramfs init: load the 9p/overlay modules, mount the per-run
# control share and hand over to the stage-2 script the host wrote there.
export PATH=/bin
/bin/busybox --install -s /bin
fail() {
    echo "NUMA-VM-ERROR: $*"
    poweroff -f
    while :; do sleep 1; done
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules/order); do
    insmod /modules/$m.ko || fail "cannot load kernel module $m"
done
mkdir -p /io
mount -t 9p -o @NINEP_OPTS@ nvio /io || fail "cannot mount the control share"
[ -r /io/stage2.sh ] || fail "control share has no stage2.sh"
exec /bin/sh /io/stage2.sh
""".replace("@NINEP_OPTS@", NINEP_OPTS)


def key(state):
    h = hashlib.sha256()
    h.update(INIT_SCRIPT.encode())
    h.update(state["kernel_version"].encode())
    h.update(state["busybox_version"].encode())
    h.update(" ".join(state["modules"] + ["/"] + state["systemd_modules"]).encode())
    return h.hexdigest()[:16]


def build(cache_path, state):
    """Write the initramfs for state into cache_path unless it is there; return its path."""
    final = os.path.join(cache_path, f"initramfs-{key(state)}.cpio")
    if os.path.exists(final):
        return final
    log("building initramfs")
    w = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "modules", "io", "root", "tmp"):
        w.add_dir(d)
    w.add_node("dev/console", 0o020600, 5, 1)
    with open(os.path.join(cache_path, state["busybox"]), "rb") as f:
        w.add_file("bin/busybox", f.read(), 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_file("init", INIT_SCRIPT.encode(), 0o755)
    moddir = os.path.join(cache_path, state["modules_dir"])
    for name in state["modules"] + state["systemd_modules"]:
        with open(os.path.join(moddir, name + ".ko"), "rb") as f:
            w.add_file(f"modules/{name}.ko", f.read(), 0o644)
    w.add_file("modules/order", ("\n".join(state["modules"]) + "\n").encode(), 0o644)
    w.add_file("modules/order-systemd",
               "".join(m + "\n" for m in state["systemd_modules"]).encode(), 0o644)
    tmp = final + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(w.finish())
    os.rename(tmp, final)
    # Drop initramfs images of other init script versions once they are a
    # day old (a numa-vm of another version may still be about to use one).
    for fn in os.listdir(cache_path):
        other = os.path.join(cache_path, fn)
        if fn.startswith("initramfs-") and fn.endswith(".cpio") and other != final:
            try:
                if time.time() - os.path.getmtime(other) > 86400:
                    os.unlink(other)
            except OSError:
                pass
    return final


class CpioWriter:
    """Minimal writer for the 'newc' cpio format the kernel unpacks."""

    def __init__(self):
        self.parts = []
        self.ino = 1000

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        self.ino += 1
        name_b = name.encode() + b"\x00"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(name_b), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        blob = hdr + name_b
        blob += b"\x00" * (-len(blob) % 4)
        blob += data + b"\x00" * (-len(data) % 4)
        self.parts.append(blob)

    def add_dir(self, name, perm=0o755):
        self._entry(name, stat.S_IFDIR | perm)

    def add_file(self, name, data, perm):
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_node(self, name, mode, major, minor):
        self._entry(name, stat.S_IFCHR | (mode & 0o7777), rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        out = b"".join(self.parts)
        return out + b"\x00" * (-len(out) % 512)
