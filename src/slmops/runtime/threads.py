"""How many threads a model should run on: the CPUs this process may really use.

onnxruntime picks its default from the machine's physical cores, which on VMs and
containers is often too few (one thread on a 2-vCPU VM) or too many (every core of
the host while a cgroup quota allows two). Both cost half the speed or worse, so
slmops counts the CPUs it is allowed to run on and the CPU time its cgroup may use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def default_threads(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The thread count for a model: usable CPUs, capped by the cgroup's CPU quota.

    Args:
        proc_cgroup: the process's cgroup membership file (a fake one in tests).
        cgroup_root: where the cgroup file systems are mounted.

    Returns:
        At least 1.
    """
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        # A quota of 1.5 CPUs still lets two threads run most of the time.
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (taskset, cpuset), else all CPUs."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup and its parents, or None if unlimited.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000") and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 is unlimited). The smallest
    quota on the way up to the root wins, since each level caps everything below it.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            quotas += [_read_v2(folder) for folder in _folders(cgroup_root, path)]
        elif "cpu" in controllers.split(","):
            for mount in {controllers, "cpu"}:
                quotas += [_read_v1(folder) for folder in _folders(cgroup_root / mount, path)]
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and its parents up to the mount (inside a container the
    process's path may not exist under the mount, whose root is then its own cgroup)."""
    folder = mount / path.strip("/")
    folders = [folder, *folder.parents]
    return [item for item in folders if item == mount or mount in item.parents]


def _read_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else _ratio(quota, period)


def _read_v1(folder: Path) -> float | None:
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return None if quota.startswith("-") else _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None
