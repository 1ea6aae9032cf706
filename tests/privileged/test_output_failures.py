"""Outputs that fail on a real file system (tmpfs mounts this test makes): a full disk under a -C/-W ring,
--entries on a full disk mid-run, and read-only file systems named as such before capture starts."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.privileged.procs import tmpfs_mount
from tests.privileged.test_disk_full import DISK_FULL, big_capture  # noqa: F401 - a fixture

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]
SAMPLE = ROOT / "examples" / "sample.pcapng"


@pytest.fixture
def tmpfs() -> Callable[[str], object]:
    return lambda options: tmpfs_mount(options, prefix="kstap-out-")


def test_disk_full_in_a_ring_leaves_no_empty_file_and_names_the_last_whole_one(
        kstap_proc, tmpfs, big_capture: Path, wireshark) -> None:  # noqa: F811
    with tmpfs("size=64k,mode=0755") as disk:
        out = disk / "ring.pcapng"
        r = kstap_proc("tap", "--read", str(big_capture), "-w", str(out), "-C", "0.03", "-W", "4")
        assert r.returncode == 1, r.stderr
        error = next(line for line in r.stderr.splitlines() if line.startswith("kstap: error:"))
        m = DISK_FULL.match(error)
        assert m, error
        files = sorted(disk.iterdir())
        assert files and all(f.stat().st_size > 0 for f in files), [(f.name, f.stat().st_size) for f in files]
        named = re.search(r"the newest (.+)$", m.group(3))
        assert named, error
        assert Path(named.group(1)) == files[-1]
        assert int(m.group(2)) == sum(f.stat().st_size for f in files)
        for f in files:
            assert wireshark.read_ok(f)


def test_entries_on_a_full_disk_close_the_capture_and_keep_whole_lines(
        kstap_proc, tmpfs, tmp_path: Path, wireshark) -> None:
    out = tmp_path / "out.pcapng"
    with tmpfs("size=4k,mode=0755") as disk:
        entries = disk / "entries.ndjson"
        r = kstap_proc("tap", "--read", str(SAMPLE), "-w", str(out), "--entries", str(entries))
        assert r.returncode == 1, r.stderr
        lines = r.stderr.splitlines()
        error = next(i for i, line in enumerate(lines) if line.startswith("kstap: error:"))
        assert lines[error] == f"kstap: error: --entries {str(entries)!r}: cannot write: No space left on device"
        assert lines[error + 1].startswith("hint: ") and "closed cleanly" in lines[error + 1]
        assert "internal error" not in r.stderr
        text = entries.read_text()
        assert len(text) > 1000 and text.endswith("\n"), "the lines that fit are kept, whole"
        assert all(json.loads(line)["protocol"] for line in text.splitlines())
    from kstap.formats.savefile import CaptureReader

    with out.open("rb") as fh:
        reader = CaptureReader(fh, str(out))
        assert sum(1 for _ in reader) > 0
        assert reader.statistics, "the capture file ends with its Interface Statistics Block"
    assert wireshark.read_ok(out)


@pytest.mark.parametrize("option", ["-w", "--entries"])
def test_a_read_only_file_system_is_named_as_such(kstap_proc, tmpfs, tmp_path: Path, option: str) -> None:
    with tmpfs("ro,size=64k") as disk:
        target = disk / ("x.pcapng" if option == "-w" else "x.ndjson")
        args = ["-w", str(target)] if option == "-w" else ["-w", str(tmp_path / "o.pcapng"), "--entries", str(target)]
        r = kstap_proc("tap", "--read", str(SAMPLE), *args)
        assert r.returncode == 2, r.stderr
        assert "read-only file system" in r.stderr and "permission denied" not in r.stderr
        assert not (tmp_path / "o.pcapng").exists()
        assert shutil.disk_usage(disk).used == 0
