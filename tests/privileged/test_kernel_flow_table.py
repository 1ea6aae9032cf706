"""The in-kernel flow table, run by the kernel itself (BPF_PROG_TEST_RUN): the eBPF flow hash
equals the golden vectors, the translated user filter decides as libpcap does, and each flow keeps
the decision of its first packet across rate rises, cuts and an emergency shed."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.filters import bpf_syscall
from kstap.filters.bpf import Program, compile_filter
from kstap.sampling.flowhash import flow_hash
from kstap.sampling.flowkey import flow_key
from kstap.sampling.kernel_table import DROP, KEEP, KernelFlowTable, Layout
from tests.unit.sampling.test_flowhash import GOLDEN, frame

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or bpf_syscall.probe() is not None,
                                reason="needs CAP_BPF (root) and BPF maps")
SNAP = 262144


def golden_frame(proto: int, a: str, ap: int, b: str, bp: int) -> bytes:
    v6 = ":" in a
    return frame(v6, proto, ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed, ap, bp)


def run(table: KernelFlowTable, insns: tuple[tuple[int, int, int, int], ...], raw: bytes) -> int:
    fd = table.program(insns, Layout("network"))  # test runs hand the filter the network header
    try:
        return bpf_syscall.test_run(fd, raw)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("seed", "flow", "expected"), GOLDEN)
def test_the_kernel_keys_flows_by_the_golden_hash(seed: int, flow: tuple[int, str, int, str, int],
                                                  expected: int) -> None:
    table = KernelFlowTable(seed, 1.0)
    try:
        for raw in (golden_frame(*flow), golden_frame(flow[0], flow[3], flow[4], flow[1], flow[2])):
            assert run(table, compile_filter("").insns, raw) == SNAP
        assert table.flows.keys() == [struct.pack("<I", expected)]  # both directions: one flow
        assert table.decision(expected) == KEEP
    finally:
        table.close()


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.sampled_from([6, 17, 132, 1]), st.binary(min_size=4, max_size=4),
       st.binary(min_size=4, max_size=4), st.integers(0, 65535), st.integers(0, 65535), st.booleans(),
       st.integers(0, 2**32 - 1), st.floats(0.01, 0.99))
def test_the_kernel_decides_new_flows_as_python_does(v6: bool, proto: int, a: bytes, b: bytes, sp: int, dp: int,
                                                     frag: bool, seed: int, rate: float) -> None:
    raw = frame(v6, proto, a * 4 if v6 else a, b * 4 if v6 else b, sp, dp, frag=frag and not v6)
    key = flow_key(raw)
    assert key is not None
    table = KernelFlowTable(seed, rate)
    try:
        keep = flow_hash(key, seed) < table.threshold
        assert run(table, compile_filter("").insns, raw) == (SNAP if keep else 0)
    finally:
        table.close()


@pytest.mark.parametrize("expression", ["udp", "tcp port 80", "not port 53", "host 10.0.0.1 and udp",
                                        "ip6 and tcp", "udp[8:2] = 0x6162", "tcp[tcpflags] & tcp-syn != 0",
                                        "len > 100", "ip[6:2] & 0x1fff = 0"])
def test_a_translated_user_filter_accepts_what_libpcap_accepts(expression: str) -> None:
    prog = compile_filter(expression, linktype=101)  # raw IP: offsets as a test run's filter sees them
    table = KernelFlowTable(7, 1.0)
    samples = [frame(v6, proto, (b"\x0a\0\0\x01" * 4)[: 16 if v6 else 4], (b"\x0a\0\0\x02" * 4)[: 16 if v6 else 4],
                     sp, 80, frag=False)
               for v6 in (False, True) for proto in (6, 17, 1) for sp in (53, 4000)]
    samples.append(bytes(dpkt.ethernet.Ethernet(type=0x0800, data=dpkt.ip.IP(
        src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17, data=dpkt.udp.UDP(sport=1, dport=2, data=b"ab" * 80)))))
    try:
        for raw in samples:
            ip = raw[14:]
            expected = Program(expression, 101, SNAP, prog.insns).matches(ip, len(ip))
            assert (run(table, prog.insns, raw) != 0) == expected, (expression, raw.hex())
    finally:
        table.close()


def flows(n: int) -> list[tuple[bytes, int]]:
    out = []
    for i in range(n):
        raw = frame(False, 17, b"\x0a\1\0\1", b"\x0a\1\0\2", 10000 + i, 5001)
        key = flow_key(raw)
        assert key is not None
        out.append((raw, flow_hash(key, 99)))
    return out


def test_decisions_hold_for_the_flow_life_across_rises_cuts_and_a_shed() -> None:
    table = KernelFlowTable(99, 0.2)
    fd = table.program(compile_filter("").insns, Layout("network"))
    try:
        live = flows(400)
        first = {h: bpf_syscall.test_run(fd, raw) != 0 for raw, h in live}
        assert first == {h: h < table.threshold for _, h in live}
        table.set_rate(1.0)  # a rise: none of the live dropped flows comes in mid-way
        assert {h: bpf_syscall.test_run(fd, raw) != 0 for raw, h in live} == first
        fresh = [(raw, h) for raw, h in flows(800)[400:]]
        assert all(bpf_syscall.test_run(fd, raw) for raw, _ in fresh)  # new flows: the new rate
        table.set_rate(0.05)  # a cut: every live kept flow goes on
        assert all(bpf_syscall.test_run(fd, raw) for raw, _ in fresh)
        table.shed(0.1)  # an emergency: kept flows at or above the new threshold stop, after one last packet
        assert all(bpf_syscall.test_run(fd, raw) for raw, _ in fresh)  # the one to carry the mark
        after = {h: bpf_syscall.test_run(fd, raw) != 0 for raw, h in fresh}
        assert after == {h: h < table.threshold for _, h in fresh}
        assert table.stats().flows_shed == sum(not kept for kept in after.values())
        assert all(table.decision(h) == DROP for h, kept in after.items() if not kept)
        stats = table.stats()
        assert stats.flows_kept == sum(first.values()) + len(fresh)
        assert stats.flows_dropped == len(first) - sum(first.values())
    finally:
        os.close(fd)
        table.close()


def test_the_kernel_records_when_it_last_kept_a_new_flow() -> None:
    """The first-packet table's two questions: the newest "keep" decision of a new flow (not a drop, not a
    known flow's packet) and when a flow was last seen, in CLOCK_MONOTONIC ns."""
    table = KernelFlowTable(99, 0.5)
    fd = table.program(compile_filter("").insns, Layout("network"))
    try:
        live = flows(64)
        kept = [(raw, h) for raw, h in live if h < table.threshold]
        dropped = [(raw, h) for raw, h in live if h >= table.threshold]
        assert table.newest_kept_ns() == 0 and table.last_seen_ns(kept[0][1]) is None
        assert bpf_syscall.test_run(fd, dropped[0][0]) == 0
        assert table.newest_kept_ns() == 0  # a dropped flow starts nothing user space sees
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        assert bpf_syscall.test_run(fd, kept[0][0]) == SNAP
        first = table.newest_kept_ns()
        assert before <= first <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        assert table.last_seen_ns(kept[0][1]) == first
        assert bpf_syscall.test_run(fd, kept[0][0]) == SNAP
        assert table.newest_kept_ns() == first  # a known flow's packet: no new decision
        last = table.last_seen_ns(kept[0][1])
        assert last is not None and last > first
        assert bpf_syscall.test_run(fd, kept[1][0]) == SNAP
        assert table.newest_kept_ns() > last
        assert table.last_seen_ns(dropped[0][1]) is not None  # dropped flows are seen too
    finally:
        os.close(fd)
        table.close()


def test_a_flow_idle_past_the_timeout_is_decided_anew() -> None:
    table = KernelFlowTable(99, 0.0, idle_timeout_ns=1)  # every gap is past the timeout
    fd = table.program(compile_filter("").insns, Layout("network"))
    try:
        raw, h = flows(1)[0]
        assert bpf_syscall.test_run(fd, raw) == 0
        table.set_rate(1.0)
        assert bpf_syscall.test_run(fd, raw) == SNAP and table.decision(h) == KEEP
    finally:
        os.close(fd)
        table.close()


def test_the_socket_type_picks_the_layout() -> None:
    table = KernelFlowTable(1, 1.0)
    try:
        for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_PACKET, kind, 0) as s:
                table.attach(s, compile_filter("udp").insns, 1)
    finally:
        table.close()


LOAD_AS_WORKER = """
import socket, sys
from kstap.filters.bpf import compile_filter
from kstap.sampling.kernel_table import KernelFlowTable, Layout
table = KernelFlowTable(0x5EED, 0.5)
for kind in ("ethernet", "sll", "sll2", "network"):
    for expression in ("", "tcp and (port 80 or port 8080)", "udp or icmp6", "vlan and tcp"):
        import os
        os.close(table.program(compile_filter(expression).insns, Layout(kind)))
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
    table.attach(s, compile_filter("udp").insns, 1)
print("loaded")
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_a_worker_with_only_net_raw_and_bpf_loads_it() -> None:
    """The cluster's auto-mode worker holds NET_RAW and BPF and nothing else (kstap/kube/manifests.py). The
    verifier then applies its unprivileged hardening (no CAP_PERFMON): e.g. no variable offset into a map
    value. The real cluster found this (BPF_PROG_LOAD: Permission denied); every layout and a few
    filters must load with exactly those capabilities."""
    caps = ["setpriv", "--bounding-set=-all,+net_raw,+bpf", "--inh-caps=-all", "--"]
    check = subprocess.run([*caps, "grep", "CapEff", "/proc/self/status"], capture_output=True, text=True, check=True)
    assert int(check.stdout.split()[1], 16) == (1 << 13) | (1 << 39), check.stdout  # CAP_NET_RAW | CAP_BPF
    res = subprocess.run([*caps, sys.executable, "-c", LOAD_AS_WORKER], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "loaded", res.stderr[-3000:]


def test_a_kernel_that_refuses_the_program_means_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto mode falls back to the classic ceiling with the verifier's reason when the program will not load
    (an older verifier, missing capabilities); `sampling.flow_table = kernel` stops with exit 3 instead."""
    from kstap.errors import EnvironmentProblem
    from kstap.sampling.kernel_table import open_table

    log = ("0: (bf) r6 = r1\nR0 tried to add from different maps, paths or scalars\n"
           "processed 201 insns (limit 1000000)\n")

    def refuse(self: KernelFlowTable, insns: object, layout: Layout) -> int:
        raise bpf_syscall.BpfError(13, "BPF_PROG_LOAD", log)

    monkeypatch.setattr(KernelFlowTable, "program", refuse)
    table, reason = open_table("auto", 1, 0.5, idle_timeout_ns=10**9)
    assert table is None
    assert reason == "the kernel refused the flow-table program: R0 tried to add from different maps, paths or scalars"
    with pytest.raises(EnvironmentProblem, match="R0 tried to add"):
        open_table("kernel", 1, 0.5, idle_timeout_ns=10**9)
    kernel = KernelFlowTable(1, 1.0)
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s, pytest.raises(EnvironmentProblem) as err:
            kernel.attach(s, compile_filter("udp").insns, 1)
        assert err.value.hint and "flow_table = user" in err.value.hint
    finally:
        kernel.close()
