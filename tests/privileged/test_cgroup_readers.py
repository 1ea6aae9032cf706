"""PressureReader against REAL cgroups: a child process in a v1 memory cgroup with a limit, one in a
v1 cpu cgroup with a quota, and in a v2 cgroup where this host's unified hierarchy allows it.

Every cgroup is created here as ``kstap-test-<pid>-<n>``; every process is started here and killed by
its PID; at the end (pass or fail) any process still inside is moved to the hierarchy's root and the
cgroups are removed, deepest first. No other cgroup is touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kstap.control.pressure import PressureReader

CGROUP = Path("/sys/fs/cgroup")
MIB = 1 << 20
_serial = itertools.count()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates cgroups)")

HOG = r"""
import sys
sys.stdin.readline()                       # wait until the test has moved us into the cgroup
block = b"x" * int(sys.argv[1])            # every page written, so every page is charged
print("ready", flush=True)
sys.stdin.readline()                       # hold the memory until stdin closes
"""

BUSY = r"""
import sys
sys.stdin.readline()
print("ready", flush=True)
while True:
    pass
"""


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _is_cgroup_fs(path: Path, fstype: str, controller: str | None) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == str(path) and fields[sep + 1] == fstype:
            return controller is None or controller in fields[sep + 3].split(",")
    return False


class Cgroups:
    """The cgroups and processes one test made; :meth:`close` undoes all of it."""

    def __init__(self) -> None:
        self.made: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def make(self, parent: Path, name: str | None = None, **files: str) -> Path:
        """A new cgroup under ``parent`` (a fresh unique name unless given); ``a__b=v`` writes file a.b."""
        path = parent / (name or f"kstap-test-{os.getpid()}-{next(_serial)}")
        path.mkdir()
        self.made.append(path)
        for name, value in files.items():
            (path / name.replace("__", ".")).write_text(value)
        return path

    def start(self, source: str, *args: str, into: list[Path]) -> subprocess.Popen[bytes]:
        """Start a child, move it into every cgroup of ``into``, then let it run; wait for 'ready'."""
        proc = subprocess.Popen([sys.executable, "-c", source, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        for cg in into:
            (cg / "cgroup.procs").write_text(str(proc.pid))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        return proc

    @staticmethod
    def ready(proc: subprocess.Popen[bytes]) -> bool:
        assert proc.stdout is not None
        return proc.stdout.readline().strip() == b"ready"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        ours = {str(p.pid) for p in self.procs}
        for path in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            top = next(p for p in path.parents if p.parent == CGROUP or p == CGROUP)
            deadline = time.monotonic() + 10
            while path.exists():
                for pid in (path / "cgroup.procs").read_text().split():
                    if pid in ours:  # move our own leftovers out to the hierarchy's root
                        with contextlib.suppress(OSError):
                            (top / "cgroup.procs").write_text(pid)
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    made = Cgroups()
    try:
        yield made
    finally:
        made.close()


def need_v1(controller: str) -> Path:
    path = CGROUP / controller
    if not _is_cgroup_fs(path, "cgroup", controller):
        pytest.skip(f"no cgroup v1 {controller} hierarchy at {path}")
    return path


# -- v1 memory ----------------------------------------------------------------------------------------
def test_v1_memory_working_set_and_the_tightest_limit_up_the_tree(cgroups: Cgroups) -> None:
    memory = need_v1("memory")
    parent = cgroups.make(memory, memory__limit_in_bytes=str(256 * MIB))
    leaf = cgroups.make(parent)  # no limit of its own: the parent's 256 MiB is the tightest
    hog = cgroups.start(HOG, str(100 * MIB), into=[leaf])
    assert cgroups.ready(hog)

    stats = PressureReader(pid=hog.pid).read()
    assert stats.memory_limit == 256 * MIB
    assert 100 * MIB <= stats.memory_bytes <= 140 * MIB, stats
    assert stats.oom_events == 0
    assert f"memory: cgroup v1 /{parent.name} (limit of /{parent.name})" in stats.source, stats.source


def test_v1_memory_oom_kill_is_counted(cgroups: Cgroups) -> None:
    memory = need_v1("memory")
    cg = cgroups.make(memory, memory__limit_in_bytes=str(64 * MIB))
    sleeper = cgroups.start(HOG, "0", into=[cg])  # a small process that stays, to read the cgroup by
    assert cgroups.ready(sleeper)
    reader = PressureReader(pid=sleeper.pid)
    assert reader.read().oom_events == 0
    hog = cgroups.start(HOG, str(128 * MIB), into=[cg])  # twice the limit, no swap here: OOM-killed
    assert hog.wait(timeout=30) == -signal.SIGKILL
    stats = reader.read()
    assert stats.oom_events >= 1 and stats.memory_limit_hits > 0
    assert sleeper.poll() is None  # the kernel killed the big one


# -- v1 cpu ------------------------------------------------------------------------------------------------
def test_v1_cpu_quota_use_and_throttling(cgroups: Cgroups) -> None:
    cpu = need_v1("cpu")
    quota = cgroups.make(cpu, cpu__cfs_period_us="100000", cpu__cfs_quota_us="20000")  # 0.2 core
    into = [quota]
    cpuacct = CGROUP / "cpuacct"
    if _is_cgroup_fs(cpuacct, "cgroup", "cpuacct") and not _is_cgroup_fs(cpu, "cgroup", "cpuacct"):
        into.append(cgroups.make(cpuacct, name=quota.name))  # its own hierarchy here: the same path there
    busy = cgroups.start(BUSY, into=into)
    assert cgroups.ready(busy)

    reader = PressureReader(pid=busy.pid)
    first = reader.read()
    time.sleep(1.5)
    stats = reader.read()
    assert stats.cpu_limit == pytest.approx(0.2)
    assert 0.12 <= stats.cpu_cores <= 0.28, stats  # a busy loop held to its quota
    assert stats.throttled_periods > first.throttled_periods and stats.throttled_seconds > 0
    assert f"cpu: cgroup v1 /{quota.name} (quota of /{quota.name})" in stats.source, stats.source


# -- v2 ------------------------------------------------------------------------------------------------------
def v2_root() -> Path:
    for path in (CGROUP / "unified", CGROUP):
        if _is_cgroup_fs(path, "cgroup2", None):
            return path
    pytest.skip("no cgroup v2 hierarchy mounted")


def test_v2_memory_limit(cgroups: Cgroups) -> None:
    root = v2_root()
    if "memory" not in (root / "cgroup.subtree_control").read_text().split():
        pytest.skip(f"the v2 hierarchy at {root} has no memory controller enabled for children "
                    f"(controllers: {(root / 'cgroup.controllers').read_text().strip() or 'none'}; "
                    "memory is bound to the v1 hierarchy on this host)")
    cg = cgroups.make(root, memory__max=str(256 * MIB))
    hog = cgroups.start(HOG, str(100 * MIB), into=[cg])
    assert cgroups.ready(hog)
    stats = PressureReader(pid=hog.pid).read()
    assert stats.memory_limit == 256 * MIB and 100 * MIB <= stats.memory_bytes <= 140 * MIB
    assert f"memory: cgroup v2 /{cg.name}" in stats.source


def test_v2_cpu_usage_and_psi_of_the_own_cgroup(cgroups: Cgroups) -> None:
    root = v2_root()
    cg = cgroups.make(root)
    if not (cg / "cpu.stat").exists():
        pytest.skip(f"{root} gives no cpu.stat to child cgroups")
    busy = cgroups.start(BUSY, into=[cg])
    assert cgroups.ready(busy)
    reader = PressureReader(pid=busy.pid)
    reader.read()
    before = _cpu_seconds(busy.pid), time.monotonic()
    time.sleep(1.0)
    stats = reader.read()
    after = _cpu_seconds(busy.pid), time.monotonic()
    # The busy loop gets what the scheduler gives it (less than a core on a loaded machine), so the reader
    # is judged against the kernel's own count of the process's CPU over the same second, not a fixed floor.
    used = (after[0] - before[0]) / (after[1] - before[1])
    assert used > 0.05, f"the busy loop ran {used:.2f} cores: the machine is too loaded to judge"
    assert stats.cpu_cores == pytest.approx(used, rel=0.3), (stats, used)
    assert f"cpu: cgroup v2 /{cg.name}" in stats.source, stats.source
    if (cg / "memory.pressure").exists():
        assert "psi: cgroup" in stats.source and stats.psi_memory_some is not None
