"""``-i any`` on a node-shaped namespace: pods come and go, every packet is written exactly once.

A :class:`~kstap.demo.node.NodeLab` is a "node" namespace with one namespace per "pod" (bridge CNI
layout, or routed layout with per-pod host routes and no bridge). A real DNS responder
(kstap.demo.traffic) answers numbered queries from pods, some created after the capture started,
while another pod is deleted mid-capture. Every numbered query and response must be in the file
once (tshark reads it) and in the entries once; the copies the node's other interfaces saw are
counted as removed duplicates; the interface changes are in the alerts, the packet comments and the
statistics block. Every namespace and process is removed by name / PID, pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kstap import pipeline
from kstap.config import OutputSettings, TapSettings
from kstap.contracts import AlertRaised, Event, relay
from kstap.demo.node import NodeLab
from kstap.model import CaptureSummary, Interface, StatsSnapshot
from kstap.remote.client import RemoteSource, WorkerEndpoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ROOT = Path(__file__).resolve().parents[2]
PER_POD = 15

CLIENT = r"""
import socket, sys
from kstap.demo.traffic import dns_query
dst, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
answered = 0
for i in range(first, first + n):
    s.sendto(dns_query(f"n{i:05d}.kstap.test", i), (dst, 53))
    try:
        s.recv(4096)
        answered += 1
    except socket.timeout:
        pass
print(answered, flush=True)
"""


def nsenter(ns: str, *argv: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], env=env, text=True, **kw)  # type: ignore[call-overload]


class Node:
    """A NodeLab with a DNS responder in pod 1, and helpers that send numbered queries."""

    def __init__(self, lab: NodeLab) -> None:
        self.lab = lab
        self.procs: list[subprocess.Popen[str]] = []
        server = lab.add_pod(1)
        self.server_ip = server.ip
        p = nsenter(server.ns, sys.executable, "-m", "kstap.demo.traffic", "serve", "--address", server.ip,
                    "--lifetime", "90", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        self.sent: list[int] = []

    def queries(self, pod: int, first: int, n: int = PER_POD) -> None:
        ns = self.lab.pods[pod].ns
        p = nsenter(ns, sys.executable, "-c", CLIENT, self.server_ip, str(first), str(n), stdout=subprocess.PIPE)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and int(out) == n, f"pod {pod}: {out!r} answers of {n}"
        self.sent.extend(range(first, first + n))

    def churn(self) -> None:
        """Pod 2 asks, pod 3 is created and asks, pod 2 is deleted, pod 4 is created and asks."""
        self.lab.add_pod(2)
        self.queries(2, 0)
        self.lab.add_pod(3)
        self.queries(3, 100)
        self.lab.delete_pod(2)
        self.lab.add_pod(4)
        time.sleep(0.2)
        self.queries(4, 200)
        self.queries(3, 300)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


@pytest.fixture(params=["bridge", "routed"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    with NodeLab(request.param) as lab:
        n = Node(lab)
        try:
            yield n
        finally:
            n.close()


def check_once(node: Node, out: Path, entries: Path, wireshark: object) -> None:
    """Each numbered query and its response: exactly once in the file (tshark) and in the entries."""
    rows = wireshark.fields(out, "dns.qry.name", "dns.flags.response", "sll.ifindex")  # type: ignore[attr-defined]
    names = Counter((r[0], r[1]) for r in rows)
    want = {f"n{i:05d}.kstap.test" for i in node.sent}
    assert {n for n, _ in names} == want
    assert all(count == 1 for count in names.values()), [k for k, c in names.items() if c != 1][:5]
    assert len(rows) == 2 * len(want)
    got = [json.loads(line) for line in entries.read_text().splitlines() if line.strip()]
    asked = Counter(e["query_name"] for e in got if e["protocol"] == "dns")
    assert set(asked) == want and set(asked.values()) == {1}


def kstap_tap(node: Node, tmp: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "kstap", "tap", "--netns", node.lab.node, *args]
    p = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    node.procs.append(p)
    return p


class Output:
    """A process's stdout and stderr lines, collected by threads (a pipe never fills)."""

    def __init__(self, p: subprocess.Popen[str]) -> None:
        self.p = p
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((p.stdout, self.out), (p.stderr, self.err)):
            if stream is not None:
                threading.Thread(target=lambda s=stream, i=into: i.extend(s), daemon=True).start()

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in ln for ln in self.out + self.err):
            assert self.p.poll() is None and time.monotonic() < deadline, "".join(self.err)
            time.sleep(0.05)

    def finish(self, timeout: float = 30.0) -> int:
        rc = self.p.wait(timeout)
        time.sleep(0.2)  # the reader threads take the last lines
        return rc


def start_any_worker(tmp_path: Path, netns: str, procs: list[subprocess.Popen[str]],
                     *args: str) -> tuple[subprocess.Popen[str], Output, WorkerEndpoint]:
    """``kstap worker -i any`` in ``netns`` as node ``node-a`` on a free loopback port (``args`` added), once it
    captures; the process (also put in ``procs``, which the fixture ends), its output and its endpoint."""
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    worker = subprocess.Popen(
        [sys.executable, "-m", "kstap", "worker", "--listen", "127.0.0.1:0", "--token-file", str(token_file),
         "-i", "any", "--netns", netns, "--node", "node-a", "--linger", "1", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    procs.append(worker)
    io = Output(worker)
    io.wait_for("capturing on")
    m = next((re.search(r"http://127\.0\.0\.1:(\d+) ", ln) for ln in io.err if "serving" in ln), None)
    assert m is not None, io.err
    return worker, io, WorkerEndpoint("node-a", f"http://127.0.0.1:{m.group(1)}", token)


def test_any_follows_pods_and_writes_each_packet_once(node: Node, tmp_path: Path, wireshark: object) -> None:
    out, entries = tmp_path / "node.pcapng", tmp_path / "entries.ndjson"
    p = kstap_tap(node, tmp_path, "-i", "any", "-w", str(out), "--entries", str(entries), "--json",
                  "--bpf-filter", "udp port 53")
    io = Output(p)
    io.wait_for('"event":"start"')
    node.churn()
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    assert io.finish() == 0, "".join(io.err)
    wireshark.read_ok(out)  # type: ignore[attr-defined]
    check_once(node, out, entries, wireshark)
    events = [json.loads(line) for line in io.out]
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["duplicates"] == 2 * len(node.sent)  # each query and each answer crossed two veths
    pods = node.lab
    changes = " ".join(summary["interface_changes"])
    for index in (2, 3, 4):
        assert f"kv{pods.tag}p{index}"[-15:] in changes
    assert re.search(r"p2 \(index \d+\) vanished", changes)
    alerts = [e["message"] for e in events if e["event"] == "alert" and e["kind"] == "interface"]
    assert len(alerts) == len(summary["interface_changes"]) == 4  # pods 2, 3, 4 appeared, pod 2 vanished
    comments = [r[0] for r in wireshark.fields(out, "frame.comment") if r[0]]  # type: ignore[attr-defined]
    assert any("appeared" in c for c in comments) and any("vanished" in c for c in comments)
    raw = out.read_bytes()
    assert f"kstap: {summary['duplicates']} duplicate copies removed".encode() in raw  # the ISB comment
    info = wireshark.capinfos(out)  # type: ignore[attr-defined]
    assert "Linux cooked-mode capture v2" in info


def test_a_named_interface_that_vanishes_keeps_every_packet(tmp_path: Path, wireshark: object) -> None:
    with NodeLab("bridge") as lab:
        node = Node(lab)
        try:
            pod = lab.add_pod(2)
            out = tmp_path / "gone.pcapng"
            p = kstap_tap(node, tmp_path, "-i", pod.host_if, "-w", str(out), "--bpf-filter", "udp port 53")
            io = Output(p)
            io.wait_for("listening on")
            node.queries(2, 0, 40)
            lab.delete_pod(2)
            rc = io.finish(20)
        finally:
            node.close()
    text = "".join(io.err)
    assert rc == 1, text
    assert f"kstap: error: interface '{pod.host_if}' went away during the capture" in text
    assert "hint:" in text and "Traceback" not in text
    wireshark.read_ok(out)  # type: ignore[attr-defined]
    assert wireshark.count(out, "dns") == 80  # type: ignore[attr-defined]


class Collect:
    """A Reporter that keeps the alerts (the CLI's dashboard and NDJSON get the same)."""

    def __init__(self) -> None:
        self.alerts: list[AlertRaised] = []
        self.ready = threading.Event()

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        self.ready.set()

    def progress(self, snapshot: StatsSnapshot) -> None: ...

    def event(self, event: Event) -> None:
        if isinstance(event, AlertRaised):
            self.alerts.append(event)

    def warning(self, message: str) -> None: ...


def test_a_worker_on_any_attached_over_its_api(node: Node, tmp_path: Path, wireshark: object) -> None:
    worker, _, endpoint = start_any_worker(tmp_path, node.lab.node, node.procs, "--bpf-filter", "udp port 53",
                                           "--entries", "on")
    out, entries = tmp_path / "remote.pcapng", tmp_path / "remote.ndjson"
    settings = TapSettings(interfaces=["(cluster)"], output=OutputSettings(path=str(out)), entries=str(entries))
    reporter = Collect()
    source = RemoteSource([endpoint], on_event=relay(reporter))
    stop = pipeline.StopFlag()
    result: list[CaptureSummary] = []
    runner = threading.Thread(target=lambda: result.append(pipeline.run_tap(settings, reporter, stop, source=source)))
    runner.start()
    try:
        assert reporter.ready.wait(20)
        node.churn()
        time.sleep(1.5)
    finally:
        stop.set()
        runner.join(30)
        source.close()
    assert result, "the attached capture did not finish"
    assert [i.name for i in source.interfaces] == ["node-a/any"]
    wireshark.read_ok(out)  # type: ignore[attr-defined]
    check_once(node, out, entries, wireshark)
    kinds = [a.kind for a in reporter.alerts]
    assert kinds.count("interface") >= 4, reporter.alerts  # the worker's interface changes reach the CLI
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


def test_the_c_encoder_writes_what_the_python_records_path_writes(tmp_path: Path) -> None:
    """Two cooked sockets on the same node see the same packets: one read by the C block encoder,
    one by the Python records path; after dedup both hold the same SLL2 frames (ring order)."""
    from kstap.capture import netns
    from kstap.capture.cooked import CookedSource, encode_cooked_block
    from kstap.filters.bpf import compile_filter, for_cooked_socket
    from kstap.formats import pcapng
    from kstap.formats.savefile import CaptureReader

    if encode_cooked_block is None:
        pytest.skip("the C helper is not built")
    with NodeLab("routed") as lab:
        node = Node(lab)
        try:
            lab.add_pod(2)
            prog = for_cooked_socket(compile_filter("udp port 53", linktype=276))
            with netns.entered(lab.node):
                fast, slow = CookedSource(prog), CookedSource(prog)
            try:
                node.queries(2, 0, 30)
                time.sleep(0.1)
                chunks: list[bytes] = []
                records = []
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    chunks += fast.read_encoded(50, 1 << 30)[0]
                    records += slow.read(50)
                assert fast.stats()[0].duplicates == slow.stats()[0].duplicates == 60
            finally:
                fast.close()
                slow.close()
        finally:
            node.close()
    iface = [fast.interfaces[0]]
    for name, body in (("c", b"".join(chunks)), ("py", b"".join(pcapng.enhanced_packets(records)))):
        (tmp_path / f"{name}.pcapng").write_bytes(pcapng.section_header() + pcapng.interface_description(iface[0])
                                                  + body)
    read = {}
    for name in ("c", "py"):
        with open(tmp_path / f"{name}.pcapng", "rb") as f:
            read[name] = [(r[1], r[2], r[3]) for r, _ in CaptureReader(f, name)]
    assert len(read["c"]) == 60 and read["c"] == read["py"]


def test_any_to_a_file_alone_takes_the_c_path(tmp_path: Path, wireshark: object) -> None:
    """``-i any -w FILE`` and nothing else: the loop hands the cooked ring to the C encoder (the
    records path, with --entries or packet lines, is the test above)."""
    with NodeLab("bridge") as lab:
        node = Node(lab)
        try:
            out = tmp_path / "node.pcapng"
            p = kstap_tap(node, tmp_path, "-i", "any", "-w", str(out), "--json", "--bpf-filter", "udp port 53")
            io = Output(p)
            io.wait_for('"event":"start"')
            lab.add_pod(2)
            node.queries(2, 0)
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            assert io.finish() == 0, "".join(io.err)
        finally:
            node.close()
        names = Counter(r[0] for r in wireshark.fields(out, "dns.qry.name"))  # type: ignore[attr-defined]
        assert names == {f"n{i:05d}.kstap.test": 2 for i in node.sent}  # query and answer, each once
        summary = next(json.loads(ln) for ln in io.out if '"event":"summary"' in ln)
        assert summary["duplicates"] == 2 * len(node.sent)
