"""autonumad: a userspace NUMA balancer for Linux."""

__version__ = "0.1.0"
