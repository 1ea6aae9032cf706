"""A full disk (a 64 KiB tmpfs): exit 1, the file ends at its last whole packet, Wireshark reads it."""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from tests.privileged.procs import tmpfs_mount

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

SIZE = "64k"


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    with tmpfs_mount(f"size={SIZE},mode=0755", prefix="kstap-full-") as mountpoint:
        yield mountpoint


@pytest.fixture
def big_capture(tmp_path: Path) -> Path:
    """400 UDP packets of ~1 KB (≈420 KB): several times what the tmpfs holds."""
    path = tmp_path / "big.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535, nano=True)
        for i in range(400):
            udp = dpkt.udp.UDP(sport=40000, dport=40001 + i % 7, data=bytes([i % 256]) * 1000)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"), p=17, data=udp)
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
            w.writepkt(bytes(eth), ts=1_700_000_000 + i)
    assert path.stat().st_size > 400_000
    return path


DISK_FULL = re.compile(r"^kstap: error: disk full: capture stopped after (\d+) packets \((\d+) bytes saved in (.+)\)$")


def test_disk_full_keeps_a_readable_file(kstap_proc, tiny_fs: Path, big_capture: Path, wireshark,
                                         blocks) -> None:
    assert os.path.ismount(tiny_fs) and shutil.disk_usage(tiny_fs).total <= 64 * 1024
    out = tiny_fs / "out.pcapng"
    r = kstap_proc("tap", "--read", str(big_capture), "-w", str(out))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("kstap: error:")]
    assert len(errors) == 1, r.stderr
    m = DISK_FULL.match(lines[errors[0]])
    assert m, lines[errors[0]]
    packets, saved, name = int(m.group(1)), int(m.group(2)), m.group(3)
    assert lines[errors[0] + 1].startswith("hint: ") and "-C" in lines[errors[0] + 1]
    assert name == str(out)
    assert 0 < packets < 400
    assert saved == out.stat().st_size <= 64 * 1024
    assert f"{packets} packets captured" in lines
    assert len(wireshark.read_ok(out)) == packets
    found = blocks(out.read_bytes())  # whole blocks only, the last one complete
    assert sum(1 for btype, _ in found if btype == 6) == packets


def test_a_ring_of_files_fits_where_one_file_does_not(kstap_proc, tiny_fs: Path, big_capture: Path,
                                                      wireshark) -> None:
    """The disk-full hint's advice works: -C 0.02 -W 2 keeps two ~20 KB files on the 64 KiB disk."""
    out = tiny_fs / "ring.pcapng"
    r = kstap_proc("tap", "--read", str(big_capture), "-w", str(out), "-C", "0.02", "-W", "2")
    assert r.returncode == 0, r.stderr
    files = sorted(tiny_fs.iterdir())
    assert len(files) == 2
    counts = [len(wireshark.read_ok(f)) for f in files]
    last = [row[0] for row in wireshark.fields(files[-1], "frame.time_epoch")]
    assert last[-1].startswith(str(1_700_000_000 + 399))
    assert sum(counts) < 400
