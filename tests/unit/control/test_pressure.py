"""PressureReader on recorded trees (fake clock for the CPU rate), budgets, psutil fallback, pressure()."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from kstap.control.plant import FakeClock
from kstap.control.pressure import PressureReader, cpu_ratio, memory_ratio, pressure
from kstap.model import ResourceStats

TREES = Path(__file__).parent / "trees"
MIB = 1 << 20
POD = "sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"


def copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(TREES / name, root)
    return root


def test_v2_nested_reading() -> None:
    stats = PressureReader(root=str(TREES / "v2-nested"), clock=FakeClock()).read()
    assert stats.memory_limit == 200 * MIB and stats.memory_bytes == 120 * MIB
    assert stats.memory_usage == 150 * MIB
    assert stats.cpu_limit == 1.5
    assert stats.throttled_periods == 42 and stats.throttled_seconds == 2.5
    assert stats.oom_events == 2 and stats.memory_limit_hits == 12
    # the container's own PSI file, not the host's /proc/pressure
    assert stats.psi_memory_some == 12.5 and stats.psi_memory_full == 4.25
    assert stats.psi_memory_full_total == 333000 and stats.psi_cpu_some == 20.0
    assert stats.source.startswith("memory: cgroup v2 /kubepods.slice/")
    assert "(limit of /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice)" in stats.source
    assert "cpu: cgroup v2" in stats.source and "psi: cgroup" in stats.source
    assert "psutil" not in stats.source
    assert stats.process_rss is not None and stats.process_rss > 0  # psutil, for display only


def test_v1_docker_reading() -> None:
    stats = PressureReader(root=str(TREES / "v1-docker"), clock=FakeClock()).read()
    assert (stats.memory_bytes, stats.memory_limit, stats.cpu_limit) == (150 * MIB, 256 * MIB, 2.0)
    assert stats.oom_events == 2 and stats.throttled_periods == 12
    assert stats.psi_memory_some == 1.0 and stats.psi_memory_full_total == 500  # host /proc/pressure
    assert stats.psi_cpu_some is None  # no /proc/pressure/cpu in that tree
    assert "memory: cgroup v1 /docker/0123456789ab" in stats.source and "psi: /proc/pressure" in stats.source


def test_v1_nested_reading() -> None:
    stats = PressureReader(root=str(TREES / "v1-nested"), clock=FakeClock()).read()
    assert stats.memory_limit == 100 * MIB and stats.memory_bytes == 70 * MIB
    assert stats.cpu_limit == 0.5 and stats.oom_events == 3
    assert "cpu: cgroup v1 /kstap (quota of /kstap)" in stats.source


def test_no_limit() -> None:
    stats = PressureReader(root=str(TREES / "no-limit"), clock=FakeClock()).read()
    assert stats.memory_limit is None and stats.cpu_limit is None
    assert stats.memory_bytes == 600 * MIB
    assert pressure(stats) == 0.0


def test_missing_files_fall_back_to_psutil_and_say_so() -> None:
    stats = PressureReader(root=str(TREES / "missing"), clock=FakeClock()).read()
    rss = psutil.Process().memory_info().rss
    assert stats.memory_limit is None and stats.cpu_limit is None
    assert 0.5 * rss < stats.memory_bytes < 2 * rss
    assert "psutil (sees the host, not the container)" in stats.source
    assert stats.psi_memory_some is None and "psi" not in stats.source


def test_budgets_override_limits() -> None:
    reader = PressureReader(root=str(TREES / "v2-nested"), memory_budget=100 * MIB, cpu_budget=0.25,
                            clock=FakeClock())
    stats = reader.read()
    assert stats.memory_limit == 100 * MIB and stats.cpu_limit == 0.25
    assert "memory limit: budget" in stats.source and "cpu limit: budget" in stats.source
    stats = PressureReader(root=str(TREES / "missing"), memory_budget=1 << 40, clock=FakeClock()).read()
    assert stats.memory_limit == 1 << 40


@pytest.mark.parametrize("kwargs", [{"memory_budget": 0}, {"cpu_budget": 0.0}, {"cpu_budget": float("nan")}])
def test_bad_budgets(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="budget"):
        PressureReader(root=str(TREES / "missing"), **kwargs)  # type: ignore[arg-type]


def test_cpu_use_is_the_counter_delta_over_the_injected_clock(tmp_path: Path) -> None:
    root = copy(tmp_path, "v2-nested")
    stat = root / POD / "cpu.stat"
    clock = FakeClock(100.0)
    reader = PressureReader(root=str(root), clock=clock)  # primes the counter: 40 s of CPU

    def set_usage(seconds: float) -> None:
        stat.write_text(f"usage_usec {int(seconds * 1e6)}\nnr_throttled 42\nthrottled_usec 2500000\n")

    assert reader.read().cpu_cores == 0.0  # no time has passed: nothing to divide by
    set_usage(40.75)
    clock.advance(1.0)
    stats = reader.read()
    assert stats.cpu_cores == pytest.approx(0.75)
    assert cpu_ratio(stats) == pytest.approx(0.5)  # 0.75 of 1.5 cores
    set_usage(43.75)
    clock.advance(2.0)
    assert reader.read().cpu_cores == pytest.approx(1.5)
    stats = reader.read()  # the clock did not move: keep the last figure
    assert stats.cpu_cores == pytest.approx(1.5)


def test_cpu_rate_restarts_when_the_counter_source_changes(tmp_path: Path) -> None:
    root = copy(tmp_path, "v2-nested")
    clock = FakeClock()
    reader = PressureReader(root=str(root), clock=clock)
    for name in ("cpu.stat", "cpu.max"):
        for path in root.glob(f"**/{name}"):
            path.unlink()
    clock.advance(1.0)
    stats = reader.read()  # now psutil process time: no delta against the cgroup's 40 s
    assert stats.cpu_cores == 0.0
    assert "cpu: psutil" in stats.source
    clock.advance(1.0)
    assert reader.read().cpu_cores < 5.0


def test_follows_the_process_to_another_cgroup(tmp_path: Path) -> None:
    root = copy(tmp_path, "v2-nested")
    reader = PressureReader(root=str(root), clock=FakeClock())
    assert reader.read().memory_limit == 200 * MIB
    (root / "proc/self/cgroup").write_text("0::/kubepods.slice\n")
    (root / "sys/fs/cgroup/kubepods.slice/memory.current").write_text(f"{3 * MIB}\n")
    stats = reader.read()
    assert stats.memory_limit == 8 << 30 and stats.memory_bytes == 3 * MIB


def test_pid_selects_proc_entry(tmp_path: Path) -> None:
    root = copy(tmp_path, "v2-container")
    os.rename(root / "proc/self", root / "proc/4242")
    stats = PressureReader(root=str(root), pid=4242, clock=FakeClock()).read()
    assert stats.memory_limit == 512 * MIB
    assert stats.process_rss is None or stats.process_rss >= 0  # psutil: pid 4242 may not exist here


def test_live_host_reading() -> None:
    reader = PressureReader()
    stats = reader.read()
    assert stats.memory_bytes > 0 and stats.source
    assert stats.cpu_cores >= 0.0


def test_pressure_is_the_larger_ratio_ignoring_missing_limits() -> None:
    stats = ResourceStats(memory_bytes=70, memory_limit=100, cpu_cores=0.9, cpu_limit=1.0)
    assert memory_ratio(stats) == pytest.approx(0.7) and pressure(stats) == pytest.approx(0.9)
    stats.cpu_limit = None
    assert pressure(stats) == pytest.approx(0.7)
    stats.memory_limit = None
    assert pressure(stats) == 0.0
    assert pressure(ResourceStats(cpu_cores=3.0, cpu_limit=2.0)) == pytest.approx(1.5)


def test_a_child_started_after_a_reading_counts_at_the_next() -> None:
    """The kernel's child lists are walked at every reading: a new capture worker is not missed for
    TREE_RESCAN_S, as it was while the tree came from psutil's scan of every process."""
    reader = PressureReader()
    reader.read()
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in [p.pid for p in reader._tree()]
        reader.read()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.pid not in [p.pid for p in reader._tree()]
