"""How many threads torch should use on the CPU: the CPUs this process may run on, within its cgroup CPU quota;
how its idle threads should wait (:func:`wait_passively`); and how glibc's malloc should hand memory to the
network (:func:`tune_malloc`).

``os.cpu_count()`` counts the host's CPUs. In a container (a Hugging Face Space, ``docker run --cpus``) the process
may use fewer: its affinity mask (taskset, cpuset) lists the CPUs it may run on, and the CFS quota of its cgroup
(v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) caps the CPU time it gets per period. Threads
beyond that quota are throttled mid-step, and torch's threads then wait on each other.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping

CGROUP_MOUNTS = ("sys/fs/cgroup", "sys/fs/cgroup/unified")  # v2 alone; v2 beside v1 ("hybrid")
CGROUP_V1_CPU_MOUNTS = ("sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpuacct,cpu")
# glibc mallopt parameters (malloc.h) and the values tune_malloc sets: blocks below 32 MiB (glibc's largest
# threshold) come from the heap, not from fresh mmap'd pages, and up to 1 GiB of freed heap is kept for reuse
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30


def wait_passively(environ: MutableMapping[str, str] = os.environ) -> str:
    """Make OpenMP's idle threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``), unless the environment already
    says otherwise; returns what was done, for the start-up log. OpenMP reads the variable once, when it loads, so an
    entry point calls this before it imports torch.

    A thread that spins holds its core while it waits for its siblings; where other programs use the cores too (a
    shared vCPU, a laptop at work), the scheduler puts aside the thread being waited for, and every parallel op of
    a step becomes a wait: a step that took tens of ms took hundreds (see docs/performance.md).
    """
    if "OMP_WAIT_POLICY" in environ:
        return f"OpenMP threads wait as OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']} says"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "OpenMP threads sleep while idle (OMP_WAIT_POLICY=PASSIVE)"


@dataclass(frozen=True)
class CpuBudget:
    """The thread count chosen, and what it was chosen from."""

    threads: int           # min(cpu_count, affinity, ⌊quota⌋), at least 1
    cpu_count: int         # os.cpu_count(): the host's CPUs
    affinity: int          # CPUs in this process's affinity mask
    quota: float | None    # CPU time the cgroup allows per period, in CPUs; None if unlimited

    def __str__(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        return (f"{self.threads} thread{'s' if self.threads != 1 else ''} "
                f"(CPUs: {self.cpu_count}, affinity: {self.affinity}, cgroup quota: {quota})")


def cpu_budget(root: str | Path = "/", *, cpu_count: int | None = None, affinity: int | None = None) -> CpuBudget:
    """The threads to give ``torch.set_num_threads``: min(os.cpu_count(), CPUs in the affinity mask, ⌊quota⌋).

    The quota is rounded down: a thread that only gets part of a CPU would stall the others at every barrier.
    ``root`` is where ``proc/`` and ``sys/`` are read from, and ``cpu_count`` / ``affinity`` replace
    ``os.cpu_count()`` / ``len(os.sched_getaffinity(0))``, so tests can describe any machine.
    """
    cpu_count = cpu_count or os.cpu_count() or 1
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpu_count
    quota = cgroup_cpu_quota(root)
    threads = min(cpu_count, affinity, math.floor(quota) if quota is not None else cpu_count)
    return CpuBudget(threads=max(1, threads), cpu_count=cpu_count, affinity=affinity, quota=quota)


def cgroup_cpu_quota(root: str | Path = "/") -> float | None:
    """The tightest CFS quota (quota / period, in CPUs) on this process's cgroup and its ancestors, cgroup v2 or v1;
    None when there is none (``max``, ``-1``) or no cgroup files can be read."""
    root = Path(root)
    quotas = []
    for hierarchy, controllers, path in _own_cgroups(root):
        if hierarchy == "0":  # v2: "0::/path"
            for directory in _dirs_up(root, CGROUP_MOUNTS, path):
                quotas.append(_v2_quota(directory / "cpu.max"))
        elif "cpu" in controllers.split(","):  # v1: "N:cpu,cpuacct:/path"
            for directory in _dirs_up(root, CGROUP_V1_CPU_MOUNTS, path):
                quotas.append(_v1_quota(directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _own_cgroups(root: Path) -> list[tuple[str, str, str]]:
    """(hierarchy id, controllers, path) for each line of /proc/self/cgroup; [("0", "", "/")] if unreadable."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return [("0", "", "/")]
    return [tuple(line.split(":", 2)) for line in lines if line.count(":") >= 2]


def _dirs_up(root: Path, mounts: tuple[str, ...], path: str) -> list[Path]:
    """The cgroup directory of ``path`` under each mount, and its ancestors up to the mount, that exist. In a
    container the mount may be the container's own cgroup while ``path`` names it from the host: its root counts."""
    parts = [p for p in path.strip("/").split("/") if p]
    dirs = []
    for mount in mounts:
        for depth in range(len(parts), -1, -1):
            directory = root.joinpath(mount, *parts[:depth])
            if directory.is_dir() and directory not in dirs:
                dirs.append(directory)
    return dirs


def _v2_quota(cpu_max: Path) -> float | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" in µs, or "max PERIOD" for no limit."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(quota_file: Path, period_file: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    try:
        quota, period = int(quota_file.read_text()), int(period_file.read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def tune_malloc(libc: object | None = None, platform: str = sys.platform) -> str:
    """Keep glibc's malloc from mapping and unmapping the network's activations at every step; returns what was done,
    for the start-up log.

    glibc serves a block above its mmap threshold from fresh pages (zeroed by the kernel, faulted in on first touch)
    and raises that threshold as the program frees such blocks, so the cost of a CPU step depends on what the
    process allocated before (figures: docs/performance.md, "The engine"). Fixed thresholds make a step cost the
    same whatever came before. A process without glibc (macOS, Windows, musl) is left as it is.
    """
    if not platform.startswith("linux"):
        return f"malloc left as it is ({platform})"
    try:
        mallopt = (libc or ctypes.CDLL("libc.so.6")).mallopt
    except (OSError, AttributeError):
        return "malloc left as it is (no glibc mallopt)"
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "malloc left as it is (mallopt refused the thresholds)"
    return (f"malloc: blocks under {MMAP_THRESHOLD >> 20} MiB from the heap, up to {TRIM_THRESHOLD >> 30} GiB of freed "
            "heap kept")


def trim_malloc(libc: object | None = None, platform: str = sys.platform) -> bool:
    """Give the freed heap of every malloc arena back to the system (glibc's ``malloc_trim(0)``); whether memory
    was returned.

    :func:`tune_malloc` keeps up to 1 GiB of freed heap per arena so that sampling steps reuse their pages, and each
    server thread that allocates gets an arena of its own: without a trim, what a burst of users or a refused
    request allocated stays in the process for good. Call it when no tensor work is running (the next step then
    faults its pages in once again). Without glibc, nothing is done."""
    if not platform.startswith("linux"):
        return False
    try:
        malloc_trim = (libc or ctypes.CDLL("libc.so.6")).malloc_trim
    except (OSError, AttributeError):
        return False
    return malloc_trim(0) == 1
