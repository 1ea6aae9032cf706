"""kstap.file_writes: big buffers reach a regular file in 4 KiB writes on page boundaries, pipes and
devices whole; the C loop (kstap/_slices.c) and the Python one behave alike, faults included."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kstap import file_writes
from kstap.file_writes import (
    FIRST_SLICE,
    FIRST_TRIAL_BYTES,
    SLICES,
    TRIAL_BYTES,
    TRIAL_PIECE,
    WRITE_SLICE,
    SliceChooser,
    slice_for,
    write_all,
)
from kstap.model import Interface
from kstap.sinks.files import PcapngFiles

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs on the C loop and on the Python one."""
    if request.param == "python":
        monkeypatch.setattr(file_writes, "write_slices", None)
    elif file_writes.write_slices is None:
        pytest.skip("the C helper is not built (make venv builds it)")
    return str(request.param)


def _sizes_of_writes(data: bytes, step: int | None, offset: int = 0) -> list[int]:
    """The size of each write() that write_all makes: a SOCK_SEQPACKET socket keeps every write
    one message, whichever loop made it."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        write_all(a.fileno(), data, step, offset)
        a.shutdown(socket.SHUT_WR)
        sizes = []
        while msg := b.recv(1 << 20):
            sizes.append(len(msg))
    return sizes


def test_slices_end_on_multiples_of_the_step(impl: str) -> None:
    data = os.urandom(3 * WRITE_SLICE + 123)
    assert _sizes_of_writes(data, WRITE_SLICE) == [WRITE_SLICE] * 3 + [123]
    assert _sizes_of_writes(data, WRITE_SLICE, offset=100) == [WRITE_SLICE - 100, WRITE_SLICE, WRITE_SLICE, 223]
    assert _sizes_of_writes(data, WRITE_SLICE, offset=WRITE_SLICE * 7) == [WRITE_SLICE] * 3 + [123]
    assert _sizes_of_writes(data, None, offset=100) == [len(data)]  # no step: one write, wherever it starts
    assert _sizes_of_writes(b"", WRITE_SLICE) == []


def test_a_regular_file_gets_every_byte(tmp_path: Path, impl: str) -> None:
    data = os.urandom(5 * WRITE_SLICE + 7)
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 100)
        f.flush()
        write_all(f.fileno(), data, slice_for(f.fileno()), offset=100)
        write_all(f.fileno(), data[:10], slice_for(f.fileno()), offset=100 + len(data))
    assert (tmp_path / "f").read_bytes() == b"x" * 100 + data + data[:10]


def test_a_full_device_raises_enospc(impl: str) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            write_all(fd, b"x" * 10_000, slice_for(fd))
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


CHILD = """
import os, resource, signal, sys
from kstap import file_writes
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
print("c" if file_writes.write_slices else "python")
try:
    file_writes.write_all(fd, b"y" * 12_000, file_writes.slice_for(fd), 0)
except OSError as exc:
    print(exc.errno)
"""


def test_a_short_write_is_carried_on_up_to_the_error(tmp_path: Path, impl: str) -> None:
    """RLIMIT_FSIZE (a real kernel limit): the write that crosses it is cut short, the next fails with
    EFBIG; everything up to the limit is written."""
    env = dict(os.environ, PYTHONPATH=str(ROOT)) | ({"KSTAP_PURE_PYTHON": "1"} if impl == "python" else {})
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "f")], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == [impl, str(errno.EFBIG)]
    assert (tmp_path / "f").read_bytes() == b"y" * 5000


class _Interrupted(Exception):
    pass


def test_a_signal_handler_that_raises_ends_a_blocked_write(impl: str) -> None:
    """PEP 475: a write blocked on a full pipe runs the signal handlers, and one that raises ends it.
    (Nobody reads the pipe; its read end is closed after 5 s, so a loop that ignores signals fails
    with a broken pipe instead of hanging.)"""
    r, w = os.pipe()
    read_end = [r]
    lock = threading.Lock()

    def close_read_end() -> None:
        with lock:
            if read_end:
                os.close(read_end.pop())

    def handler(signum: int, frame: object) -> None:
        raise _Interrupted()

    closer = threading.Timer(5.0, close_read_end)
    old = signal.signal(signal.SIGALRM, handler)
    try:
        closer.start()
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        with pytest.raises(_Interrupted):
            write_all(w, b"z" * (4 << 20), slice_for(w))
        assert time.monotonic() - started < 4
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        closer.cancel()
        closer.join()
        close_read_end()
        os.close(w)


def test_pipes_and_devices_are_written_whole() -> None:
    r, w = os.pipe()
    try:
        assert slice_for(w) is None
    finally:
        os.close(r)
        os.close(w)
    with open(os.devnull, "wb") as null:
        assert slice_for(null.fileno()) is None
    assert slice_for(-1) is None  # a closed descriptor: no slicing, the write itself will say what is wrong


# -- what the capture file gets (the Python loop, whose writes can be seen one by one) ---------------

class _Recording:
    """``os`` as kstap.file_writes sees it, noting the size of every write (and taking at most ``cap``)."""

    def __init__(self, cap: int | None = None) -> None:
        self.sizes: list[int] = []
        self.cap = cap

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def write(self, fd: int, data: memoryview) -> int:
        self.sizes.append(len(data))
        return os.write(fd, data if self.cap is None else data[: self.cap])


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recording]:
    rec = _Recording()
    monkeypatch.setattr(file_writes, "os", rec)
    monkeypatch.setattr(file_writes, "write_slices", None)
    yield rec


def test_a_short_write_is_carried_on_from_where_it_stopped(tmp_path: Path, recording: _Recording) -> None:
    recording.cap = 1000
    data = os.urandom(2500)
    with open(tmp_path / "f", "wb") as f:
        write_all(f.fileno(), data, None)
    assert (tmp_path / "f").read_bytes() == data
    assert recording.sizes == [2500, 1500, 500]


def test_no_append_to_the_capture_file_crosses_a_slice_boundary(tmp_path: Path, recording: _Recording,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_writes, "FIRST_TRIAL_BYTES", 0)  # a trial from the first write on
    sink = PcapngFiles(str(tmp_path / "c.pcapng"), [Interface("veth0")], counters=list)
    for n in (7, 30, 200, 900):  # batches of odd sizes after a header of its own size
        big = os.urandom(131)
        sink.write([(1_700_000_000_000_000_000 + i, len(big), len(big), big, 0, 0) for i in range(n)])
    sink.close()
    start, small = 0, 0
    for size in recording.sizes:
        # a 4 KiB slice stays in its page, a 64 KiB one in its 64 KiB: both in one aligned 64 KiB
        assert size <= SLICES[-1] and start // SLICES[-1] == (start + size - 1) // SLICES[-1], (start, size)
        small += size <= WRITE_SLICE and start // WRITE_SLICE == (start + size - 1) // WRITE_SLICE
        start += size
    assert start == (tmp_path / "c.pcapng").stat().st_size
    assert small and len(recording.sizes) > start // SLICES[-1]  # the trial sliced both ways


class _CostClock:
    """Thread CPU ns as the chooser reads it: each write of ``step`` bytes costs what ``per_byte`` says."""

    def __init__(self, per_byte: dict[int, float]) -> None:
        self.per_byte = per_byte
        self.now = 0
        self.pending = 0

    def __call__(self) -> int:
        self.now += self.pending
        self.pending = 0
        return self.now


WARM_UP = 2 << 20
"""FIRST_TRIAL_BYTES in the chooser tests (the real one is 32 MiB)."""
CALLS_PER_TRIAL = TRIAL_BYTES // TRIAL_PIECE
"""Calls of a megabyte a trial takes: each gives each slice one piece of TRIAL_PIECE."""


def _chooser_writes(monkeypatch: pytest.MonkeyPatch, clock: _CostClock, tmp_path: Path, total: int,
                    chunk: int = 1 << 20, steps: list[tuple[int, int, int]] | None = None) -> SliceChooser:
    """``total`` bytes in calls of ``chunk``; ``steps`` gets (slice, file offset, bytes) of each write_all."""
    monkeypatch.setattr(file_writes, "FIRST_TRIAL_BYTES", WARM_UP)
    chooser = SliceChooser(clock=clock)
    real = file_writes.write_all

    def costed(fd: int, data: bytes | memoryview, step: int | None = WRITE_SLICE, offset: int = 0) -> None:
        assert step in SLICES
        real(fd, data, step, offset)
        clock.pending = int(len(data) * clock.per_byte[step])
        if steps is not None:
            steps.append((step, offset, len(data)))

    monkeypatch.setattr(file_writes, "write_all", costed)
    data = os.urandom(chunk)
    with open(tmp_path / "f", "wb") as f:
        for i in range(total // chunk):
            chooser.write(f.fileno(), data, i * chunk)
    assert (tmp_path / "f").read_bytes() == data * (total // chunk)
    return chooser


@pytest.mark.parametrize("cheaper", SLICES)
def test_the_chooser_keeps_the_slice_that_costs_less(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     cheaper: int) -> None:
    clock = _CostClock({s: 1.0 if s == cheaper else 1.3 for s in SLICES})
    chooser = _chooser_writes(monkeypatch, clock, tmp_path, WARM_UP + (CALLS_PER_TRIAL << 20) + (4 << 20))
    assert (chooser.chosen, chooser.trials) == (cheaper, 1)


def test_a_file_starts_with_the_large_slice_and_tries_the_other_only_after_the_first_megabytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert SLICES[-1] == FIRST_SLICE and FIRST_TRIAL_BYTES >= 32 << 20
    steps: list[tuple[int, int, int]] = []
    clock = _CostClock({WRITE_SLICE: 1.0, SLICES[-1]: 2.0})
    _chooser_writes(monkeypatch, clock, tmp_path, WARM_UP, steps=steps)
    assert {s for s, _, _ in steps} == {FIRST_SLICE}
    chooser = _chooser_writes(monkeypatch, clock, tmp_path, WARM_UP + (1 << 20), steps=steps)
    assert chooser.trying and {s for s, o, _ in steps if o >= WARM_UP} == set(SLICES)


def test_a_trial_writes_a_piece_of_each_call_with_each_slice_first_in_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[tuple[int, int, int]] = []
    clock = _CostClock({WRITE_SLICE: 1.0, SLICES[-1]: 1.0})
    chooser = _chooser_writes(monkeypatch, clock, tmp_path, WARM_UP + (2 << 20), steps=steps)
    assert chooser.trying
    for call in range(2):
        base = WARM_UP + (call << 20)
        writes = [(s, o, n) for s, o, n in steps if base <= o < base + (1 << 20)]
        assert writes == [(SLICES[call], base, TRIAL_PIECE), (SLICES[1 - call], base + TRIAL_PIECE, TRIAL_PIECE),
                          (chooser.chosen, base + 2 * TRIAL_PIECE, (1 << 20) - 2 * TRIAL_PIECE)]


def test_the_chooser_tries_again_and_follows_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_writes, "RETRIAL_BYTES", 4 << 20)
    clock = _CostClock({WRITE_SLICE: 1.0, SLICES[-1]: 2.0})
    chooser = _chooser_writes(monkeypatch, clock, tmp_path, WARM_UP + (CALLS_PER_TRIAL << 20))
    assert (chooser.chosen, chooser.trials, chooser.trying) == (WRITE_SLICE, 1, False)
    clock.per_byte = {WRITE_SLICE: 2.0, SLICES[-1]: 1.0}  # the machine's memory changed
    data = os.urandom(1 << 20)
    with open(tmp_path / "f", "ab") as f:
        base = f.tell()
        for i in range(4 + CALLS_PER_TRIAL):  # 4 MiB with the old choice, then a new trial
            chooser.write(f.fileno(), data, base + (i << 20))
    assert (chooser.chosen, chooser.trials) == (SLICES[-1], 2)


def test_stdout_as_a_pipe_gets_each_block_in_one_write(recording: _Recording) -> None:
    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)
    try:
        sink = PcapngFiles("-", [Interface("veth0")], counters=list)
        big = os.urandom(200)
        sink.write([(1_700_000_000_000_000_000 + i, len(big), len(big), big, 0, 0) for i in range(100)])
        assert max(recording.sizes) > WRITE_SLICE  # the packets' blocks went as one buffer
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(w)
        os.close(r)
