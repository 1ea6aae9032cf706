"""Exit codes and error messages of ``kstap``, in-process and as ``python -m kstap``.

Every error is two lines on stderr (``kstap: error: …`` and ``hint: …``) and never a traceback
(docs/cli.md). Nothing here captures live traffic; at most a socket is opened on ``lo``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kstap import __version__

T0 = 1_700_000_000_000_000_000


@pytest.fixture
def capture_file(tmp_path: Path, frames, pcap) -> Path:
    packets = [(T0 + i * 1_000_000, p) for i, p in enumerate(frames.mixed(40))]
    return pcap(tmp_path / "in.pcap", packets)


def _error_lines(err: str) -> list[str]:
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("kstap: error: ")]
    assert len(errors) == 1, err
    i = errors[0]
    assert i + 1 < len(lines) and lines[i + 1].startswith("hint: "), err
    return lines[i : i + 2]


# -- bad filters ------------------------------------------------------------------------------------
BAD_FILTER_MESSAGE = "kstap: error: invalid BPF filter 'tcp port': can't parse filter expression: syntax error"


@pytest.mark.parametrize("where", ["filter", "read", "live"])
def test_invalid_filter_in_process(cli, capture_file: Path, two_line_error, where: str) -> None:
    argv = {
        "filter": ["filter", "-f", "tcp port"],
        "read": ["tap", "--read", str(capture_file), "-f", "tcp port"],
        "live": ["tap", "-i", "lo", "-f", "tcp port", "-c", "1"],
    }[where]
    res = cli(*argv)
    assert res.code == 2
    two_line_error(res.err, "invalid BPF filter")
    assert res.err_lines[0] == BAD_FILTER_MESSAGE
    assert res.err_lines[1] == "hint: the filter uses pcap-filter(7) syntax, e.g. 'tcp and (port 80 or port 8080)'"
    assert res.out == ""


def test_invalid_filter_subprocess(kstap_proc, capture_file: Path, two_line_error) -> None:
    r = kstap_proc("tap", "--read", str(capture_file), "-f", "tcp port", "-w", str(capture_file) + ".out")
    assert r.returncode == 2
    two_line_error(r.stderr, "invalid BPF filter")
    assert r.stderr.splitlines()[0] == BAD_FILTER_MESSAGE
    assert not Path(str(capture_file) + ".out").exists()


# -- interfaces, options, conflicts -------------------------------------------------------------------
def test_unknown_interface_lists_the_interfaces(cli, two_line_error) -> None:
    res = cli("tap", "-i", "kstap-nosuch0", "-c", "1")
    assert res.code == 2
    two_line_error(res.err, "no such interface: 'kstap-nosuch0'")
    names = [name for _, name in socket.if_nameindex()]
    assert res.err_lines[1] == f"hint: available interfaces: {', '.join(names)}"
    assert "lo" in names


def test_unknown_interface_subprocess(kstap_proc, two_line_error) -> None:
    r = kstap_proc("tap", "-i", "kstap-nosuch0", "-c", "1")
    assert r.returncode == 2
    two_line_error(r.stderr, "no such interface")
    assert "lo" in r.stderr.splitlines()[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tap", "--bogus"], "No such option: --bogus"),
        (["tap", "-c", "many", "-i", "lo"], "Invalid value for '-c'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["filter", "-d", "extra"], "unexpected extra argument"),
    ],
)
def test_bad_command_line(cli, two_line_error, argv: list[str], message: str) -> None:
    res = cli(*argv)
    assert res.code == 2
    two_line_error(res.err, "")
    assert message in res.err_lines[0]
    assert res.err_lines[1].startswith("hint: see 'kstap")


def test_unknown_option_subprocess(kstap_proc, two_line_error) -> None:
    r = kstap_proc("tap", "--bogus")
    assert r.returncode == 2
    two_line_error(r.stderr, "No such option: --bogus")
    assert r.stderr.splitlines()[1] == "hint: see 'kstap tap --help'"


CONFLICTS = [
    (["tap"], "nothing to capture"),
    (["tap", "--read", "{file}", "-i", "lo"], "--read and -i cannot be used together"),
    (["tap", "-i", "lo", "--realtime"], "--realtime only applies to --read"),
    (["tap", "--read", "{file}", "--workers", "2"], "--workers only applies to live capture"),
    (["tap", "--read", "{file}", "--netns", "ns1"], "--netns only applies to live capture"),
    (["tap", "-i", "lo", "--workers", "2", "--capture", "libpcap"], "--workers 2 needs the af_packet backend"),
    (["tap", "-i", "lo", "--capture", "dpdk"], "unknown capture backend 'dpdk'"),
    (["tap", "-i", "lo", "-C", "10"], "-C/-G/-W need an output file"),
    (["tap", "-i", "lo", "-w", "-", "-G", "60"], "-C/-G cannot rotate standard output"),
    (["tap", "-i", "lo", "-w", "{out}", "-W", "3"], "-W needs -C or -G"),
    (["tap", "-i", "lo", "-c", "0"], "-c must be a positive number"),
    (["tap", "-i", "lo", "--duration", "nan"], "setting 'duration' (from flag): expected a number, got NaN"),
    (["tap", "-i", "lo", "-w", "{out}", "-C", "nan"], "setting 'output.rotate_mb' (from flag): expected a number"),
    (["tap", "-i", "lo", "--duration", "-1"], "--duration must be positive"),
    (["tap", "-i", "lo", "-w", "{out}", "-C", "0"], "-C must be positive"),
    (["tap", "--read", "{file}", "-s", "0"], "--snaplen must be between 1 and 262144"),
]


@pytest.mark.timeout(30)  # a check that stopped working would start a live capture on lo
@pytest.mark.parametrize(("argv", "message"), CONFLICTS, ids=[c[1][:30] for c in CONFLICTS])
def test_conflicting_flags(cli, capture_file: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    out = tmp_path / "never.pcapng"
    res = cli(*[a.format(file=capture_file, out=out) for a in argv])
    assert res.code == 2, res.err
    assert res.err_lines[0].startswith(f"kstap: error: {message}"), res.err
    assert "Traceback" not in res.err and len(res.err_lines) <= 2
    assert not out.exists()


def test_conflicting_flags_subprocess(kstap_proc, capture_file: Path) -> None:
    r = kstap_proc("tap", "--read", str(capture_file), "-i", "lo")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "kstap: error: --read and -i cannot be used together",
        "hint: capture live with -i IFACE, or replay a file with --read FILE",
    ]


# -- --read -----------------------------------------------------------------------------------------
def test_read_missing_file(cli, tmp_path: Path, two_line_error) -> None:
    missing = tmp_path / "missing.pcap"
    res = cli("tap", "--read", str(missing))
    assert res.code == 2
    two_line_error(res.err, f"cannot read {str(missing)!r}: no such file")


def test_read_missing_file_subprocess(kstap_proc, tmp_path: Path, two_line_error) -> None:
    r = kstap_proc("tap", "--read", str(tmp_path / "missing.pcap"))
    assert r.returncode == 2
    two_line_error(r.stderr, "cannot read")


@pytest.mark.parametrize("content", [b"", b"GET / HTTP/1.1\r\n\r\n", b"\x7fELF" + b"\0" * 100])
def test_read_not_a_capture(cli, tmp_path: Path, two_line_error, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    out = tmp_path / "out.pcapng"
    res = cli("tap", "--read", str(path), "-w", str(out))
    assert res.code == 1
    two_line_error(res.err, str(path))
    assert "not a pcap or pcapng file" in res.err or "empty" in res.err
    assert "internal error" not in res.err
    assert not out.exists()


def test_read_not_a_capture_subprocess(kstap_proc, tmp_path: Path, two_line_error) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("plain text\n")
    r = kstap_proc("tap", "--read", str(path))
    assert r.returncode == 1
    two_line_error(r.stderr, f"{path}: not a pcap or pcapng file")


def test_read_truncated_capture_keeps_the_valid_packets(cli, tmp_path: Path, frames, pcap_bytes,
                                                        wireshark) -> None:
    packets = [(T0 + i * 1000, frames.udp(sport=1000 + i, payload=b"t" * 58)) for i in range(10)]
    data = pcap_bytes(packets)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: 24 + 7 * (16 + 100) + 50])  # 7 whole packets and part of the 8th
    out = tmp_path / "out.pcapng"
    res = cli("tap", "--read", str(cut), "-w", str(out))
    assert res.code == 1
    assert "Traceback" not in res.err
    warnings = [line for line in res.err_lines if line.startswith("kstap: warning: ")]
    assert len(warnings) == 1 and "kept the 7 valid packets" in warnings[0]
    error, hint = _error_lines(res.err)
    assert error.startswith("kstap: error: --read stopped early") and "truncated" in error
    assert "7 packets" in hint
    assert "7 packets captured" in res.err_lines
    rows = wireshark.fields(out, "udp.srcport")
    assert rows == [[str(1000 + i)] for i in range(7)]


def test_read_truncated_capture_subprocess(kstap_proc, tmp_path: Path, frames, pcap_bytes, wireshark) -> None:
    packets = [(T0 + i, frames.udp(payload=b"s" * 58)) for i in range(5)]
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(pcap_bytes(packets)[:-10])
    out = tmp_path / "out.pcapng"
    r = kstap_proc("tap", "--read", str(cut), "-w", str(out))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "kstap: warning:" in r.stderr
    assert _error_lines(r.stderr)[0].startswith("kstap: error: --read stopped early")
    assert len(wireshark.read_ok(out)) == 4


def test_read_ok(cli, capture_file: Path, tmp_path: Path, wireshark) -> None:
    out = tmp_path / "ok.pcapng"
    res = cli("tap", "--read", str(capture_file), "-w", str(out))
    assert res.code == 0, res.err
    assert "kstap: error" not in res.err
    assert "40 packets captured" in res.err_lines
    assert f"kstap: wrote {out}" in res.err_lines
    assert len(wireshark.read_ok(out)) == 40


def test_write_to_stdout_is_pcapng(capture_file: Path, tmp_path: Path, wireshark) -> None:
    r = subprocess.run([sys.executable, "-m", "kstap", "tap", "--read", str(capture_file), "-w", "-",
                        "-f", "udp"], capture_output=True, timeout=30, check=False,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "stdout.pcapng"
    out.write_bytes(r.stdout)
    assert r.stdout[:4] == b"\x0a\x0d\x0d\x0a"
    assert len(wireshark.read_ok(out)) == wireshark.tcpdump_count(capture_file, "udp")
    assert b"packets captured" in r.stderr


def test_stdout_reader_gone_before_the_first_byte(capture_file: Path) -> None:
    """Like tcpdump: a reader of -w - that goes away ends the capture quietly."""
    p = subprocess.Popen([sys.executable, "-m", "kstap", "tap", "--read", str(capture_file), "-w", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=Path(__file__).resolve().parents[2])
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 0, err
    assert "error" not in err and "Traceback" not in err


# -- output paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "proc"])
def test_output_not_writable(cli, capture_file: Path, tmp_path: Path, two_line_error, where: str) -> None:
    target = {"missing-dir": str(tmp_path / "no" / "such" / "x.pcapng"), "a-directory": str(tmp_path),
              "proc": "/proc/kstap-test-out.pcapng"}[where]
    before = sorted(tmp_path.rglob("*"))
    res = cli("tap", "--read", str(capture_file), "-w", target)
    assert res.code == 2, res.err
    two_line_error(res.err, "")
    assert str(target) in res.err_lines[0]
    assert sorted(tmp_path.rglob("*")) == before
    assert not os.path.exists("/proc/kstap-test-out.pcapng")


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import kstap"],
                           capture_output=True, timeout=30, check=False, cwd="/")
    return probe.returncode == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """Root-owned and 0755: user nobody may read in it but not create files."""
    path = Path(tempfile.mkdtemp(prefix="kstap-cli-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(not _nobody_can_run_python(), reason="needs root and a python user nobody can run")
def test_output_not_writable_as_nobody(kstap_proc, shared_dir: Path, frames, pcap, two_line_error) -> None:
    src = pcap(shared_dir / "in.pcap", [(T0, frames.udp())])
    os.chmod(src, 0o644)
    target = shared_dir / "out.pcapng"
    r = kstap_proc("tap", "--read", str(src), "-w", str(target),
                   prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], cwd="/")
    assert r.returncode == 2, r.stderr
    two_line_error(r.stderr, f"cannot write {str(target)!r}: permission denied")
    assert not target.exists()


# -- meta -------------------------------------------------------------------------------------------
def test_version(cli) -> None:
    res = cli("--version")
    assert res.code == 0
    assert res.out == f"kstap {__version__}\n"
    assert res.err == ""


def test_version_subprocess(kstap_proc) -> None:
    r = kstap_proc("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"kstap {__version__}\n", "")


def test_no_arguments_prints_help_once(kstap_proc) -> None:
    r = kstap_proc()
    assert r.returncode == 2
    assert r.stdout.count("Usage: kstap") == 1, r.stdout
    for command in ("tap", "filter"):
        assert f" {command} " in r.stdout
    assert "Traceback" not in r.stderr and "error" not in r.stderr


def test_no_arguments_in_process(cli) -> None:
    res = cli()
    assert res.code == 2
    assert res.out.count("Usage: kstap") == 1
    assert "Traceback" not in res.err


def test_debug_shows_the_traceback(kstap_proc, tmp_path: Path) -> None:
    r = kstap_proc("--debug", "tap", "--read", str(tmp_path / "missing.pcap"))
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "UsageError" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="opening an AF_PACKET socket on lo needs CAP_NET_RAW")
def test_filter_too_big_for_the_kernel_is_not_an_internal_error(cli) -> None:
    """Under the 4096-instruction limit but over the socket memory the kernel allows (optmem_max)."""
    from kstap.filters.bpf import compile_filter

    expression = " or ".join(f"ether[{i}] = {i % 256}" for i in range(1400))  # ~4070 instructions
    fprog, keep = compile_filter(expression).sock_fprog()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
            pytest.skip("this kernel's net.core.optmem_max accepts the program")
        except OSError:
            pass
    del keep
    res = cli("tap", "-i", "lo", "-f", expression, "-c", "1", "--duration", "0.1")
    assert res.code in (2, 3), res.err
    assert "internal error" not in res.err
    error, _hint = _error_lines(res.err)
    assert "filter" in error
