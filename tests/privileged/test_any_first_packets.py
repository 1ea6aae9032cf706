"""``-i any`` (the cooked socket DaemonSet workers capture) on the C path: first-packet comments in
percentage and auto mode, and --entries, on real traffic.

A lab veth pair; in the server namespace an echo server (UDP, one socket per client flow) and
Python's ``http.server`` with ``curl`` connections (fixed source ports) from the client namespace.
kstap captures ``-i any`` there: percentage mode as users run it (``kstap tap``), auto mode with the
in-kernel flow table in process (the encoder is spied on: the lookup bound must be on and most
packets skip the table), and full mode with --entries, whose entries must be those the Python path
gives on the same file (``kstap dissect``). tshark reads the files back: the flows present are
exactly those whose hash is under the rate, each whole (TCP: its SYN and its FIN), with exactly one
comment, on its first packet, naming the hash kstap's Python key gives the frame.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from kstap import pipeline
from kstap.capture import cooked
from kstap.capture.afpacket import NO_BOUND
from kstap.config import OutputSettings, TapSettings
from kstap.demo.lab import Lab
from kstap.filters import bpf_syscall
from kstap.formats.savefile import CaptureReader
from kstap.sampling.flowhash import flow_hash, keeps
from kstap.sampling.flowkey import FlowKey, flow_key
from tests.privileged.procs import UDP_ECHO
from tests.privileged.test_overlay_first_packets import CLIENT, wait_for_http
from tests.privileged.test_sessions_across_rate_changes import Quiet, Scripted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or cooked.encode_cooked_block_sampled is None or
                                shutil.which("curl") is None, reason="needs root, the C fast path and curl")

SEED = 0xA11
RATE = 0.5
UDP_PORTS = range(21000, 21040)
TCP_PORTS = range(31000, 31010)
FILTER = "udp port 9999 or tcp port 8080"
SLL2 = 276



def start_servers(lab: Lab, lifetime: float) -> None:
    echo = lab.spawn(lab.server, [sys.executable, "-c", UDP_ECHO, "0.0.0.0", str(lifetime)],
                     stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
    lab.spawn(lab.server, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_http(lab)


def run_peers(lab: Lab) -> None:
    """UDP flows from 0 s and from 2 s to 4.5 s; curl connections at 0.5 s and at 2.5 s."""
    plan = [(lab.server_ip, port, 0.0 if i % 2 == 0 else 2.0, 4.5) for i, port in enumerate(UDP_PORTS)]
    start = time.monotonic()
    client = lab.spawn(lab.client, [sys.executable, "-c", CLIENT, json.dumps(plan)],
                       stdout=subprocess.PIPE, text=True)
    for batch, at in enumerate((0.5, 2.5)):
        time.sleep(max(0.0, start + at - time.monotonic()))
        for port in TCP_PORTS[batch::2]:
            curl = lab.spawn(lab.client, ["curl", "-s", "-o", "/dev/null", "--max-time", "5", "--local-port",
                                          str(port), f"http://{lab.server_ip}:8080/"])
            assert curl.wait(timeout=10) == 0, f"curl from port {port}"
    assert client.wait(timeout=30) == 0


def lab_flows(lab: Lab) -> set[FlowKey]:
    a, b = (ipaddress.ip_address(ip).packed for ip in (lab.client_ip, lab.server_ip))
    return ({FlowKey(17, a, port, b, 9999) for port in UDP_PORTS} |
            {FlowKey(6, a, port, b, 8080) for port in TCP_PORTS})


def packets(path: Path) -> list[tuple[int, FlowKey, str, str]]:
    """(frame number, the flow as tshark decodes it, comment, TCP flags) of every IP frame."""
    res = subprocess.run(["tshark", "-r", str(path), "-Y", "ip", "-T", "fields", "-e", "frame.number",
                          "-e", "frame.comment", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto", "-e", "udp.srcport",
                          "-e", "udp.dstport", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags"],
                         capture_output=True, text=True, timeout=120, check=True)
    out = []
    for line in res.stdout.splitlines():
        number, comment, src, dst, proto, usp, udp_, tsp, tdp, flags = [*line.split("\t"), *[""] * 10][:10]
        sp, dp = (tsp, tdp) if proto == "6" else (usp, udp_)
        ends = sorted([(ipaddress.ip_address(src).packed, int(sp)), (ipaddress.ip_address(dst).packed, int(dp))])
        out.append((int(number), FlowKey(int(proto), *ends[0], *ends[1]), comment, flags))
    return out


def assert_kept_flows_whole_and_commented_once(path: Path, lab: Lab, rate: float) -> None:
    frames = [rec[3] for rec, _ in CaptureReader(path.open("rb"), str(path))]
    per_flow: dict[FlowKey, list[tuple[int, str, str]]] = defaultdict(list)
    for number, key, comment, flags in packets(path):
        assert flow_key(frames[number - 1], SLL2) == key  # kstap's Python key of the SLL2 frame: tshark's
        per_flow[key].append((number, comment, flags))
    expected = lab_flows(lab)
    kept = {key for key in expected if keeps(flow_hash(key, SEED), rate)}
    assert kept and (rate == 1.0 or kept != expected), "the seed should split the flows"
    assert set(per_flow) == kept, set(per_flow) ^ kept
    for key, pkts in per_flow.items():
        commented = [(n, c) for n, c, _ in pkts if c]
        assert len(commented) == 1, (key, commented)
        assert commented[0][0] == pkts[0][0], key  # on its first packet in the file
        assert commented[0][1].startswith(f"kstap: flow id={flow_hash(key, SEED):08x} "), (key, commented)
        if key.proto == 6:  # whole: from the SYN to the FIN
            flags = [int(f, 16) for _, _, f in pkts]
            assert flags[0] & 0x12 == 0x02 and any(f & 0x01 for f in flags), key


def test_percentage_mode_on_any_comments_each_kept_flow_once(harness: Any, tmp_path: Path) -> None:
    out = tmp_path / "any-percentage.pcapng"
    start_servers(harness.lab, lifetime=40)
    tap = harness.kstap(out, "-f", FILTER, "--mode", "percentage", "--rate", str(RATE), "--seed", str(SEED),
                        "--duration", "7", iface="any")
    run_peers(harness.lab)
    assert tap.wait() == 0, tap.stderr
    assert_kept_flows_whole_and_commented_once(out, harness.lab, RATE)


class Spy:
    """The cooked sampled encoder, counting what it was given and gave."""

    def __init__(self) -> None:
        self.real = cooked.encode_cooked_block_sampled
        assert self.real is not None
        self.calls: list[tuple[int, bool, tuple[Any, ...]]] = []

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        assert self.real is not None
        result = tuple(self.real(*args))
        self.calls.append((int(args[14]) if len(args) > 14 else NO_BOUND, args[7] is not None, result))
        return result

    def __enter__(self) -> Spy:
        cooked.encode_cooked_block_sampled = self
        return self

    def __exit__(self, *exc: object) -> None:
        cooked.encode_cooked_block_sampled = self.real


def run_in_process(lab: Lab, settings: TapSettings, rate: float) -> Spy:
    reporter = Quiet()
    failures: list[BaseException] = []

    def peers() -> None:
        try:
            reporter.listening_at.wait(20)
            run_peers(lab)
        except BaseException as e:  # reported by the test thread below
            failures.append(e)

    thread = threading.Thread(target=peers, daemon=True)
    thread.start()
    with Spy() as spy:
        summary = pipeline.run_tap(settings, reporter, governor=Scripted([(0.0, rate, "pi")]))
    thread.join(timeout=30)
    assert not failures, failures
    assert summary.dropped == 0
    assert spy.calls, "the cooked C path was not used"
    return spy


@pytest.mark.skipif(bpf_syscall.probe() is not None, reason="needs BPF maps")
def test_auto_mode_on_any_keeps_the_bound_on(lab: Lab, tmp_path: Path) -> None:
    """The kernel flow table decides on -i any too: the bound is given, most packets skip the table,
    and every kept flow still has its one comment with the kernel's hash."""
    out = tmp_path / "any-auto.pcapng"
    start_servers(lab, lifetime=40)
    settings = TapSettings(interfaces=["any"], netns=lab.server, duration=7.0, bpf_filter=FILTER,
                           output=OutputSettings(path=str(out)))
    smp = settings.sampling
    smp.mode, smp.rate, smp.seed, smp.flow_table = "auto", RATE, SEED, "kernel"
    spy = run_in_process(lab, settings, RATE)
    assert all(with_table for _, with_table, _ in spy.calls)
    assert_kept_flows_whole_and_commented_once(out, lab, RATE)
    written = sum(int(r[1]) for _, _, r in spy.calls)
    keyed = sum(int(r[8]) for _, _, r in spy.calls)
    assert sum(int(r[9]) for _, _, r in spy.calls) == 0  # no key cut by the snaplen
    assert all(bound != NO_BOUND for bound, _, _ in spy.calls[len(spy.calls) // 2:])  # the bound stayed on
    assert keyed < written // 2, (keyed, written)  # most packets skipped the table


def test_entries_on_any_are_the_python_paths(lab: Lab, tmp_path: Path) -> None:
    """Full mode with --entries on -i any: C writes every packet and hands the dissectors theirs; the
    entries are those ``kstap dissect`` (the Python path, every packet) finds in the same file."""
    out, entries = tmp_path / "any-entries.pcapng", tmp_path / "live.ndjson"
    start_servers(lab, lifetime=40)
    settings = TapSettings(interfaces=["any"], netns=lab.server, duration=7.0, bpf_filter=FILTER,
                           output=OutputSettings(path=str(out)), entries=str(entries))
    spy = run_in_process(lab, settings, 1.0)
    assert not any(with_table for _, with_table, _ in spy.calls)  # full mode: records, no comments
    offline = subprocess.run([sys.executable, "-m", "kstap", "dissect", str(out), "--entries", "-"],
                             capture_output=True, text=True, timeout=120, check=True)

    def exchanges(lines: list[str]) -> list[dict[str, Any]]:
        """The entries without their flow ids (each run hashes with its own random seed)."""
        out = [json.loads(line) for line in lines if line.strip()]
        for e in out:
            e.pop("flow_id")
        return sorted(out, key=lambda e: json.dumps(e, sort_keys=True))

    live = exchanges(entries.read_text().splitlines())
    http = [e for e in live if e["protocol"].startswith("http") and e["status"] == 200]
    assert len(http) == len(live) == len(TCP_PORTS), live[:3]  # one GET / per curl
    assert live == exchanges(offline.stdout.splitlines())


def test_a_worker_on_any_in_percentage_mode_streams_the_comments(harness: Any, tmp_path: Path) -> None:
    """``kstap worker -i any --mode percentage`` (a node's DaemonSet worker): its C encoder's comments
    cross the stream (the EPBs become BATCH records) into the attached capture's file."""
    from kstap.contracts import relay
    from kstap.remote.client import RemoteSource
    from tests.privileged.test_any_node import Collect, start_any_worker

    lab = harness.lab
    start_servers(lab, lifetime=40)
    worker, io, endpoint = start_any_worker(tmp_path, lab.server, lab.procs, "--bpf-filter", FILTER, "--mode",
                                            "percentage", "--rate", str(RATE), "--seed", str(SEED))
    out = tmp_path / "remote.pcapng"
    reporter = Collect()
    source = RemoteSource([endpoint], on_event=relay(reporter))
    stop = pipeline.StopFlag()
    settings = TapSettings(interfaces=["(cluster)"], output=OutputSettings(path=str(out)))
    runner = threading.Thread(target=lambda: pipeline.run_tap(settings, reporter, stop, source=source))
    runner.start()
    try:
        assert reporter.ready.wait(20)
        run_peers(lab)
        time.sleep(1.0)
    finally:
        stop.set()
        runner.join(30)
        source.close()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0, "".join(io.err)
    assert_kept_flows_whole_and_commented_once(out, lab, RATE)
