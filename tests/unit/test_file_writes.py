"""kstap.file_writes: big buffers reach a regular file in 4 KiB writes, pipes and devices whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kstap import file_writes
from kstap.file_writes import WRITE_SLICE, slice_for, write_all
from kstap.model import Interface
from kstap.sinks.files import PcapngFiles


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
    yield rec


def test_a_regular_file_is_written_in_slices(tmp_path: Path, recording: _Recording) -> None:
    data = os.urandom(3 * WRITE_SLICE + 123)
    with open(tmp_path / "f", "wb") as f:
        write_all(f.fileno(), data, slice_for(f.fileno()))
    assert (tmp_path / "f").read_bytes() == data
    assert recording.sizes == [WRITE_SLICE] * 3 + [123]


def test_a_short_write_is_carried_on_from_where_it_stopped(tmp_path: Path, recording: _Recording) -> None:
    recording.cap = 1000
    data = os.urandom(2500)
    with open(tmp_path / "f", "wb") as f:
        write_all(f.fileno(), data, None)
    assert (tmp_path / "f").read_bytes() == data
    assert recording.sizes == [2500, 1500, 500]


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


def test_the_capture_file_gets_no_write_above_a_slice(tmp_path: Path, recording: _Recording) -> None:
    sink = PcapngFiles(str(tmp_path / "c.pcapng"), [Interface("veth0")], counters=list)
    big = os.urandom(200)
    sink.write([(1_700_000_000_000_000_000 + i, len(big), len(big), big, 0, 0) for i in range(200)])
    sink.close()
    assert recording.sizes and max(recording.sizes) <= WRITE_SLICE
    assert sum(recording.sizes) == (tmp_path / "c.pcapng").stat().st_size > 200 * 200


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
