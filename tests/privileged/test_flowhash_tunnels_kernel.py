"""What counts as a tunnel, decided by the kernel itself: every case of
``tests/unit/sampling/test_flowhash_tunnels.py`` crosses a veth pair and the sampling tail, attached
with SO_ATTACH_FILTER to a real AF_PACKET socket (SOCK_RAW, and SOCK_DGRAM as ``-i any`` opens it),
keeps or drops it as the Python flow key says; and the in-kernel flow table's eBPF program (auto
mode) decides each case the same way (BPF_PROG_TEST_RUN).

The frames are malformed on purpose (no real peer sends a truncated Geneve header), so they are
built with dpkt and sent from a packet socket on the lab's client end; their outer addresses are the
lab's own and their destination MAC is no one's, so the server's stack drops them after the
capture point. Each is followed by a non-IP marker frame (always kept): the case frame was dropped
iff the marker arrives without it. Frames the kernel cannot send or hands the filter changed (shorter
than an Ethernet header, an outer VLAN tag it takes off) are left to the unit test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kstap.demo.lab import Lab
from kstap.filters import bpf_syscall
from kstap.filters.bpf import compile_filter
from kstap.sampling.flowhash import FULL, splice_threshold
from kstap.sampling.kernel_table import KernelFlowTable, Layout
from tests.unit.sampling.test_flowhash_tunnels import CASES, SEED, cooked_view, thresholds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, packet sockets)")

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import ctypes, json, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)

def enter(ns):
    fd = os.open("/run/netns/" + ns, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns " + ns)
    os.close(fd)

cfg = json.load(sys.stdin)
enter(cfg["client"])
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # created here, it stays in the client's namespace
tx.bind((cfg["client_if"], 0))
enter(cfg["server"])
out = []
for kind, rounds in cfg["layouts"].items():
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if kind == "cooked" else socket.SOCK_RAW,
                       socket.htons(3))  # ETH_P_ALL
    rx.bind((cfg["server_if"], 0))
    rx.settimeout(5.0)
    for n, (insns, frame) in enumerate(rounds):
        code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))  # struct sock_filter[]
        rx.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", len(insns), ctypes.addressof(code)))  # SO_ATTACH_FILTER
        frame = bytes.fromhex(frame)
        marker = frame[:12] + b"\x88\xb5" + b"kstap-marker-%s-%d" % (kind.encode(), n)
        want, end = (frame, marker) if kind == "raw" else (frame[14:], marker[14:])
        tx.send(frame)
        tx.send(marker)
        seen = False
        while True:
            got = rx.recv(65536)
            if got == end:
                break
            seen = seen or got == want
        out.append(seen)
    rx.close()
print(json.dumps(out))
"""


def test_the_kernel_keeps_or_drops_each_case_like_python() -> None:
    user = compile_filter("").insns
    layouts: dict[str, list[tuple[list[tuple[int, int, int, int]], str]]] = {"raw": [], "cooked": []}
    expected: list[tuple[str, str, int, bool]] = []
    for kind in layouts:
        for name, (frame, flow) in sorted(CASES.items()):
            if cooked_view(frame) is None:
                continue
            for thresh, kept in thresholds(flow):
                insns = splice_threshold(user, SEED, thresh, cooked=kind == "cooked").insns
                layouts[kind].append(([tuple(i) for i in insns], frame.hex()))  # type: ignore[misc]
                expected.append((kind, name, thresh, kept))
    with Lab(subnet=94) as lab:
        cfg = {"client": lab.client, "server": lab.server, "client_if": lab.client_if, "server_if": lab.server_if,
               "layouts": layouts}
        r = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(cfg), capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert len(seen) == len(expected) > 100
    wrong = [case for case, got in zip(expected, seen, strict=True) if got != case[3]]
    assert not wrong, wrong


@pytest.mark.skipif(bpf_syscall.probe() is not None, reason="needs CAP_BPF and BPF maps")
def test_the_kernel_flow_table_decides_each_case_like_python() -> None:
    """A test run hands the filter the packet from its network header, the protocol from the Ethernet
    header: the layout of a cooked socket. Each round is a new flow in a fresh table. A test run
    refuses (EINVAL) an outer IP header shorter than its fixed size: those two cases are left to the
    socket test above, whose classic tail is the very code the table translates."""
    wrong = []
    for name, (frame, flow) in sorted(CASES.items()):
        view = cooked_view(frame)
        if view is None or len(view[1]) < {0x0800: 20, 0x86DD: 40}.get(view[0], 0):
            continue
        for thresh, kept in thresholds(flow):
            table = KernelFlowTable(SEED, thresh / FULL, max_flows=16)
            try:
                assert table.threshold == thresh
                fd = table.program(compile_filter("").insns, Layout("network"))
                try:
                    if (bpf_syscall.test_run(fd, frame) != 0) != kept:
                        wrong.append((name, thresh, kept))
                finally:
                    os.close(fd)
            finally:
                table.close()
    assert not wrong, wrong
