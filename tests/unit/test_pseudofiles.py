"""PseudoFiles: /proc and /sys files stay open and are read again from offset 0; others never are."""

from __future__ import annotations

import os
from pathlib import Path

from kstap.pseudofiles import MAX_HELD, PseudoFiles, read_by_path, read_from_start


def test_a_held_proc_file_is_read_anew_each_time() -> None:
    files = PseudoFiles(hold=True)
    first = files.text("/proc/self/stat")
    assert first is not None and files.held == 1
    os.urandom(1 << 20)  # some work, so the process's counters move
    sum(range(200_000))
    second = files.text("/proc/self/stat")
    assert second is not None and files.held == 1  # the same descriptor, read again
    assert first.split()[0] == second.split()[0] == str(os.getpid())
    files.close()
    assert files.held == 0


def test_regular_files_are_opened_by_path_every_time(tmp_path: Path) -> None:
    """A recorded tree's file replaced by a new inode: an open descriptor would keep the old text."""
    path = tmp_path / "memory.current"
    path.write_text("1\n")
    files = PseudoFiles(hold=True)
    assert files.text(str(path)) == "1\n"
    replacement = tmp_path / "new"
    replacement.write_text("2\n")
    os.replace(replacement, path)
    assert files.text(str(path)) == "2\n" and files.held == 0


def test_missing_and_unreadable_files_are_none(tmp_path: Path) -> None:
    files = PseudoFiles(hold=True)
    assert files.text("/proc/self/no-such-file") is None
    assert files.text(str(tmp_path / "absent")) is None
    assert read_by_path(str(tmp_path)) is None  # a directory: EISDIR
    assert files.held == 0


def test_a_file_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big"
    text = "".join(f"line {i}\n" for i in range(20_000))  # > 64 KiB
    path.write_text(text)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_from_start(fd).decode() == text
        assert read_from_start(fd).decode() == text  # again from the start
    finally:
        os.close(fd)


def test_no_more_than_max_held_descriptors() -> None:
    files = PseudoFiles(hold=True)
    paths = ["/proc/self/" + "./" * i + "stat" for i in range(MAX_HELD + 10)]  # distinct names, one file
    assert all(files.text(p) is not None for p in paths)
    assert files.held == MAX_HELD
    files.close()
