"""Process helpers for the privileged tests (and the benchmarks that run the same set-ups): a
process's children, whether a PID still runs, a tmpfs mount, a CPU-quota cgroup."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (``/proc/PID/task/TID/children``)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


UDP_ECHO = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 else 9999))
s.settimeout(0.5)
print("READY", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    s.sendto(data, peer)
"""
"""``python -c UDP_ECHO ADDRESS LIFETIME [PORT]``: echo every UDP datagram (port 9999 by default)."""


@contextlib.contextmanager
def tmpfs_mount(options: str, prefix: str = "kstap-tmpfs-") -> Iterator[Path]:
    """A tmpfs mounted with ``options`` (e.g. ``size=64k``, ``ro``) on a new temporary folder; unmounted
    and removed when the block ends, also on failure. Skips the test where tmpfs cannot be mounted."""
    mountpoint = Path(tempfile.mkdtemp(prefix=prefix))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                       capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30, check=False)
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False)
        mountpoint.rmdir()


CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


@contextlib.contextmanager
def cpu_cgroup(quota_us: int, period_us: int = 100_000, *, prefix: str = "kstap-test-") -> Iterator[Path]:
    """A new cgroup v1 ``cpu`` cgroup with a CFS quota of ``quota_us`` per ``period_us`` (0.1 core:
    10,000 per 100,000), named ``prefix`` + PID. When the block ends, also on failure, the processes
    still in it go back to the hierarchy's root and the cgroup is removed."""
    path = CPU_CGROUP_ROOT / f"{prefix}{os.getpid()}-{time.monotonic_ns() % 100000}"
    path.mkdir()
    try:
        (path / "cpu.cfs_period_us").write_text(str(period_us))
        (path / "cpu.cfs_quota_us").write_text(str(quota_us))
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CPU_CGROUP_ROOT / "cgroup.procs").write_text(pid)
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
