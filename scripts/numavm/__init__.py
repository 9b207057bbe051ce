"""numa-vm: run one command inside a throwaway multi-node NUMA guest (QEMU/TCG).

scripts/numa-vm is the entry point; docs/numa-vm.md describes the whole.
Standard library only: it runs on Debian 12's python3 (3.11) before any
virtual environment exists.  The modules, in the order a run uses them:

- cli        options, --help, exit statuses
- topology   guest NUMA topologies -> QEMU -numa options (pure)
- cache      host packages, Debian kernels and busybox, fetched once
- initramfs  the busybox initramfs (a newc cpio written here)
- guest      the scripts and units the guest runs (pure text)
- run        QEMU's command line, the run directory, the watch loop
- common     exit statuses, VMError, logging
"""
