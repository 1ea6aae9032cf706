"""Auto mode with the kernel flow table: packets stamped after the kernel's newest new-flow decision
skip the user-space first-packet table, and still every flow in the file has exactly one ``flow``
comment, on its first packet; tshark reads the comments back.

Real UDP traffic on a lab veth (a Python client, an echo server): flows that start all at once, flows
that start while others keep a block busy, a flow that starts after a long quiet period, and, with a
2 s idle timeout, long-lived flows whose packets skipped the table across the table's expiry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from kstap import pipeline
from kstap.capture import afpacket
from kstap.config import OutputSettings, TapSettings
from kstap.demo.lab import Lab
from kstap.filters import bpf_syscall
from tests.privileged.procs import UDP_ECHO
from tests.privileged.test_sessions_across_rate_changes import Quiet, Scripted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or bpf_syscall.probe() is not None or
                                afpacket.encode_block_sampled is None,
                                reason="needs root, BPF maps and the C fast path")

CLIENT = r"""
import json, socket, sys, time
server, plan = sys.argv[1], json.loads(sys.argv[2])
# plan: [start s, stop s, flows, interval s]: each flow is its own socket (source port), sending one
# datagram every interval from start to stop
start = time.monotonic()
flows = []
for begin, end, count, every in plan:
    for _ in range(count):
        flows.append({"begin": begin, "end": end, "every": every, "next": begin, "sock": None})
last = max(f["end"] for f in flows)
while time.monotonic() - start < last:
    now = time.monotonic() - start
    for f in flows:
        if f["begin"] <= now < f["end"] and now >= f["next"]:
            if f["sock"] is None:
                f["sock"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            f["sock"].sendto(b"kstap-first-packet-test", (server, 9999))
            f["next"] += f["every"]
    time.sleep(0.002)
print("DONE", flush=True)
"""


def capture(tmp_path: Path, plan: list[tuple[float, float, int, float]], duration: float,
            idle_timeout: float = 60.0) -> tuple[Path, list[int]]:
    """Run auto mode at rate 1 with the kernel flow table while the client plays ``plan``; returns the
    file and the lookup bounds the encoder was given."""
    out = tmp_path / "first.pcapng"
    bounds: list[int] = []
    real = afpacket.encode_block_sampled
    assert real is not None

    def spy(*args: object) -> tuple[object, ...]:
        bounds.append(int(args[13]))  # type: ignore[call-overload]
        return tuple(real(*args))

    with Lab() as lab:
        echo = lab.spawn(lab.server, [sys.executable, "-c", UDP_ECHO, lab.server_ip, str(duration + 20)],
                         stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        settings = TapSettings(interfaces=[lab.server_if], netns=lab.server, duration=duration, bpf_filter="udp",
                               output=OutputSettings(path=str(out)))
        smp = settings.sampling
        smp.mode, smp.rate, smp.seed, smp.flow_table, smp.idle_timeout = "auto", 1.0, 0x13, "kernel", idle_timeout
        reporter = Quiet()
        client: list[subprocess.Popen[str]] = []

        def start_client() -> None:
            reporter.listening_at.wait(20)
            client.append(lab.spawn(lab.client, [sys.executable, "-c", CLIENT, lab.server_ip, json.dumps(plan)],
                                    stdout=subprocess.PIPE, text=True))

        threading.Thread(target=start_client, daemon=True).start()
        afpacket.encode_block_sampled = spy
        try:
            summary = pipeline.run_tap(settings, reporter, governor=Scripted([(0.0, 1.0, "pi")]))
        finally:
            afpacket.encode_block_sampled = real
        assert client and client[0].wait(timeout=30) == 0
    assert summary.dropped == 0
    return out, bounds


def flows_and_comments(path: Path) -> dict[str, list[tuple[int, str]]]:
    """Per UDP flow (tshark's udp.stream): (frame number, comment) of each of its packets."""
    res = subprocess.run(["tshark", "-r", str(path), "-Y", "udp", "-T", "fields", "-e", "frame.number",
                          "-e", "udp.stream", "-e", "frame.comment"], capture_output=True, text=True,
                         timeout=120, check=True)
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for line in res.stdout.splitlines():
        number, stream, comment = [*line.split("\t"), "", ""][:3]
        out[stream].append((int(number), comment))
    return out


def assert_one_comment_per_flow_on_its_first_packet(path: Path, flows: int) -> None:
    per_flow = flows_and_comments(path)
    assert len(per_flow) == flows
    for stream, packets in per_flow.items():
        commented = [(n, c) for n, c in packets if c]
        assert len(commented) == 1, (stream, commented)
        assert commented[0][0] == min(n for n, _ in packets), stream
        assert commented[0][1].startswith("kstap: flow id=")


def test_every_flow_gets_one_comment_while_most_packets_skip_the_table(tmp_path: Path) -> None:
    plan = [(0.0, 5.5, 40, 0.05),   # 40 flows at once, long-lived
            (2.0, 5.5, 40, 0.05),   # 40 more at once, 2 s later, among the first ones' packets
            (2.5, 5.5, 1, 0.05),    # a lone one
            (7.0, 7.5, 1, 0.05)]    # after 1.5 s with no packet at all
    path, bounds = capture(tmp_path, plan, duration=9.0)
    assert_one_comment_per_flow_on_its_first_packet(path, 82)
    assert_packets_skipped(path, bounds)


def assert_packets_skipped(path: Path, bounds: list[int]) -> None:
    """The kernel's word was used, and packets skipped the table: even the latest bound (the last flow's
    start + the margin) is well before the last packets."""
    given = [b for b in bounds if b != afpacket.NO_BOUND]
    assert given
    stamps = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
                            capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert max(given) < int(float(stamps[-1]) * 1e9) - 300_000_000


def test_expiry_keeps_flows_whose_packets_skipped_the_table(tmp_path: Path) -> None:
    """Idle timeout 2 s: the table's expiry at 10 s finds the first flows idle by its own clock (their
    packets all skipped it); the kernel saw them, so they stay, and the new flows at 11 s (whose start
    makes the old flows' packets be looked up again) give the old ones no second comment."""
    plan = [(0.0, 12.5, 30, 0.2), (11.2, 12.5, 10, 0.2)]
    path, bounds = capture(tmp_path, plan, duration=14.0, idle_timeout=2.0)
    assert_one_comment_per_flow_on_its_first_packet(path, 40)
    assert_packets_skipped(path, bounds)
