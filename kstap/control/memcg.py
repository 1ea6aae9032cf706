"""Run a command inside a fresh memory cgroup with a limit, and read back what happened to it.

Used by ``kstap tune``: each trial runs a capture worker under the memory budget being tuned for,
and the cgroup's own counters say whether the kernel OOM-killed it. cgroup v1
(``/sys/fs/cgroup/memory``) and v2 (a unified hierarchy with the memory controller enabled) are
both supported; the cgroup is removed afterwards whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kstap.errors import EnvironmentProblem

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class TrialOutcome:
    """What one run under the limit did."""

    returncode: int
    oom_kills: int
    peak_bytes: int
    seconds: float
    stderr: str

    @property
    def oom(self) -> bool:
        return self.oom_kills > 0 or self.returncode == -9


def _v2_usable(root: Path) -> bool:
    controllers = root / "cgroup.controllers"
    return controllers.exists() and "memory" in controllers.read_text().split()


def _flavour(v1_root: Path, v2_root: Path) -> str:
    if (v1_root / "memory.limit_in_bytes").exists():
        return "v1"
    if _v2_usable(v2_root):
        return "v2"
    raise EnvironmentProblem("no writable memory cgroup controller (neither v1 nor v2)",
                             hint="kstap tune needs root on a host with cgroup memory accounting")


@contextlib.contextmanager
def limited(limit: int, *, name: str | None = None, v1_root: Path = V1_ROOT,
            v2_root: Path = V2_ROOT) -> Iterator[tuple[Path, str]]:
    """A new memory cgroup limited to ``limit`` bytes (no swap); yields (path, 'v1'|'v2')."""
    flavour = _flavour(v1_root, v2_root)
    root = v1_root if flavour == "v1" else v2_root
    path = root / (name or f"kstap-tune-{os.getpid()}-{time.monotonic_ns() % 1_000_000}")
    try:
        path.mkdir()
    except PermissionError:
        raise EnvironmentProblem("cannot create a memory cgroup: permission denied",
                                 hint="kstap tune must run as root") from None
    try:
        if flavour == "v1":
            (path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        yield path, flavour
    finally:
        for pid in (path / "cgroup.procs").read_text().split() if path.exists() else []:
            with contextlib.suppress(OSError):
                os.kill(int(pid), 9)
        for _ in range(100):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def oom_kills(path: Path, flavour: str) -> int:
    if flavour == "v1":
        m = re.search(r"oom_kill (\d+)", (path / "memory.oom_control").read_text())
    else:
        m = re.search(r"oom_kill (\d+)", (path / "memory.events").read_text())
    return int(m.group(1)) if m else 0


def peak(path: Path, flavour: str) -> int:
    name = "memory.max_usage_in_bytes" if flavour == "v1" else "memory.peak"
    try:
        return int((path / name).read_text())
    except (OSError, ValueError):
        return 0


def run_limited(argv: Sequence[str], limit: int, *, timeout: float) -> TrialOutcome:
    """Run ``argv`` inside a new cgroup limited to ``limit`` bytes; the process starts inside it."""
    with limited(limit) as (path, flavour):
        procs = path / "cgroup.procs"
        start = time.monotonic()
        proc = subprocess.Popen(["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
        return TrialOutcome(proc.returncode, oom_kills(path, flavour), peak(path, flavour),
                            time.monotonic() - start, err or "")
