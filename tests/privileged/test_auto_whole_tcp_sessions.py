"""Auto mode keeps TCP sessions whole across rate rises and cuts (issue 13, must-show 1), in the
kernel flow table and in its classic-filter fallback; tshark judges each stream's completeness.

Sessions open all along (staggered) and live across several rate changes, so some start while the
kernel still holds their hash range back and are live when it opens: neither table may admit them
mid-way. The rate is scripted (the controller is tested on its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kstap import pipeline
from kstap.config import OutputSettings, TapSettings
from kstap.demo.lab import Lab
from kstap.filters import bpf_syscall
from tests.privileged.test_sessions_across_rate_changes import SERVER, Quiet, Scripted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

CLIENT = """
import socket, sys, threading, time
server, waves, per_wave = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def session(i):
    c = socket.create_connection((server, 7000), timeout=5)
    for m in range(12):  # about 2.4 s of life: every session sees a rate change
        c.sendall(b"s%04d-m%02d" % (i, m) + b"x" * 40)
        c.recv(4096)
        time.sleep(0.2)
    c.shutdown(socket.SHUT_WR); c.recv(4096); c.close()
threads = []
for w in range(waves):
    for k in range(per_wave):
        t = threading.Thread(target=session, args=(w * per_wave + k,)); t.start(); threads.append(t)
    time.sleep(0.25)
for t in threads:
    t.join()
print("DONE", flush=True)
"""
WAVES, PER_WAVE = 24, 10
COMPLETE = 31  # tcp.completeness: SYN, SYN-ACK, ACK, DATA, FIN (RST adds 32)


@pytest.mark.parametrize("table", ["kernel", "user"])
def test_tcp_sessions_in_the_file_are_complete_across_rate_changes(table: str, tmp_path: Path) -> None:
    if table == "kernel" and bpf_syscall.probe() is not None:
        pytest.skip("no BPF maps here")
    out = tmp_path / "tcp.pcapng"
    with Lab() as lab:
        server = lab.spawn(lab.server, [sys.executable, "-c", SERVER, lab.server_ip], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        settings = TapSettings(interfaces=[lab.server_if], netns=lab.server, duration=11.0, bpf_filter="tcp",
                               output=OutputSettings(path=str(out)))
        smp = settings.sampling
        smp.mode, smp.rate, smp.seed, smp.flow_table = "auto", 0.2, 0x13, table
        client: list[subprocess.Popen[str]] = []
        reporter = Quiet()

        def start_client() -> None:
            reporter.listening_at.wait(20)
            client.append(lab.spawn(lab.client, [sys.executable, "-c", CLIENT, lab.server_ip, str(WAVES),
                                                 str(PER_WAVE)], stdout=subprocess.PIPE, text=True))

        threading.Thread(target=start_client, daemon=True).start()
        governor = Scripted([(0.0, 0.2, "pi"), (2.0, 0.6, "pi"), (4.0, 0.3, "pi"), (6.0, 1.0, "pi")])
        started = time.monotonic()
        summary = pipeline.run_tap(settings, reporter, governor=governor)
        assert client and client[0].wait(timeout=max(5.0, 40 - (time.monotonic() - started))) == 0
    assert summary.dropped == 0
    fields = subprocess.run(["tshark", "-r", str(out), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0 || "
                             "tcp.len > 0 || tcp.flags.fin == 1", "-T", "fields", "-e", "tcp.stream",
                             "-e", "tcp.completeness"], capture_output=True, text=True, timeout=120, check=True)
    streams: dict[str, int] = {}
    for line in fields.stdout.splitlines():
        stream, _, completeness = line.partition("\t")
        if completeness:
            streams[stream] = int(completeness, 0)
    complete = sum(c & COMPLETE == COMPLETE for c in streams.values())
    assert len(streams) >= 20  # the sampled share of 240 sessions
    assert len(streams) < WAVES * PER_WAVE  # some were left out: the rate was below 1 for most of the run
    assert complete >= 0.99 * len(streams), f"{complete} of {len(streams)} streams complete ({table} table)"
