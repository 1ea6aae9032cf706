"""Finding the process's cgroups and reading them, on recorded trees (tests/unit/control/trees)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kstap.control import cgroups
from kstap.control.cgroups import (
    CgroupEntry,
    locate,
    parse_cpu_max,
    parse_limit,
    parse_mountinfo,
    parse_proc_cgroup,
    read_cpu,
    read_memory,
)

TREES = Path(__file__).parent / "trees"
MIB = 1 << 20
GIB = 1 << 30
HOST_RAM = 16384000 * 1024


def tree(name: str) -> str:
    return str(TREES / name)


# -- parsing ------------------------------------------------------------------------------------------
def test_proc_cgroup_lines() -> None:
    entries = parse_proc_cgroup("12:pids:/a\n4:cpu,cpuacct:/a/b\n1:name=systemd:/\n0::/x:y\nbad line\n")
    assert entries == [CgroupEntry(12, ("pids",), "/a"), CgroupEntry(4, ("cpu", "cpuacct"), "/a/b"),
                       CgroupEntry(1, ("name=systemd",), "/"), CgroupEntry(0, (), "/x:y")]


def test_mountinfo_fields_and_escapes() -> None:
    text = ("29 22 0:26 / /sys/fs/cgroup rw shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate\n"
            "35 31 0:32 /docker/a /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n"
            "junk\n")
    mounts = parse_mountinfo(text)
    assert [(m.mount_point, m.root, m.fstype) for m in mounts] == [
        ("/sys/fs/cgroup", "/", "cgroup2"), ("/sys/fs/cgroup/my mem", "/docker/a", "cgroup")]
    assert "memory" in mounts[1].super_options


@pytest.mark.parametrize(("text", "expected"), [
    ("max\n", None), ("", None), ("-1", None), ("junk", None), (None, None),
    ("9223372036854771712\n", None),  # v1 "unlimited"
    (str(1 << 62), None), (str((1 << 62) - 1), None),  # above host RAM too
    (str(17 * GIB), None),  # above the 16 GiB host
    (str(200 * MIB), 200 * MIB),
])
def test_limits(text: str | None, expected: int | None) -> None:
    assert parse_limit(text, HOST_RAM) == expected


def test_limit_without_host_ram_only_drops_huge_values() -> None:
    assert parse_limit(str(17 * GIB)) == 17 * GIB
    assert parse_limit(str(1 << 62)) is None


@pytest.mark.parametrize(("text", "cores"), [
    ("max 100000", None), ("150000 100000", 1.5), ("50000 100000\n", 0.5), ("20000", 0.2), ("", None),
    ("x 1", None), ("0 100000", None),
])
def test_cpu_max(text: str, cores: float | None) -> None:
    assert parse_cpu_max(text) == cores


def test_host_memory() -> None:
    assert cgroups.host_memory(tree("v2-nested")) == HOST_RAM
    assert cgroups.host_memory(tree("missing")) is None


# -- locating -------------------------------------------------------------------------------------------
def test_locate_v2_nested() -> None:
    found = locate(tree("v2-nested"))
    assert found.v1 == {}
    assert found.v2 is not None
    assert found.v2.path.endswith("/cri-containerd-abc.scope")
    assert found.v2.directory == os.path.join(tree("v2-nested"), "sys/fs/cgroup", found.v2.path.lstrip("/"))
    levels = found.v2.levels()
    assert [h for h, _ in levels][-2:] == ["/kubepods.slice", "/"]
    assert len(levels) == 5 and levels[-1][1] == os.path.join(tree("v2-nested"), "sys/fs/cgroup")


def test_locate_v1_docker_mount_root_is_the_container() -> None:
    found = locate(tree("v1-docker"))
    assert found.v2 is None  # a 0:: line but no cgroup2 mount
    assert set(found.v1) == {"pids", "memory", "cpu", "cpuacct"}
    memory = found.v1["memory"]
    assert memory.directory == os.path.join(tree("v1-docker"), "sys/fs/cgroup/memory")
    assert memory.levels() == [("/docker/0123456789ab", memory.directory)]  # nothing above is visible
    assert found.v1["cpu"].directory == found.v1["cpuacct"].directory


def test_locate_v1_separate_cpu_and_cpuacct() -> None:
    found = locate(tree("v1-nested"))
    assert found.v2 is not None and found.v2.is_hierarchy_root
    assert found.v1["cpu"].directory.endswith("cgroup/cpu/kstap/job/worker")
    assert found.v1["cpuacct"].directory.endswith("cgroup/cpuacct/kstap/job/worker")
    assert [h for h, _ in found.v1["memory"].levels()] == ["/kstap/job/worker", "/kstap/job", "/kstap", "/"]


def test_locate_with_nothing_there() -> None:
    found = locate(tree("missing"))
    assert found.v2 is None and found.v1 == {}
    empty = locate("/nonexistent-root-for-kstap-tests")
    assert empty.v2 is None and empty.v1 == {}


# -- memory ---------------------------------------------------------------------------------------------
def test_v2_tightest_limit_wins_and_usage_is_read_where_it_is() -> None:
    figures = read_memory(locate(tree("v2-nested")), HOST_RAM)
    assert figures is not None and figures.version == 2
    assert figures.limit == 200 * MIB  # the pod's, not the container's 300 MiB nor kubepods' 8 GiB
    assert figures.limit_cgroup is not None and figures.limit_cgroup.endswith("pod1.slice")
    assert figures.cgroup == figures.limit_cgroup
    assert figures.usage == 150 * MIB
    assert figures.working_set == 150 * MIB - 30 * MIB  # current - inactive_file
    assert figures.oom_events == 2  # the pod's oom 1 + oom_kill 1 (it counts the container's too)
    assert figures.limit_hits == 12


def test_v2_container_namespace_root() -> None:
    figures = read_memory(locate(tree("v2-container")), HOST_RAM)
    assert figures is not None
    assert (figures.limit, figures.usage, figures.working_set) == (512 * MIB, 300 * MIB, 256 * MIB)
    assert figures.oom_events == 0


def test_v1_docker() -> None:
    figures = read_memory(locate(tree("v1-docker")), HOST_RAM)
    assert figures is not None and figures.version == 1
    assert figures.limit == 256 * MIB
    assert figures.working_set == 150 * MIB  # usage 200 - total_inactive_file 50
    assert figures.oom_events == 2 and figures.limit_hits == 7


def test_v1_nested_tightest_limit_wins() -> None:
    figures = read_memory(locate(tree("v1-nested")), HOST_RAM)
    assert figures is not None
    assert figures.limit == 100 * MIB and figures.limit_cgroup == "/kstap/job"  # not /kstap's 512 MiB
    assert figures.cgroup == "/kstap/job"
    assert figures.working_set == 70 * MIB  # /kstap/job usage 80 - total_inactive_file 10
    assert figures.oom_events == 3  # the largest from the worker (1) up to the limit's owner (3)
    assert figures.limit_hits == 5


def test_v1_hierarchical_limit_from_an_invisible_ancestor(tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(tree("v1-docker"), root)
    stat = root / "sys/fs/cgroup/memory/memory.stat"
    stat.write_text(stat.read_text().replace(f"hierarchical_memory_limit {256 * MIB}",
                                             f"hierarchical_memory_limit {128 * MIB}"))
    figures = read_memory(locate(str(root)), HOST_RAM)
    assert figures is not None and figures.limit == 128 * MIB
    assert figures.limit_cgroup is not None and "hierarchical" in figures.limit_cgroup
    assert figures.working_set == 150 * MIB


def test_no_limit_max_and_above_host_ram() -> None:
    figures = read_memory(locate(tree("no-limit")), HOST_RAM)
    assert figures is not None
    assert figures.limit is None and figures.limit_cgroup is None
    assert figures.working_set == 600 * MIB


def test_v1_unlimited_everywhere(tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(tree("v1-nested"), root)
    for rel in ("kstap", "kstap/job"):
        (root / "sys/fs/cgroup/memory" / rel / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    for stat in (root / "sys/fs/cgroup/memory/kstap/job").glob("**/memory.stat"):
        stat.write_text(stat.read_text().replace(f"hierarchical_memory_limit {100 * MIB}",
                                                 "hierarchical_memory_limit 9223372036854771712"))
    figures = read_memory(locate(str(root)), HOST_RAM)
    assert figures is not None and figures.limit is None
    assert figures.cgroup == "/kstap/job/worker" and figures.working_set == 56 * MIB


def test_missing_files() -> None:
    assert read_memory(locate(tree("missing"))) is None
    assert read_cpu(locate(tree("missing"))) is None


# -- CPU ------------------------------------------------------------------------------------------------
def test_v2_cpu_tightest_quota_and_its_counters() -> None:
    figures = read_cpu(locate(tree("v2-nested")))
    assert figures is not None and figures.version == 2
    assert figures.limit == 1.5 and figures.limit_cgroup is not None and figures.limit_cgroup.endswith("pod1.slice")
    assert figures.usage_seconds == 40.0
    assert figures.nr_throttled == 42 and figures.throttled_seconds == 2.5


def test_v2_container_cpu() -> None:
    figures = read_cpu(locate(tree("v2-container")))
    assert figures is not None
    assert (figures.limit, figures.usage_seconds) == (0.5, 5.0)
    assert (figures.nr_throttled, figures.throttled_seconds) == (60, 3.0)


def test_v1_cpu_cpuacct_together() -> None:
    figures = read_cpu(locate(tree("v1-docker")))
    assert figures is not None and figures.version == 1
    assert figures.limit == 2.0 and figures.usage_seconds == 123.0
    assert figures.nr_throttled == 12 and figures.throttled_seconds == pytest.approx(3.4)


def test_v1_cpu_quota_of_an_ancestor_with_a_separate_cpuacct() -> None:
    figures = read_cpu(locate(tree("v1-nested")))
    assert figures is not None
    assert figures.limit == 0.5 and figures.limit_cgroup == "/kstap"
    assert figures.usage_seconds == 8.0  # cpuacct.usage of /kstap in the cpuacct hierarchy
    assert figures.nr_throttled == 30 and figures.throttled_seconds == 1.5


def test_no_quota() -> None:
    figures = read_cpu(locate(tree("no-limit")))
    assert figures is not None and figures.limit is None and figures.usage_seconds == 1.0


def test_psi_file_only_for_an_own_v2_cgroup() -> None:
    assert cgroups.psi_file(locate(tree("v2-nested")), "memory") is not None
    assert cgroups.psi_file(locate(tree("v1-nested")), "memory") is None  # v2 root: use /proc/pressure
    assert cgroups.psi_file(locate(tree("no-limit")), "memory") is None  # no such file


def test_this_host_is_read_for_this_process() -> None:
    """Whatever this host's layout: the cgroups found are the ones /proc/self/cgroup names, and what
    is read from them is sane (the tree fixtures above pin the layouts one by one)."""
    found = locate()
    entries = cgroups.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    own = {c: e.path for e in entries for c in e.controllers if e.hierarchy}
    v2_path = next((e.path for e in entries if e.hierarchy == 0), None)
    assert found.v2 is not None or found.v1, entries
    assert {c: cg.path for c, cg in found.v1.items()} == {c: own[c] for c in found.v1}
    if found.v2 is not None:
        assert found.v2.path == v2_path
    memory = read_memory(found, cgroups.host_memory("/"))
    if memory is not None:  # this process's cgroup (or the limit's owner above it) holds this process
        assert 0 < memory.working_set <= memory.usage, memory
        assert memory.limit is None or memory.limit >= memory.working_set
        mine = own.get("memory") if memory.version == 1 else v2_path
        assert mine is not None and (mine + "/").startswith(memory.cgroup.rstrip("/") + "/"), (memory, mine)
    cpu = read_cpu(found)
    assert cpu is None or cpu.usage_seconds is None or cpu.usage_seconds > 0, cpu


def test_psi_file_of_a_namespaced_container_root() -> None:
    path = cgroups.psi_file(locate(tree("v2-container")), "memory")
    assert path is not None and path.endswith("sys/fs/cgroup/memory.pressure")


def test_v1_cpuacct_root_is_never_read_as_the_process_usage(tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(tree("v1-nested"), root)
    (root / "proc/self/cgroup").write_text("4:memory:/kstap/job/worker\n2:cpuacct:/\n1:cpu:/kstap/job/worker\n")
    figures = read_cpu(locate(str(root)))
    assert figures is not None and figures.limit == 0.5
    assert figures.usage_seconds is None  # /kstap is not in cpuacct and the cpuacct root is the host's
