"""The torch thread count: min(os.cpu_count(), CPUs in the affinity mask, ⌊cgroup CPU quota⌋), read from fake
/proc and /sys trees (cgroup v2 and v1) so every kind of container can be described; and idle OpenMP threads told
to sleep before torch loads OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PATIENCE

from ddpm_app.runtime.cpu import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    TRIM_THRESHOLD,
    CpuBudget,
    cgroup_cpu_quota,
    cpu_budget,
    trim_malloc,
    tune_malloc,
    wait_passively,
)

ROOT = Path(__file__).resolve().parents[2]


def test_idle_openmp_threads_are_told_to_sleep_unless_the_user_said_otherwise():
    environ = {}
    assert "PASSIVE" in wait_passively(environ) and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert "ACTIVE" in wait_passively(environ) and environ == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_app_sets_the_wait_policy_before_torch_loads_openmp():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: what app.py sets after that import does nothing."""
    script = """
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("at torch:", os.environ.get("OMP_WAIT_POLICY"))
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Watch())
import app
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=PATIENCE)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "at torch: PASSIVE"


def fake_machine(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    """A root with /proc/self/cgroup = ``cgroup`` and each ``files`` path (relative to root) holding its text."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_v2_quota_below_the_cores_limits_the_threads(tmp_path: Path):
    root = fake_machine(tmp_path, "0::/\n", {"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cgroup_cpu_quota(root) == 2.0
    assert cpu_budget(root, cpu_count=64, affinity=64) == CpuBudget(threads=2, cpu_count=64, affinity=64, quota=2.0)


def test_a_fractional_quota_rounds_down_but_never_to_zero(tmp_path: Path):
    root = fake_machine(tmp_path / "a", "0::/\n", {"sys/fs/cgroup/cpu.max": "250000 100000\n"})
    assert cpu_budget(root, cpu_count=8, affinity=8).threads == 2
    root = fake_machine(tmp_path / "b", "0::/\n", {"sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert cgroup_cpu_quota(root) == 0.5 and cpu_budget(root, cpu_count=8, affinity=8).threads == 1


def test_no_quota_max_leaves_affinity_and_cores(tmp_path: Path):
    root = fake_machine(tmp_path, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root) is None
    assert cpu_budget(root, cpu_count=16, affinity=16) == CpuBudget(threads=16, cpu_count=16, affinity=16, quota=None)


def test_v2_the_tightest_quota_up_the_tree_counts(tmp_path: Path):
    root = fake_machine(tmp_path, "0::/spaces/app\n", {"sys/fs/cgroup/spaces/cpu.max": "300000 100000\n",
                                                         "sys/fs/cgroup/spaces/app/cpu.max": "max 100000\n",
                                                         "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root) == 3.0
    assert cpu_budget(root, cpu_count=32, affinity=32).threads == 3


def test_v1_quota_in_a_container_that_sees_its_own_cgroup_as_the_mount(tmp_path: Path):
    # /proc/self/cgroup names the host's path, but the container's cpu mount is its own cgroup
    cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    root = fake_machine(tmp_path, cgroup, {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
                                           "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "50000\n"})
    assert cgroup_cpu_quota(root) == 3.0
    assert cpu_budget(root, cpu_count=96, affinity=96).threads == 3


def test_v1_minus_one_is_no_quota(tmp_path: Path):
    root = fake_machine(tmp_path, "3:cpu:/\n2:cpuacct:/\n", {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                                                               "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(root) is None
    assert cpu_budget(root, cpu_count=4, affinity=4).threads == 4


def test_an_affinity_mask_smaller_than_the_machine_limits_the_threads(tmp_path: Path):
    root = fake_machine(tmp_path, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cpu_budget(root, cpu_count=64, affinity=6) == CpuBudget(threads=6, cpu_count=64, affinity=6, quota=None)


def test_never_more_threads_than_the_machine_has(tmp_path: Path):
    root = fake_machine(tmp_path, "0::/\n", {"sys/fs/cgroup/cpu.max": "3200000 100000\n"})
    assert cpu_budget(root, cpu_count=4, affinity=4).threads == 4


@pytest.mark.parametrize("cgroup, files", [("", {}), ("0::/\n", {"sys/fs/cgroup/cpu.max": "garbage\n"})])
def test_missing_or_unreadable_cgroup_files_mean_no_quota(tmp_path: Path, cgroup, files):
    root = fake_machine(tmp_path, cgroup, files)
    assert cgroup_cpu_quota(root) is None
    assert cgroup_cpu_quota(tmp_path / "no-such-root") is None


def test_the_real_machine_gets_at_least_one_thread_and_at_most_its_cpus():
    budget = cpu_budget()
    assert 1 <= budget.threads <= budget.affinity <= budget.cpu_count
    assert str(budget).startswith(f"{budget.threads} thread")


class FakeLibc:
    """A libc whose mallopt records its calls and answers ``answer`` (1: accepted, 0: refused)."""

    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_malloc_keeps_blocks_under_32_mib_on_the_heap_and_freed_memory_for_reuse():
    libc = FakeLibc()
    said = tune_malloc(libc, "linux")
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    assert (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD) == (-3, -1, 32 * 2**20)  # malloc.h's numbers
    assert said == "malloc: blocks under 32 MiB from the heap, up to 1 GiB of freed heap kept"


def test_malloc_is_left_alone_without_glibc_or_when_mallopt_refuses():
    assert tune_malloc(FakeLibc(), "darwin") == "malloc left as it is (darwin)"
    assert tune_malloc(object(), "linux") == "malloc left as it is (no glibc mallopt)"
    assert tune_malloc(FakeLibc(answer=0), "linux") == "malloc left as it is (mallopt refused the thresholds)"


@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists() and not Path("/lib64/libc.so.6").exists(),
                    reason="no glibc here")
def test_this_machines_glibc_takes_the_thresholds():
    assert tune_malloc().startswith("malloc: blocks under 32 MiB")


class TrimLibc:
    def __init__(self, answer: int = 1):
        self.answer, self.calls = answer, []

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(pad)
        return self.answer


def test_trim_gives_back_all_freed_heap_and_says_whether_it_did():
    libc = TrimLibc()
    assert trim_malloc(libc, "linux") is True and libc.calls == [0]  # pad 0: keep nothing spare
    assert trim_malloc(TrimLibc(answer=0), "linux") is False
    assert trim_malloc(TrimLibc(), "darwin") is False and trim_malloc(object(), "linux") is False
