"""kstap.sinks.files: rotation (-C/-G/-W), file modes, full disks and the up-front writability check."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kstap import file_writes
from kstap.errors import ExitCode, KstapError, UsageError
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.model import Interface, PacketRecord
from kstap.sinks import files
from kstap.sinks.files import DiskFull, OutputClosed, PcapngFiles, check_writable, rotated_name

TS = 1_700_000_000_000_000_000
IFACES = [Interface("veth0", filter="udp")]


def _counters() -> list[pcapng.InterfaceCounters]:
    return [pcapng.InterfaceCounters(0, 0, 100, 1, 0)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def packet(frames) -> bytes:
    return frames.udp(payload=b"d" * 100)  # 142 bytes: a 176-byte EPB


def _rec(pkt: bytes, i: int) -> PacketRecord:
    return (TS + i * 1000, len(pkt), len(pkt), pkt, 0, 0)


def _packets_in(path: Path, wireshark) -> list[str]:
    """The frame.time_epoch of every packet, after checking tshark reads the file cleanly."""
    return [row[0] for row in wireshark.fields(path, "frame.time_epoch")]


def _ends_with_isb(path: Path, blocks) -> bool:
    found = blocks(path.read_bytes())
    return found[-1][0] == pcapng.BT_ISB and found[0][0] == pcapng.BT_SHB


def _usrdeliv(path: Path, blocks, block_options) -> int:
    isb = [body for btype, body in blocks(path.read_bytes()) if btype == pcapng.BT_ISB][-1]
    return int(struct.unpack("<Q", block_options(isb[12:])[pcapng.ISB_USRDELIV][0])[0])


# -- naming -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "index", "expected"),
    [
        ("capture.pcapng", 3, "capture_00003.pcapng"),
        ("/data/run/cap.pcap", 1, "/data/run/cap_00001.pcap"),
        ("dir/noext", 12, "dir/noext_00012.pcapng"),
        ("a.b.pcapng", 99999, "a.b_99999.pcapng"),
        ("x.pcapng", 123456, "x_123456.pcapng"),
    ],
)
def test_rotated_name(path: str, index: int, expected: str) -> None:
    assert rotated_name(path, index) == expected


# -- one file -----------------------------------------------------------------------------------------
def test_single_file_no_rotation(tmp_path, packet, wireshark, blocks) -> None:
    out = tmp_path / "one.pcapng"
    out.write_bytes(b"old content that must go away" * 100)
    sink = PcapngFiles(str(out), IFACES, counters=_counters, rotate_bytes=None)
    for i in range(50):
        sink.write([_rec(packet, i)])
    sink.write([])
    assert sink.close()
    assert sink.files == [str(out)]
    assert list(tmp_path.iterdir()) == [out]
    assert len(_packets_in(out, wireshark)) == 50 == sink.packets_written
    assert _ends_with_isb(out, blocks)
    assert sink.bytes_written == out.stat().st_size


def test_files_are_created_0600_whatever_the_umask(tmp_path, packet) -> None:
    old = os.umask(0)
    try:
        single = PcapngFiles(str(tmp_path / "s.pcapng"), IFACES, counters=_counters)
        single.close()
        ring = PcapngFiles(str(tmp_path / "r.pcapng"), IFACES, counters=_counters, rotate_bytes=300)
        for i in range(4):
            ring.write([_rec(packet, i)])
        ring.close()
    finally:
        os.umask(old)
    made = sorted(tmp_path.iterdir())
    assert len(made) == 5
    for f in made:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


# -- rotation by size (-C) -----------------------------------------------------------------------------
def test_rotation_by_bytes(tmp_path, packet, wireshark, blocks, block_options) -> None:
    base = tmp_path / "cap.pcapng"
    limit = 1000
    sink = PcapngFiles(str(base), IFACES, counters=_counters, rotate_bytes=limit)
    for i in range(20):
        sink.write([_rec(packet, i)])
    assert sink.close()
    names = [rotated_name(str(base), i) for i in range(1, len(sink.files) + 1)]
    assert sink.files == names
    assert sorted(str(p) for p in tmp_path.iterdir()) == names
    assert not base.exists()
    counts = wireshark.packet_counts(names)
    delivered = []
    for name in names:
        path = Path(name)
        wireshark.read_ok(path)
        assert _ends_with_isb(path, blocks)
        delivered.append(_usrdeliv(path, blocks, block_options))
        epb_end = sum(len(body) + 12 for btype, body in blocks(path.read_bytes()) if btype != pcapng.BT_ISB)
        if name != names[-1]:
            assert limit <= epb_end < limit + 176, "rotates at the first write past -C"
    header = len(pcapng.section_header(comment="")) + len(pcapng.interface_description(IFACES[0]))
    per_file = -(-(limit - header) // 176)
    assert counts == [per_file] * (20 // per_file) + ([20 % per_file] if 20 % per_file else [])
    assert sum(counts) == 20 == sink.packets_written
    # the ISB counters are cumulative since capture start, like the kernel's
    assert delivered == [sum(counts[: k + 1]) for k in range(len(counts))]
    times = []
    for name in names:
        with open(name, "rb") as fh:
            times += [rec[0] for rec, _ in CaptureReader(fh)]
    assert times == [_rec(b"", i)[0] for i in range(20)]


@pytest.mark.parametrize("with_queue", [False, True])
def test_a_batch_is_split_where_the_file_reaches_the_size(tmp_path, packet, wireshark, with_queue: bool) -> None:
    """-C counts packets like tcpdump: a big batch (a --read, a full ring block) is no excuse."""
    limit = 1000
    sink = PcapngFiles(str(tmp_path / "b.pcapng"), IFACES, counters=_counters, rotate_bytes=limit,
                       with_queue=with_queue)
    sink.write([_rec(packet, i) for i in range(30)])
    sink.write([_rec(packet, i) for i in range(30, 33)])
    sink.close()
    epb = 176 + (12 if with_queue else 0)
    header = len(pcapng.section_header(comment="")) + len(pcapng.interface_description(IFACES[0]))
    per_file = -(-(limit - header) // epb)
    counts = wireshark.packet_counts(sink.files)
    assert sum(counts) == 33 == sink.packets_written
    assert counts[:-1] == [per_file] * (len(counts) - 1) and 0 < counts[-1] <= per_file


# -- rotation by time (-G) ------------------------------------------------------------------------------
def test_rotation_by_seconds_with_an_injected_clock(tmp_path, packet, wireshark, blocks) -> None:
    clock = FakeClock()
    base = tmp_path / "t.pcapng"
    sink = PcapngFiles(str(base), IFACES, counters=_counters, rotate_seconds=10, monotonic=clock)
    plan = [(0, [0]), (5, [1]), (9.999, [2]), (10, [3]), (12, [4]), (25, []), (26, [5]), (45, [6])]
    for offset, idx in plan:
        clock.now = 1000.0 + offset
        if idx:
            sink.write([_rec(packet, i) for i in idx])
        else:
            sink.tick()  # what the pipeline does when a read returned nothing
    assert sink.close()
    assert sink.files == [rotated_name(str(base), i) for i in (1, 2, 3, 4)]
    assert wireshark.packet_counts(sink.files) == [3, 2, 1, 1]
    for f in sink.files:
        assert _ends_with_isb(Path(f), blocks)


def test_no_rotation_before_the_period(tmp_path, packet) -> None:
    clock = FakeClock()
    sink = PcapngFiles(str(tmp_path / "t.pcapng"), IFACES, counters=_counters, rotate_seconds=60,
                       monotonic=clock)
    for i in range(100):
        clock.now += 0.5
        sink.write([_rec(packet, i)])
    sink.close()
    assert len(sink.files) == 1


# -- the ring (-W) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ring", [1, 3])
def test_ring_keeps_the_newest_files(tmp_path, packet, ring: int, wireshark, blocks) -> None:
    base = tmp_path / "ring.pcapng"
    sink = PcapngFiles(str(base), IFACES, counters=_counters, rotate_bytes=400, ring_files=ring)
    for i in range(21):
        sink.write([_rec(packet, i)])
    assert sink.close()
    total = 21 // 2 + 21 % 2  # two 176-byte packets pass 400 bytes with the header
    expected = [rotated_name(str(base), i) for i in range(total - ring + 1, total + 1)]
    assert sink.files == expected
    assert sorted(str(p) for p in tmp_path.iterdir()) == expected
    for f in expected:
        assert _ends_with_isb(Path(f), blocks)
    assert wireshark.packet_counts(expected)[-1] == 1  # packet 20, alone in file 11


def test_ring_with_time_rotation(tmp_path, packet) -> None:
    clock = FakeClock()
    base = tmp_path / "g.pcapng"
    sink = PcapngFiles(str(base), IFACES, counters=_counters, rotate_seconds=1, ring_files=2, monotonic=clock)
    for i in range(6):
        clock.now += 1
        sink.write([_rec(packet, i)])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g_00006.pcapng", "g_00007.pcapng"]


# -- full disks and closed pipes --------------------------------------------------------------------------
class _LimitedOs:
    """kstap.sinks.files' view of ``os`` with a disk that holds ``room`` more bytes."""

    def __init__(self, room: int, err: int = errno.ENOSPC) -> None:
        self.room = room
        self.err = err

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if fd <= 2:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        if self.room <= 0:
            raise OSError(self.err, os.strerror(self.err))
        n = os.write(fd, bytes(data[: self.room]))
        self.room -= n
        return n

    def ftruncate(self, fd: int, size: int) -> None:
        self.room += os.fstat(fd).st_size - size  # cutting the file back frees its tail
        os.ftruncate(fd, size)


@pytest.fixture
def limited_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[_LimitedOs]:
    fake = _LimitedOs(0)
    monkeypatch.setattr(files, "os", fake)
    monkeypatch.setattr(file_writes, "os", fake)  # where the sink's writes are made
    monkeypatch.setattr(file_writes, "write_slices", None)  # ... by the Python loop, which sees the fake
    yield fake


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_full_disk_keeps_whole_packets(tmp_path, packet, limited_disk, err: int, wireshark) -> None:
    header = len(pcapng.section_header(comment="")) + len(pcapng.interface_description(IFACES[0]))
    limited_disk.room = header + 2 * 176 + 100  # two packets and a bit
    limited_disk.err = err
    out = tmp_path / "full.pcapng"
    sink = PcapngFiles(str(out), IFACES, counters=_counters)
    sink.write([_rec(packet, 0)])
    with pytest.raises(DiskFull) as info:
        sink.write([_rec(packet, i) for i in range(1, 10)])
    assert "disk full" in info.value.message and info.value.hint
    assert info.value.code == ExitCode.RUNTIME
    assert sink.packets_written == 2
    assert not sink.close()  # no room for the statistics block
    assert out.stat().st_size == header + 2 * 176 == sink.bytes_written
    assert len(_packets_in(out, wireshark)) == 2


def test_full_disk_when_only_the_statistics_do_not_fit(tmp_path, packet, limited_disk, wireshark) -> None:
    header = len(pcapng.section_header(comment="")) + len(pcapng.interface_description(IFACES[0]))
    limited_disk.room = header + 3 * 176 + 10
    out = tmp_path / "full.pcapng"
    sink = PcapngFiles(str(out), IFACES, counters=_counters)
    sink.write([_rec(packet, i) for i in range(3)])
    assert not sink.close()
    assert out.stat().st_size == header + 3 * 176
    assert len(_packets_in(out, wireshark)) == 3


def test_other_write_errors_are_runtime_errors(tmp_path, packet, limited_disk) -> None:
    limited_disk.room = 10_000
    sink = PcapngFiles(str(tmp_path / "io.pcapng"), IFACES, counters=_counters)
    limited_disk.room = 0
    limited_disk.err = errno.EIO
    with pytest.raises(KstapError) as info:
        sink.write([_rec(packet, 0)])
    assert not isinstance(info.value, DiskFull)
    assert "failed" in info.value.message


def test_closed_stdout_is_output_closed(packet, limited_disk) -> None:
    with pytest.raises(OutputClosed):
        PcapngFiles("-", IFACES, counters=_counters)


def test_cannot_create_is_a_runtime_error(tmp_path) -> None:
    with pytest.raises(KstapError, match="cannot create"):
        PcapngFiles(str(tmp_path / "missing" / "x.pcapng"), IFACES, counters=_counters)


# -- check_writable --------------------------------------------------------------------------------------
def test_check_writable_accepts(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_writable("-")
    check_writable(str(tmp_path / "new.pcapng"))
    assert not (tmp_path / "new.pcapng").exists(), "the check leaves nothing behind"
    existing = tmp_path / "old.pcapng"
    existing.write_bytes(b"keep me")
    check_writable(str(existing))
    assert existing.read_bytes() == b"keep me"
    monkeypatch.chdir(tmp_path)
    check_writable("relative.pcapng")
    assert not (tmp_path / "relative.pcapng").exists()


def test_check_writable_missing_directory(tmp_path) -> None:
    with pytest.raises(UsageError) as info:
        check_writable(str(tmp_path / "nope" / "x.pcapng"))
    assert info.value.code == ExitCode.USAGE
    assert "does not exist" in info.value.message and info.value.hint


def test_check_writable_directory_given(tmp_path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(str(tmp_path))


def test_check_writable_file_as_directory(tmp_path) -> None:
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(UsageError):
        check_writable(str(tmp_path / "afile" / "x.pcapng"))


def test_check_writable_where_files_cannot_be_created() -> None:
    """/proc accepts no new files, even from root (for whom permission bits do not count)."""
    with pytest.raises(UsageError) as info:
        check_writable("/proc/kstap-test.pcapng")
    assert info.value.code == ExitCode.USAGE
    assert info.value.hint
    assert not os.path.exists("/proc/kstap-test.pcapng")


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import kstap"],
                           capture_output=True, timeout=30, check=False, cwd="/")
    return probe.returncode == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory user nobody can search but not write (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="kstap-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


_CHECK = (
    "import sys\n"
    "from kstap.errors import UsageError\n"
    "from kstap.sinks.files import check_writable\n"
    "for p in sys.argv[1:]:\n"
    "    try:\n"
    "        check_writable(p)\n"
    "        print('ok')\n"
    "    except UsageError as e:\n"
    "        print(e.message)\n"
)


@pytest.mark.skipif(not _nobody_can_run_python(),
                    reason="needs root and a venv python that user nobody can run")
def test_check_writable_permission_denied_as_nobody(shared_dir: Path) -> None:
    (shared_dir / "exists.pcapng").write_bytes(b"")
    os.chmod(shared_dir / "exists.pcapng", 0o644)
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    open_dir = shared_dir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    targets = [str(shared_dir / "new.pcapng"), str(shared_dir / "exists.pcapng"),
               str(private / "x.pcapng"), str(open_dir / "x.pcapng")]
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", _CHECK, *targets],
                       capture_output=True, text=True, timeout=30, check=False, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"cannot write {t!r}: permission denied" for t in targets[:3]] + ["ok"]
    assert not (shared_dir / "new.pcapng").exists()
    assert list(open_dir.iterdir()) == []


LIMITED_CHILD = """
import os, resource, signal, sys
from kstap import file_writes
from kstap.model import Interface
from kstap.sinks.files import DiskFull, PcapngFiles
from kstap.formats import pcapng
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
pkt = bytes.fromhex(sys.argv[3])
sink = PcapngFiles(sys.argv[1], [Interface("veth0", filter="udp")],
                   counters=lambda: [pcapng.InterfaceCounters(0, 0, 100, 1, 0)])
try:
    for batch in range(100):
        sink.write([(1_700_000_000_000_000_000 + (batch * 50 + i) * 1000, len(pkt), len(pkt), pkt, 0, 0)
                    for i in range(50)])
except DiskFull as exc:
    print("disk full")
print(sink.close(), sink.packets_written, sink.bytes_written, "c" if file_writes.write_slices else "python")
"""


@pytest.mark.parametrize("pure", [False, True], ids=["c-loop", "python-loop"])
def test_a_real_file_size_limit_keeps_whole_packets(tmp_path, packet, wireshark, pure: bool) -> None:
    """RLIMIT_FSIZE, a limit the kernel enforces mid-write (a short write, then EFBIG): the file is cut
    back to its last whole packet, with both write loops."""
    if not pure and file_writes.write_slices is None:
        pytest.skip("the C helper is not built (make venv builds it)")
    out = tmp_path / "limited.pcapng"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    env.pop("KSTAP_PURE_PYTHON", None)
    if pure:
        env["KSTAP_PURE_PYTHON"] = "1"
    lines = subprocess.run([sys.executable, "-c", LIMITED_CHILD, str(out), str(20_000 + 77), packet.hex()],
                           env=env, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert lines[0] == "disk full"
    closed, written, nbytes, loop = lines[1].split()
    assert loop == ("python" if pure else "c") and closed == "False"  # no room left for the statistics
    header = len(pcapng.section_header(comment="")) + len(pcapng.interface_description(IFACES[0]))
    assert int(written) == (20_077 - header) // 176 > 50
    assert out.stat().st_size == int(nbytes) == header + int(written) * 176
    assert len(_packets_in(out, wireshark)) == int(written)
