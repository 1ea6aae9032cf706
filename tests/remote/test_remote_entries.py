"""``kstap tap -n NS --entries FILE``: the workers dissect, the client writes their entries.

The bug this pins: every worker dissected and published its entries, the client dropped them and
dissected the merged stream a second time. Here a worker publishes a DNS exchange and the entry its
own dissector made of it; the client's entries file must hold that entry once, and nothing the
client would have dissected itself.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import dpkt

from kstap.config import TapSettings
from kstap.contracts import Event
from kstap.model import Interface, PacketRecord, StatsSnapshot
from kstap.pipeline import StopFlag
from kstap.pipeline.assembly import run_remote
from kstap.remote.client import RemoteSource, WorkerEndpoint

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def dns_frames(udp: Any, name: str, qid: int) -> list[bytes]:
    query = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=1)])
    answer = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=1)], ns=[], ar=[])
    answer.qr = 1
    answer.an = [dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=60, rlen=4, ip=struct.pack("!I", 0x0A000063))]
    return [udp("10.0.0.1", "10.0.0.53", 40000, 53, bytes(query)),
            udp("10.0.0.53", "10.0.0.1", 53, 40000, bytes(answer))]


class Quiet:
    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None: ...
    def progress(self, snapshot: StatsSnapshot) -> None: ...
    def event(self, event: Event) -> None: ...
    def warning(self, message: str) -> None: ...


def test_the_workers_entries_are_written_once_and_the_merged_stream_is_not_dissected_again(
        fake_worker: Any, tmp_path: Path, frames: Any) -> None:
    w = fake_worker("node-a")
    records: list[PacketRecord] = [(T0 + i * MS, len(f), len(f), f, 0, 0)
                                   for i, f in enumerate(dns_frames(frames.udp, "api.example", 7))]
    entry = {"schema": 1, "time": T0 / 1e9, "flow_id": "0badf00d", "protocol": "dns",
             "client": "10.0.0.1:40000", "server": "10.0.0.53:53", "query_name": "api.example",
             "query_type": "A", "rcode": "NOERROR", "answers": 1, "latency_ms": 1.0}
    w.hub.publish_entries([json.dumps(entry)])
    w.hub.publish_batch(T0 + 10 * MS, records)
    source = RemoteSource([WorkerEndpoint(w.hub.node, w.url, w.token)], connect_timeout=5, entries=True)
    assert source.capabilities.dissected_upstream
    out = tmp_path / "entries.ndjson"
    settings = TapSettings(interfaces=["(cluster)"], count=len(records), entries=str(out))
    started = time.monotonic()
    try:
        summary = run_remote(settings, Quiet(), StopFlag(), source)
    finally:
        source.close()
    assert time.monotonic() - started < 10
    assert summary.captured == len(records)
    # the entry as the worker wrote it, naming the node that saw it
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{**entry, "nodes": ["node-a"]}]
    assert summary.entries == 1
