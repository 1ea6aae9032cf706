"""``kstap filter``: prints the final expression, and with -d exactly what ``tcpdump -d`` prints."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")

EXPRESSIONS = [
    "tcp port 80",
    "udp",
    "tcp and (port 80 or port 8080)",
    "host 10.1.2.3 and not port 22",
    "icmp",
    "ip6",
    "",
    "net 10.0.0.0/8 and (tcp[tcpflags] & tcp-syn != 0)",
    "ip6 and udp dst port 53",
]


def _tcpdump_d(expression: str, *extra: str) -> str:
    r = subprocess.run(["tcpdump", *extra, "-d", "-i", "lo", expression], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_dump_equals_tcpdump_d(cli, expression: str) -> None:
    res = cli("filter", "-d", "-f", expression)
    assert res.code == 0, res.err
    assert res.out == _tcpdump_d(expression)
    assert res.err == ""


@pytest.mark.parametrize("expression", ["tcp port 80", ""])
def test_dump_equals_tcpdump_d_subprocess(kstap_proc, expression: str) -> None:
    r = kstap_proc("filter", "-d", "--bpf-filter", expression)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _tcpdump_d(expression)


@pytest.mark.parametrize("snaplen", ["96", "65535", "1"])
def test_dump_with_snaplen(cli, snaplen: str) -> None:
    res = cli("filter", "-d", "-s", snaplen, "-f", "tcp port 80")
    assert res.code == 0
    assert res.out == _tcpdump_d("tcp port 80", "-s", snaplen)
    assert f"ret      #{snaplen}" in res.out


def test_prints_the_final_expression(cli) -> None:
    res = cli("filter", "-f", "  tcp and (port 80 or port 8080)  ")
    assert (res.code, res.out, res.err) == (0, "tcp and (port 80 or port 8080)\n", "")


def test_no_filter_means_every_packet(cli) -> None:
    res = cli("filter")
    assert (res.code, res.out) == (0, "(no filter: every packet)\n")


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("tcp and", "can't parse filter expression: syntax error"),
        ("port 70000", "illegal port number 70000 > 65535"),
        ("net 10.0.0.1/8", 'non-network bits set in "10.0.0.1/8"'),
    ],
)
def test_bad_expression(cli, two_line_error, expression: str, reason: str) -> None:
    res = cli("filter", "-d", "-f", expression)
    assert res.code == 2
    assert res.out == ""
    two_line_error(res.err, f"invalid BPF filter {expression!r}: {reason}")
    tcpdump = subprocess.run(["tcpdump", "-d", "-i", "lo", expression], capture_output=True, text=True,
                             timeout=30, check=False)
    assert tcpdump.stderr.strip().endswith(reason)


def test_bad_expression_subprocess(kstap_proc) -> None:
    r = kstap_proc("filter", "-f", "tcp and")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        "kstap: error: invalid BPF filter 'tcp and': can't parse filter expression: syntax error",
        "hint: the filter uses pcap-filter(7) syntax, e.g. 'tcp and (port 80 or port 8080)'",
    ]


def test_too_many_instructions(cli, two_line_error) -> None:
    expression = " or ".join(f"ether[{i}] = {i % 256}" for i in range(1408))
    res = cli("filter", "-f", expression)
    assert res.code == 2
    two_line_error(res.err, "the filter compiles to 4098 BPF instructions; the kernel accepts 4096")


def test_help(cli) -> None:
    res = cli("filter", "--help")
    assert res.code == 0
    assert "-d" in res.out and "--bpf-filter" in res.out
