"""What the guest runs, as text the host writes into the control share (pure).

The initramfs /init mounts the control share and runs stage2.sh from it;
stage 2 builds the root (host root over 9p + tmpfs overlay, API file
systems, the read-write shares) and either runs run.sh under busybox or
installs the systemd units below and switch_roots to systemd.  run.sh runs
COMMAND with exactly guest_env()'s variables.
"""

import os
import shlex

from .initramfs import NINEP_OPTS

INITS = ("busybox", "systemd")
CGROUPS = ("v2", "none", "v1")
# --cgroup v1: the legacy hierarchies a cgroup-v1 host mounts (RHEL 8-era, older
# container hosts), one per controller under a tmpfs, as systemd or cgconfig did.
CGROUP_V1_CONTROLLERS = ("cpuset", "cpu,cpuacct", "memory")

ENV_EXACT = {"PATH", "HOME", "TERM", "LANG", "LANGUAGE", "TZ", "CI", "VIRTUAL_ENV",
             "NO_COLOR", "FORCE_COLOR"}
ENV_PREFIXES = ("LC_", "PYTHON", "PYTEST_", "AUTONUMAD_")


def guest_env(opts, mem_mib):
    env = {}
    for k, v in os.environ.items():
        if k in ENV_EXACT or k.startswith(ENV_PREFIXES):
            env[k] = v
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    env["AUTONUMAD_VM_TOPOLOGY"] = opts["topology"]
    env["AUTONUMAD_VM_NODE_MEMORY_MIB"] = str(mem_mib)
    env["AUTONUMAD_VM_INIT"] = opts["init"]
    env["AUTONUMAD_VM_CGROUP"] = opts["cgroup"]
    env["AUTONUMAD_VM_KERNEL"] = opts["kernel"]
    return env


def writable_shares(checkout, cwd):
    """Host directories shared read-write, without nested duplicates."""
    cands = [checkout]
    if cwd != "/":
        cands.append(cwd)
    out = []
    for c in sorted(set(cands), key=len):
        if not any(c == o or c.startswith(o.rstrip("/") + "/") for o in out):
            out.append(c)
    return out


def qemu_path_opt(path):
    return path.replace(",", ",,")


# --init systemd: what the guest's systemd runs.  It boots straight to
# numa-vm.target (basic.target plus the job), so units the host has enabled
# for multi-user.target (databases, getty, ...) never start, while a unit
# installed in the guest can still be started with systemctl.  The job is
# Type=exec, not oneshot, so the boot is finished ("running") while COMMAND
# runs; it powers the guest off whichever way it ends.
SYSTEMD_TARGET = """\
[Unit]
Description=numa-vm guest: basic system plus the command
Requires=basic.target
Wants=numa-vm-job.service
After=basic.target
AllowIsolate=yes
"""

SYSTEMD_JOB = """\
[Unit]
Description=numa-vm command
After=basic.target

[Service]
Type=exec
ExecStart=/bin/sh /run/numa-vm/job.sh
StandardInput=null
TimeoutStartSec=infinity
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate
"""

# The job's status goes into the control share before the guest powers off;
# the host reads it from there as in the busybox guest.
SYSTEMD_JOB_SCRIPT = """\
IO=/run/numa-vm/io
: > $IO/started
/bin/sh /run/numa-vm/run.sh </dev/null >$IO/stdout 2>$IO/stderr
rc=$?
sync
echo $rc > $IO/status.tmp && mv $IO/status.tmp $IO/status
"""

# Units that would hang, wait for hardware the guest lacks, or only cost boot
# time in a throwaway guest (docs/numa-vm.md lists why for each).
SYSTEMD_MASKS = [
    "timers.target",                 # apt-daily, man-db, fstrim ... timers
    "systemd-timesyncd.service",     # no network; enabled in sysinit on hosts
    "systemd-pstore.service",        # no persistent store to archive
    "getty.target",                  # nobody logs in
    "serial-getty@ttyS0.service",    # would fight over the console
    "console-getty.service",
    "systemd-firstboot.service",     # never interactive
    "systemd-update-utmp.service",   # utmp/wtmp bookkeeping only
    "systemd-random-seed.service",   # the seed file is on the throwaway overlay
    # Not on this machine, but on a plain Debian host (CI) they sit in
    # sysinit.target: "/" is an overlay that must not be remounted with the
    # host's fstab options, and profiles/keymaps cost seconds under TCG.
    "systemd-remount-fs.service",
    "apparmor.service",
    "keyboard-setup.service",
    "console-setup.service",
    # D-Bus activated by apt's post-invoke hook when a test installs the
    # .deb; then it refreshes its cache and runs apt-get on a CPU the
    # placement tests count as busy (a CI run saw it).
    "packagekit.service",
    "packagekit-offline-update.service",
]


def stage2_script(shares, cwd, topology, init="busybox", cgroup="v2"):
    q = shlex.quote
    lines = [
        "# numa-vm stage 2 (generated per run by the host)",
        "R=/newroot",
        "fail() {",
        '    echo "$*" > /io/error',
        '    echo "NUMA-VM-ERROR: $*"',
        "    poweroff -f",
        "    while :; do sleep 1; done",
        "}",
        "mkdir -p /lower /ovl $R",
        f"mount -t 9p -o {NINEP_OPTS},ro,cache=loose hostroot /lower"
        " || fail 'cannot mount the host root over 9p'",
        "mount -t tmpfs -o mode=0755 ovl /ovl && mkdir -p /ovl/upper /ovl/work"
        " || fail 'cannot mount the overlay tmpfs'",
        "mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay $R"
        " || fail 'cannot mount the root overlay'",
        "mount -t proc proc $R/proc || fail 'cannot mount /proc'",
        "mount -t sysfs sysfs $R/sys || fail 'cannot mount /sys'",
        "mount -t devtmpfs devtmpfs $R/dev || fail 'cannot mount /dev'",
        "mkdir -p $R/dev/pts $R/dev/shm",
        "mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts $R/dev/pts",
        "mount -t tmpfs -o mode=1777 shm $R/dev/shm",
        "mount -t debugfs debugfs $R/sys/kernel/debug || fail 'cannot mount debugfs'",
        "mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null",
        "mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail 'cannot mount /tmp'",
        "mount -t tmpfs -o mode=0755 tmpfs $R/run || fail 'cannot mount /run'",
    ]
    for i, path in enumerate(shares):
        qp = q(path)
        # cache=3 (file data + metadata, no writeback): the guest is the only
        # writer while it runs; every write still reaches the host at once.
        # Kernels before 6.6 know only named modes (EINVAL for 3): there
        # cache=loose, which writes back, hence the sync before the status.
        lines.append(f"mkdir -p $R{qp} && {{ mount -t 9p -o {NINEP_OPTS},cache=3 nvrw{i} $R{qp}"
                     f" 2>/dev/null || mount -t 9p -o {NINEP_OPTS},cache=loose nvrw{i} $R{qp}; }}"
                     f" || fail {q('cannot mount the shared directory ' + path)}")
    lines += [
        f"[ -d $R{q(cwd)} ] || fail {q('current directory ' + cwd + ' not visible in the guest')}",
        "mkdir -p $R/run/numa-vm && cp /io/run.sh $R/run/numa-vm/run.sh"
        " || fail 'cannot copy the command script'",
    ]
    if init == "systemd":
        return "\n".join(lines + systemd_stage2_tail()) + "\n"
    if cgroup == "v2":
        # With --cgroup none no hierarchy is mounted: /proc/PID/cgroup is
        # then empty, as on minimal VMs and some container setups.
        lines.append("mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null")
    elif cgroup == "v1":
        # No cgroup2 at all: /proc/PID/cgroup has only "N:controller:/" lines.
        # Kernels built without CONFIG_CPUSETS_V1 (Debian's 6.12) refuse the
        # cpuset mount; that fails the boot with a reason, not a quiet v2 guest.
        lines.append("mount -t tmpfs -o mode=755 cgroup_root $R/sys/fs/cgroup"
                     " || fail 'cannot mount a tmpfs on /sys/fs/cgroup'")
        for c in CGROUP_V1_CONTROLLERS:
            d = f"$R/sys/fs/cgroup/{c}"
            lines.append(f"mkdir -p {d} && mount -t cgroup -o {c} {c} {d}"
                         f" || fail {q(f'cannot mount the cgroup v1 {c} hierarchy (this kernel has no v1 {c};' + ' try --kernel 6.1)')}")
    lines += [
        "ifconfig lo 127.0.0.1 up 2>/dev/null",
        f"hostname {q('numa-vm-' + topology)}",
        ": > /io/started",
        # In the background and then waited for, so that busybox sh reports
        # a fatal signal ("Killed") on the console, not in COMMAND's stderr.
        "chroot $R /bin/sh /run/numa-vm/run.sh </dev/null >/io/stdout 2>/io/stderr &",
        "wait $!",
        "rc=$?",
        "sync",
        "echo $rc > /io/status.tmp && mv /io/status.tmp /io/status",
        "poweroff -f",
        "while :; do sleep 1; done",
    ]
    return "\n".join(lines) + "\n"


def systemd_stage2_tail():
    """Stage 2's end under --init systemd: units, masks, then switch_root."""
    etc = "$R/etc/systemd/system"
    lines = [
        "for m in $(cat /modules/order-systemd); do",
        "    insmod /modules/$m.ko || fail \"cannot load kernel module $m\"",
        "done",
        # The host may be a container: with /.dockerenv (or podman's
        # /run/.containerenv) systemd believes it runs in one, ignores the
        # kernel command line and heads for graphical.target.
        "rm -f $R/.dockerenv $R/run/.containerenv",
        "cp /io/job.sh $R/run/numa-vm/job.sh || fail 'cannot copy the job script'",
        f"mkdir -p {etc} && cp /io/numa-vm.target /io/numa-vm-job.service {etc}/"
        " || fail 'cannot install the numa-vm units'",
    ]
    for unit in SYSTEMD_MASKS:
        lines.append(f"ln -sf /dev/null {etc}/{unit}")
    lines += [
        # The control share moves into the new root: the job writes its
        # status there, and switch_root empties the initramfs.
        "mkdir -p $R/run/numa-vm/io && mount --move /io $R/run/numa-vm/io"
        " || fail 'cannot move the control share'",
        "exec switch_root $R /lib/systemd/systemd"
        " || fail 'switch_root to systemd failed'",
    ]
    return lines


def run_script(command, cwd, env):
    q = shlex.quote
    envs = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
    return (
        "# numa-vm command script (generated per run by the host)\n"
        f"cd {q(cwd)} || exit 125\n"
        f"exec /usr/bin/env -i {envs} {' '.join(q(a) for a in command)}\n"
    )


def kernel_cmdline(opts, topology_name, verbose):
    """The guest kernel's command line for numa-vm's options."""
    # quiet loglevel=1: only KERN_EMERG (a panic) reaches the console log;
    # tsc=reliable: TCG's TSC is one global clock, and keeping it (rather
    # than HPET) makes guest time reads cheap; mitigations=off: a
    # throwaway test guest, and TCG is slow enough already.
    append = ("console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init mitigations=off"
              " tsc=reliable 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp")
    if opts["init"] == "systemd":
        # systemd.hostname: /etc/hostname is the host's.
        # fstab=no, gpt_auto=0: the host's fstab and partitions are
        # not the guest's (it has no disks), so nothing waits for them.
        append += (f" systemd.unit=numa-vm.target systemd.hostname=numa-vm-{topology_name}"
                   " systemd.firstboot=0 fstab=no systemd.gpt_auto=0")
        if verbose:
            append += (" systemd.show_status=1 systemd.journald.forward_to_console=1"
                       " systemd.journald.max_level_console=warning")
    if verbose:
        append = append.replace("quiet loglevel=1", "loglevel=6")
    return append


def control_files(opts, shares, cwd, topology_name, mem_mib):
    """{file name: text} for the per-run control share."""
    files = {
        "stage2.sh": stage2_script(shares, cwd, topology_name, opts["init"], opts["cgroup"]),
        "run.sh": run_script(opts["command"], cwd, guest_env(opts, mem_mib)),
    }
    if opts["init"] == "systemd":
        files.update({"numa-vm.target": SYSTEMD_TARGET,
                      "numa-vm-job.service": SYSTEMD_JOB,
                      "job.sh": SYSTEMD_JOB_SCRIPT})
    return files
