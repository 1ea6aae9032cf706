"""Remote workers end to end: real ``kstap worker`` processes, each capturing its own lab ("node"),
merged by a RemoteSource into one pcapng that tshark reads.

Each Lab is a separate pair of network namespaces, so the two "nodes" carry the same traffic
pattern (same addresses and ports) rather than one flow seen at both ends: with one seed, the
same flows must be kept on both. Workers listen on 127.0.0.1 (they capture inside the lab with
``--netns``); every process is stopped by its PID and every namespace deleted, pass or fail.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

from kstap.demo.lab import Lab
from kstap.formats import pcapng
from kstap.model import PacketRecord
from kstap.remote.client import RemoteSource, WorkerEndpoint
from kstap.sinks.files import PcapngFiles

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ROOT = Path(__file__).resolve().parents[2]
SEED = "0x5eed"
DPORT = 7000

SEND = r"""
import socket, sys, time
src, dst, base, flows, per, dport, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
socks = []
for i in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, base + i))
    socks.append(s)
for j in range(per):
    for s in socks:
        s.sendto(b"kstap-remote-%d" % j, (dst, dport))
        time.sleep(gap)
"""


class WorkerProc:
    """One ``kstap worker`` capturing a lab's server-side veth end, serving on 127.0.0.1."""

    def __init__(self, lab: Lab, node: str, tmp: Path, *args: str) -> None:
        self.node = node
        self.token = secrets.token_hex(16)
        token_file = tmp / f"{node}.token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "kstap", "worker", "--listen", "127.0.0.1:0", "--token-file", str(token_file),
                "-i", lab.server_if, "--netns", lab.server, "--node", node, "--linger", "1", *args]
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = 0

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "capturing on" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self._ready.wait(timeout), f"worker {self.node} did not start: {self.lines}"
        m = next((re.search(r"http://127\.0\.0\.1:(\d+) ", ln) for ln in self.lines if "serving" in ln), None)
        assert m is not None and self.proc.poll() is None, f"worker {self.node} failed: {self.lines}"
        self.port = int(m.group(1))

    @property
    def endpoint(self) -> WorkerEndpoint:
        return WorkerEndpoint(self.node, f"http://127.0.0.1:{self.port}", self.token)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., list[tuple[Lab, WorkerProc]]]]:
    """``nodes(n, *worker_args)``: n labs, each with a worker capturing its server veth end."""
    labs: list[Lab] = []
    procs: list[WorkerProc] = []

    def make(n: int, *args: str) -> list[tuple[Lab, WorkerProc]]:
        out = []
        for i in range(n):
            lab = Lab()
            labs.append(lab)
            lab.__enter__()
            w = WorkerProc(lab, f"node-{'abcdefgh'[i]}", tmp_path, *args)
            procs.append(w)
            out.append((lab, w))
        for _, w in out:
            w.wait_ready()
        return out

    try:
        yield make
    finally:
        for w in procs:
            w.stop(5)
        for lab in labs:
            lab.close()


def send(lab: Lab, *, base: int, flows: int, per: int = 3, dport: int = DPORT, gap: float = 0.001) -> None:
    """UDP flows from fixed source ports (so two labs carry identical flows)."""
    r = subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, "-c", SEND, lab.client_ip, lab.server_ip,
                        str(base), str(flows), str(per), str(dport), str(gap)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def send_both(labs: list[Lab], **kw: Any) -> None:
    threads = [threading.Thread(target=send, args=(lab,), kwargs=kw) for lab in labs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


class Collector:
    """Reads a RemoteSource into a PcapngFiles, the way the pipeline will (comments included)."""

    def __init__(self, src: RemoteSource, path: Path) -> None:
        self.src = src
        self.records: list[PacketRecord] = []
        self.comments: dict[int, str] = {}
        self.files = PcapngFiles(str(path), src.interfaces, counters=self._counters, comment="kstap: remote test")

    def _counters(self) -> list[pcapng.InterfaceCounters]:
        return [pcapng.InterfaceCounters(0, 0, s.received, s.dropped, s.delivered) for s in self.src.stats()]

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._take(self.src.read(100))

    def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            self._take(self.src.read(100))
        return cond()

    def settle(self, quiet: float = 1.0, timeout: float = 10.0) -> None:
        """Read until nothing new arrived for ``quiet`` seconds."""
        end = time.monotonic() + timeout
        last, since = len(self.records), time.monotonic()
        while time.monotonic() < end:
            self._take(self.src.read(100))
            if len(self.records) != last:
                last, since = len(self.records), time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def _take(self, batch: list[PacketRecord]) -> None:
        if not batch:
            return
        notes = self.src.last_comments
        self.comments.update({len(self.records) + i: c for i, c in notes.items()})
        self.records.extend(batch)
        self.files.ensure_interfaces(self.src.interfaces)
        self.files.write(batch, notes)

    def close(self) -> None:
        self._take(self.src.drain(20))
        self.files.close()

    def ports(self, if_id: int) -> set[int]:
        """UDP source ports of the flows seen on one merged interface."""
        out = set()
        for rec in self.records:
            if rec[4] != if_id:
                continue
            ip = dpkt.ethernet.Ethernet(rec[3]).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                out.add(ip.data.sport)
        return out


def test_two_nodes_merge_into_one_file_and_one_seed_keeps_the_same_flows(nodes, tmp_path, wireshark) -> None:
    (lab_a, wa), (lab_b, wb) = nodes(2, "--mode", "percentage", "--rate", "0.5", "--seed", SEED, "--bpf-filter", "udp")
    events: list[tuple[str, dict[str, object]]] = []
    src = RemoteSource([wa.endpoint, wb.endpoint], on_event=lambda k, d: events.append((k, d)))
    out = tmp_path / "merged.pcapng"
    col = Collector(src, out)
    try:
        assert [i.name for i in src.interfaces] == [f"node-a/{lab_a.server_if}", f"node-b/{lab_b.server_if}"]
        send_both([lab_a, lab_b], base=20000, flows=40)
        col.settle()
        assert src.set_rate(0.5)  # reachable; percentage mode accepts a rate
    finally:
        col.close()
        src.close()
    kept_a, kept_b = col.ports(0), col.ports(1)
    assert kept_a == kept_b, "one seed, the same flows, the same decisions on both nodes"
    assert 0 < len(kept_a) < 40
    assert len(col.records) == 2 * 3 * len(kept_a)  # whole flows: every packet of a kept flow
    assert not [d for k, d in events if d.get("level") == "critical"], events

    times = [int(r[0]) for r in col.records]
    assert times == sorted(times), "the merged stream is in time order"
    rows = wireshark.fields(out, "frame.interface_name", "frame.time_epoch", "frame.comment")
    assert len(rows) == len(col.records)
    assert {r[0] for r in rows} == {f"node-a/{lab_a.server_if}", f"node-b/{lab_b.server_if}"}
    epochs = [float(r[1]) for r in rows]
    assert epochs == sorted(epochs)
    flow_notes = [r[2] for r in rows if r[2].startswith("kstap: flow")]
    assert len(flow_notes) == 2 * len(kept_a)  # each kept flow's first packet, on each node
    assert all("mode=percentage rate=0.5" in n for n in flow_notes)
    info = wireshark.capinfos(out)
    assert "Number of interfaces in file: 2" in info


def test_a_worker_killed_mid_run_is_reported_and_the_rest_is_kept(nodes, tmp_path, wireshark) -> None:
    (lab_a, wa), (lab_b, wb) = nodes(2, "--bpf-filter", "udp")
    events: list[tuple[str, dict[str, object]]] = []
    src = RemoteSource([wa.endpoint, wb.endpoint], grace=1.0, on_event=lambda k, d: events.append((k, d)))
    out = tmp_path / "killed.pcapng"
    col = Collector(src, out)
    try:
        assert src.set_rate(0.5) == {n: "refused: HTTP 409: this worker keeps every flow (--mode full); start it "
                                        "with --mode percentage to change its rate live" for n in ("node-a", "node-b")}
        send_both([lab_a, lab_b], base=21000, flows=10, per=2)
        assert col.until(lambda: {r[4] for r in col.records} == {0, 1} and len(col.records) >= 40)
        before = len(col.records)
        wb.kill()
        killed_at = time.time_ns()
        assert col.until(lambda: any(d.get("kind") == "worker-lost" for _, d in events), timeout=10)
        send(lab_a, base=22000, flows=10, per=2)
        send(lab_b, base=22000, flows=10, per=2)  # nobody captures node-b any more
        col.settle()
    finally:
        col.close()
        src.close()
    lost = next(d for _, d in events if d.get("kind") == "worker-lost")
    assert lost["level"] == "critical" and "node-b" in str(lost["message"])
    after_a = [r for r in col.records if r[0] > killed_at and r[4] == 0]
    assert len(after_a) == 20, "node-a's capture goes on after node-b died"
    assert sum(1 for r in col.records[:before] if r[4] == 1) == 20, "node-b's packets from before are kept"
    assert [w.alive for w in src.worker_stats()] == [True, False]
    assert wireshark.count(out) == len(col.records)
    assert wa.stop() == 0


def test_control_changes_the_rate_and_the_filter_live(nodes, tmp_path, wireshark) -> None:
    ((lab, w),) = nodes(1, "--mode", "percentage", "--rate", "0.1", "--seed", SEED, "--bpf-filter", "udp")
    events: list[tuple[str, dict[str, object]]] = []
    src = RemoteSource([w.endpoint], on_event=lambda k, d: events.append((k, d)))
    out = tmp_path / "control.pcapng"
    col = Collector(src, out)
    try:
        send(lab, base=23000, flows=40, per=2)
        col.settle()
        low = col.ports(0)
        assert len(low) < 20  # about 10% of 40
        assert src.set_rate(1.0) == {"node-a": "applied"}
        assert col.until(lambda: any(k == "rate_change" for k, _ in events))
        send(lab, base=24000, flows=40, per=2)
        col.settle()
        high = col.ports(0) - low
        assert high == set(range(24000, 24040)), "after the rate went to 1, every new flow is kept"
        assert src.set_filter("udp dst port 7001") == {"node-a": "applied"}
        result = src.set_filter("udp and nonsense")
        assert result["node-a"].startswith("refused: HTTP 400: invalid BPF filter")
        count = len(col.records)
        send(lab, base=25000, flows=5, per=2, dport=DPORT)
        send(lab, base=25100, flows=5, per=2, dport=DPORT + 1)
        col.settle()
        new = col.records[count:]
        assert len(new) == 10 and {r[3][36] << 8 | r[3][37] for r in new} == {DPORT + 1}
    finally:
        col.close()
        src.close()
    change = next(d for k, d in events if k == "rate_change")
    assert change["node"] == "node-a" and change["new"] == 1.0 and change["reason"] == "control"
    rows = wireshark.fields(out, "udp.srcport", "frame.comment", display_filter="frame.comment")
    rates = {int(port) // 1000 * 1000: note.split("rate=")[1].split()[0] for port, note in rows
             if note.startswith("kstap: flow")}
    assert rates == {23000: "0.1", 24000: "1", 25000: "1"}, "each flow's comment names the rate it was kept at"
    assert w.stop() == 0
    assert any("control: rate 1" in line for line in w.lines)
    assert not any(w.token in line for line in w.lines)


def test_entries_are_dissected_on_the_worker_and_arrive_with_their_node(nodes, tmp_path) -> None:
    ((lab, w),) = nodes(1, "--entries", "on", "--bpf-filter", "tcp port 8080")
    lab.spawn(lab.server, [sys.executable, "-m", "http.server", "8080", "--bind", lab.server_ip],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entries: list[tuple[str, dict[str, Any]]] = []
    src = RemoteSource([w.endpoint], on_entry=lambda node, e: entries.append((node, e)))
    col = Collector(src, tmp_path / "entries.pcapng")
    get = (f"import urllib.request, time\nfor i in range(50):\n try: urllib.request.urlopen("
           f"'http://{lab.server_ip}:8080/', timeout=2).read(); break\n except OSError: time.sleep(0.1)\n"
           f"for i in range(2): urllib.request.urlopen('http://{lab.server_ip}:8080/?n=%d' % i).read()")
    try:
        subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, "-c", get], check=True, timeout=30)
        assert col.until(lambda: len(entries) >= 3)
    finally:
        col.close()
        src.close()
    assert all(node == "node-a" for node, _ in entries)
    got = [e for _, e in entries if e.get("protocol") == "http/1.1"]
    assert [e["path"] for e in got[-2:]] == ["/?n=0", "/?n=1"]
    assert all(e["status"] == 200 and e["method"] == "GET" for e in got)


def test_through_the_fake_api_servers_pod_proxy(nodes, tmp_path, wireshark) -> None:
    """The real kubernetes client reaches two real workers via the fake API server's pod proxy
    (which, like kube-apiserver, authenticates the CLI and strips its Authorization header)."""
    try:
        from tests.kube.fakeapi import FakeApiServer  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("tests/kube/fakeapi.py (the fake API server with a pod proxy) is not there")
    from kubernetes import config as k8s_config

    from kstap.remote.transport import ApiServerProxyTransport

    (lab_a, wa), (lab_b, wb) = nodes(2, "--mode", "percentage", "--rate", "0.5", "--seed", SEED, "--bpf-filter", "udp")
    with FakeApiServer() as api:
        cluster = api.cluster
        cluster.add_namespace("kstap-system")
        endpoints = []
        for node, w in (("node-a", wa), ("node-b", wb)):
            cluster.add_node(node, "192.0.2.10" if node == "node-a" else "192.0.2.11")
            pod = f"kstap-worker-{node[-1]}x1"
            cluster.add_pod("kstap-system", pod, node, "192.0.2.10", host_network=True)
            cluster.register_proxy("kstap-system", pod, ("127.0.0.1", w.port))
            client = k8s_config.new_client_from_config(config_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")))
            endpoints.append(WorkerEndpoint(node, token=w.token,
                                            transport=ApiServerProxyTransport(client, "kstap-system", pod, 9090)))
        events: list[tuple[str, dict[str, object]]] = []
        src = RemoteSource(endpoints, on_event=lambda k, d: events.append((k, d)))
        out = tmp_path / "proxied.pcapng"
        col = Collector(src, out)
        try:
            send_both([lab_a, lab_b], base=26000, flows=30)
            col.settle()
            assert src.set_rate(0.75) == {"node-a": "applied", "node-b": "applied"}
        finally:
            col.close()
            src.close()
        proxied = [r for r in cluster.requests if r.resource == "pods/proxy"]
    assert {(r.verb, r.namespace) for r in proxied} == {("get", "kstap-system"), ("create", "kstap-system")}
    kept_a, kept_b = col.ports(0), col.ports(1)
    assert kept_a == kept_b and 0 < len(kept_a) < 30
    assert len(col.records) == 2 * 3 * len(kept_a)
    times = [int(r[0]) for r in col.records]
    assert times == sorted(times)
    assert wireshark.count(out) == len(col.records)
    assert any(d.get("new") == 0.75 for k, d in events if k == "rate_change")
