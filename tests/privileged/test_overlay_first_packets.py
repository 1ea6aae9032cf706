"""Overlay traffic through real Linux tunnels: one ``flow`` comment per kept pod flow, with its hash.

Two namespaces joined by a lab veth (the "underlay", as between two nodes), a real ``vxlan`` device
(UDP 4789) and a real ``geneve`` device (UDP 6081) in each over it, addresses on the overlays.
Real peers send through the overlays: a UDP client (one socket per flow, fixed source ports) to an
echo server, and ``curl`` to Python's ``http.server``. kstap captures on the underlay veth, where
every packet is a tunnel datagram between the same two addresses, in percentage mode (the kernel's
classic tail decides, ``kstap tap`` as users run it) and in auto mode with the in-kernel flow table
(where the first-packet bound must stay on). tshark reads the file back: the inner flows present are
exactly those whose inner hash is under the rate, each has exactly one comment, on its first packet,
naming that inner hash.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from kstap import pipeline
from kstap.capture import afpacket
from kstap.config import OutputSettings, TapSettings
from kstap.demo.lab import Lab, _ip
from kstap.filters import bpf_syscall
from kstap.sampling.flowhash import flow_hash, keeps
from kstap.sampling.flowkey import FlowKey
from tests.privileged.procs import UDP_ECHO
from tests.privileged.test_sessions_across_rate_changes import Quiet, Scripted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or afpacket.encode_block_sampled is None or
                                shutil.which("curl") is None, reason="needs root, the C fast path and curl")

SEED = 0x0E1A
RATE = 0.5
OVERLAYS = {
    # name: (link, second octet of its 10.X.<lab subnet>.0/24, `ip link add` type arguments, over which link)
    "vxlan": ("kvx0", 214, ["vxlan", "id", "42", "dstport", "4789"], None),
    "flannel": ("kvx1", 215, ["vxlan", "id", "1", "dstport", "8472"], None),  # flannel's (Linux's) port
    "nested": ("kvx2", 216, ["vxlan", "id", "44", "dstport", "4789"], "vxlan"),  # VXLAN in VXLAN
    "geneve": ("kgn0", 217, ["geneve", "id", "43"], None),
}
"""The overlays over the lab's veth pair (addresses only inside the lab)."""
UDP_FLOWS, TCP_FLOWS = 6, 2
"""Per overlay: UDP flows (half from the start, half 2 s later) and TCP connections (one in each half)."""

CLIENT = r"""
import json, socket, sys, time
plan = json.loads(sys.argv[1])
# plan: [server, source port, start s, stop s]: one datagram every 50 ms per flow
start, socks = time.monotonic(), {}
last = max(end for _, _, _, end in plan)
while time.monotonic() - start < last:
    now = time.monotonic() - start
    for server, port, begin, end in plan:
        if begin <= now < end:
            if port not in socks:
                socks[port] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks[port].bind(("0.0.0.0", port))
            socks[port].sendto(b"kstap-overlay-test", (server, 9999))
    time.sleep(0.05)
print("DONE", flush=True)
"""


class Overlays:
    """A lab whose two ends are joined by the :data:`OVERLAYS` the kernel has (a kernel without the
    geneve driver leaves that one out)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.kinds: list[str] = []
        for kind, (link, _, args, over) in OVERLAYS.items():
            ends = [(lab.client, lab.client_if, 1, 2), (lab.server, lab.server_if, 2, 1)]
            for n, (ns, dev, host, peer) in enumerate(ends):
                local, remote = ((lab.client_ip, lab.server_ip) if host == 1 else (lab.server_ip, lab.client_ip))
                if over is not None:
                    local, remote, dev = self.ip(over, host), self.ip(over, peer), OVERLAYS[over][0]
                r = subprocess.run(["ip", "-n", ns, "link", "add", link, "type", *args, "remote", remote,
                                    *(["local", local, "dev", dev] if args[0] == "vxlan" else [])],
                                   capture_output=True, text=True, timeout=10)
                if r.returncode != 0 and n == 0 and "Unknown device type" in r.stderr:
                    break  # this kernel has no such driver
                assert r.returncode == 0, r.stderr
                _ip("-n", ns, "link", "set", link, "addrgenmode", "none")  # no IPv6 chatter on the overlay
                _ip("-n", ns, "addr", "add", f"{self.ip(kind, host)}/24", "dev", link)
                _ip("-n", ns, "link", "set", link, "up")
            else:
                self.kinds.append(kind)
        assert "nested" in self.kinds

    def ip(self, kind: str, host: int) -> str:
        return f"10.{OVERLAYS[kind][1]}.{self.lab.subnet}.{host}"

    def ports(self, kind: str, proto: int) -> range:
        first = (20000 if proto == 17 else 30000) + 100 * list(OVERLAYS).index(kind)
        return range(first, first + (UDP_FLOWS if proto == 17 else TCP_FLOWS))

    def inner_flows(self) -> dict[FlowKey, str]:
        """Every inner flow the peers open, and what it is."""
        flows = {}
        for kind in self.kinds:
            a, b = (ipaddress.ip_address(self.ip(kind, h)).packed for h in (1, 2))
            for proto, server_port in ((17, 9999), (6, 8080)):
                for port in self.ports(kind, proto):
                    flows[FlowKey(proto, a, port, b, server_port)] = f"{proto}/{kind}/{port}"
        return flows

    def start_servers(self, lifetime: float) -> None:
        lab = self.lab
        echo = lab.spawn(lab.server, [sys.executable, "-c", UDP_ECHO, "0.0.0.0", str(lifetime)],
                         stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        lab.spawn(lab.server, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run_peers(self) -> None:
        """UDP flows starting at 0 s and at 2 s, running to 5 s; TCP connections at 0.5 s and at 2.5 s."""
        lab = self.lab
        wait_for_http(lab)
        plan = [(self.ip(kind, 2), port, 0.0 if i % 2 == 0 else 2.0, 5.0)
                for kind in self.kinds for i, port in enumerate(self.ports(kind, 17))]
        start = time.monotonic()
        client = lab.spawn(lab.client, [sys.executable, "-c", CLIENT, json.dumps(plan)], stdout=subprocess.PIPE,
                           text=True)
        for batch, at in enumerate((0.5, 2.5)):
            time.sleep(max(0.0, start + at - time.monotonic()))
            for kind in self.kinds:
                for port in self.ports(kind, 6)[batch::2]:
                    curl = lab.spawn(lab.client, ["curl", "-s", "-o", "/dev/null", "--max-time", "5",
                                                  "--local-port", str(port), f"http://{self.ip(kind, 2)}:8080/"])
                    assert curl.wait(timeout=10) == 0, f"curl from port {port}"
        assert client.wait(timeout=30) == 0


def wait_for_http(lab: Lab) -> None:
    """The HTTP server listens (probed on the server's loopback: nothing crosses the underlay)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = lab.spawn(lab.server, ["curl", "-s", "-o", "/dev/null", "--max-time", "1", "http://127.0.0.1:8080/"])
        if probe.wait(timeout=5) == 0:
            return
        time.sleep(0.1)
    raise AssertionError("http.server did not come up")


def inner_packets(path: Path) -> list[tuple[int, FlowKey | None, str]]:
    """(frame number, the innermost flow as tshark decodes it or None, comment) of every frame."""
    res = subprocess.run(["tshark", "-r", str(path), "-d", "udp.port==8472,vxlan", "-T", "fields", "-E", "occurrence=l",
                          "-e", "frame.number", "-e", "frame.comment", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto",
                          "-e", "udp.srcport", "-e", "udp.dstport", "-e", "tcp.srcport", "-e", "tcp.dstport",
                          "-e", "arp.opcode", "-e", "vxlan.vni", "-e", "geneve.vni"],
                         capture_output=True, text=True, timeout=120, check=True)
    out = []
    for line in res.stdout.splitlines():
        number, comment, src, dst, proto, usp, udp_, tsp, tdp, arp, vni, gvni = [*line.split("\t"), *[""] * 12][:12]
        assert vni or gvni, line  # every frame on the underlay is a tunnel datagram
        key = None
        if not arp and proto in ("6", "17"):
            sp, dp = (tsp, tdp) if proto == "6" else (usp, udp_)
            ends = sorted([(ipaddress.ip_address(src).packed, int(sp)), (ipaddress.ip_address(dst).packed, int(dp))])
            key = FlowKey(int(proto), *ends[0], *ends[1])
        out.append((int(number), key, comment))
    return out


def assert_kept_flows_commented_once_with_the_inner_hash(path: Path, overlays: Overlays) -> None:
    expected = overlays.inner_flows()
    per_flow: dict[FlowKey, list[tuple[int, str]]] = defaultdict(list)
    for number, key, comment in inner_packets(path):
        if key is None:
            assert not comment, number  # an inner ARP frame: a valid tunnel, no flow, no comment
            continue
        per_flow[key].append((number, comment))
    kept = {key for key in expected if keeps(flow_hash(key, SEED), RATE)}
    assert kept and kept != set(expected), "the seed should split the flows"
    assert set(per_flow) == kept, {expected.get(k, str(k)) for k in set(per_flow) ^ kept}
    for key, packets in per_flow.items():
        commented = [(n, c) for n, c in packets if c]
        assert len(commented) == 1, (expected[key], commented)
        assert commented[0][0] == packets[0][0], expected[key]  # on its first packet in the file
        assert commented[0][1].startswith(f"kstap: flow id={flow_hash(key, SEED):08x} "), (expected[key], commented)


def test_percentage_mode_comments_each_kept_pod_flow_once_with_its_inner_hash(harness: Any, tmp_path: Path) -> None:
    out = tmp_path / "overlay.pcapng"
    overlays = Overlays(harness.lab)
    overlays.start_servers(lifetime=40)
    tap = harness.kstap(out, "-f", "udp", "--mode", "percentage", "--rate", str(RATE), "--seed", str(SEED),
                        "--duration", "8")
    overlays.run_peers()
    assert tap.wait() == 0, tap.stderr
    assert_kept_flows_commented_once_with_the_inner_hash(out, overlays)


@pytest.mark.skipif(bpf_syscall.probe() is not None, reason="needs BPF maps")
def test_auto_mode_keeps_the_bound_on_overlay_traffic(lab: Lab, tmp_path: Path) -> None:
    """The kernel flow table decides the pod flows; the encoder keys them alike, so its bound stays on
    (no key cut, packets past it skipped) and still every kept pod flow has one comment."""
    out = tmp_path / "overlay-auto.pcapng"
    calls: list[tuple[int, tuple[object, ...]]] = []
    real = afpacket.encode_block_sampled
    assert real is not None

    def spy(*args: object) -> tuple[object, ...]:
        result = tuple(real(*args))
        calls.append((int(args[13]), result))  # type: ignore[call-overload]
        return result

    overlays = Overlays(lab)
    overlays.start_servers(lifetime=40)
    settings = TapSettings(interfaces=[lab.server_if], netns=lab.server, duration=9.0, bpf_filter="udp",
                           output=OutputSettings(path=str(out)))
    smp = settings.sampling
    smp.mode, smp.rate, smp.seed, smp.flow_table = "auto", RATE, SEED, "kernel"
    reporter = Quiet()
    failures: list[BaseException] = []

    def peers() -> None:
        try:
            reporter.listening_at.wait(20)
            overlays.run_peers()
        except BaseException as e:  # reported by the test thread below
            failures.append(e)

    thread = threading.Thread(target=peers, daemon=True)
    thread.start()
    afpacket.encode_block_sampled = spy
    try:
        summary = pipeline.run_tap(settings, reporter, governor=Scripted([(0.0, RATE, "pi")]))
    finally:
        afpacket.encode_block_sampled = real
    thread.join(timeout=30)
    assert not failures, failures
    assert summary.dropped == 0
    assert_kept_flows_commented_once_with_the_inner_hash(out, overlays)
    packets = sum(int(r[1]) for _, r in calls)  # type: ignore[call-overload]
    keyed = sum(int(r[6]) for _, r in calls)  # type: ignore[call-overload]
    assert sum(int(r[7]) for _, r in calls) == 0  # type: ignore[call-overload] # no key cut by the snaplen
    assert all(bound != afpacket.NO_BOUND for bound, _ in calls[len(calls) // 2:])  # the bound stayed on
    assert keyed < packets // 2, (keyed, packets)  # most overlay packets skipped the table
