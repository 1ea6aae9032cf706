"""descendants(): the kernel's child lists against real processes, and the fallback without them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kstap.control.proctree import descendants


@pytest.fixture
def family() -> Iterator[tuple[int, int]]:
    """A child that starts a grandchild: (child pid, grandchild pid); both ended afterwards, by PID."""
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "g = subprocess.Popen(['sleep', '30']); print(g.pid, flush=True); g.wait()"],
                             stdout=subprocess.PIPE, text=True)
    grandchild = 0
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        yield child.pid, grandchild
    finally:
        if grandchild:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
        child.kill()
        child.wait(timeout=10)


def test_children_and_grandchildren_parents_first(family: tuple[int, int]) -> None:
    child, grandchild = family
    found = descendants(os.getpid())
    assert found is not None
    assert child in found and grandchild in found
    assert found.index(child) < found.index(grandchild)
    assert set(found) == {p.pid for p in psutil.Process().children(recursive=True)}


def test_a_thread_s_children_count_too() -> None:
    """A child started from another thread is on that thread's list, not the main thread's."""
    box: list[subprocess.Popen[bytes]] = []
    t = threading.Thread(target=lambda: box.append(subprocess.Popen(["sleep", "30"])))
    t.start()
    t.join()
    try:
        found = descendants(os.getpid())
        assert found is not None and box[0].pid in found
    finally:
        box[0].kill()
        box[0].wait(timeout=10)


def test_an_ended_process_has_no_descendants() -> None:
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    deadline = time.monotonic() + 5
    while psutil.pid_exists(p.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert descendants(p.pid) == []


def test_without_the_kernel_s_lists_it_says_so(tmp_path: Path) -> None:
    (tmp_path / "77" / "task" / "77").mkdir(parents=True)  # a thread without a children file
    assert descendants(77, proc=str(tmp_path)) is None
    (tmp_path / "77" / "task" / "77" / "children").write_text("78 ")
    (tmp_path / "78" / "task" / "78").mkdir(parents=True)
    (tmp_path / "78" / "task" / "78" / "children").write_text("")
    assert descendants(77, proc=str(tmp_path)) == [78]
