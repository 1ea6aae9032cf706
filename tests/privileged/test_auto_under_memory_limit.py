"""Auto mode holds a real memory cgroup limit that full mode breaks (issue 4, must-show 3).

kstap runs inside a cgroup v1 memory cgroup limited to LIMIT. The traffic: thousands of
long-lived HTTP/1.1 connections, opened a few hundred per second, each trickling a large request
head that the dissector must buffer until the head completes (it never does while the test runs).
Fully dissected, that is more memory than the limit allows. Both runs get the same traffic and
the same (deliberately huge) --dissect-memory, so only the sampling mode differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kstap.control import memcg
from kstap.demo.lab import Lab

MEMCG = Path("/sys/fs/cgroup/memory")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, network namespaces)"),
    pytest.mark.skipif(not (MEMCG / "memory.limit_in_bytes").exists(), reason="no cgroup v1 memory controller"),
]

LIMIT = 160 << 20
CONNECTIONS = 3000
HEAD_BYTES = 64 << 10
OPEN_PER_SECOND = 300
CHUNKS = 12
CHUNK_EVERY = 0.5

SERVER = """
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def handle(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], 8080, backlog=4096)
    print("READY", flush=True)
    await asyncio.sleep(float(sys.argv[2]))
asyncio.run(main())
"""

CLIENT = """
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
server = sys.argv[1]
conns, head, rate, chunks = (int(a) for a in sys.argv[2:6])
every = float(sys.argv[6])
async def one(i):
    try:
        reader, writer = await asyncio.open_connection(server, 8080)
    except OSError:
        return
    line = f"POST /upload/{i} HTTP/1.1\\r\\nHost: demo\\r\\n".encode()
    filler = (b"X-Filler: " + b"a" * 500 + b"\\r\\n") * (head // chunks // 512)
    writer.write(line)
    for _ in range(chunks):
        writer.write(filler)
        await writer.drain()
        await asyncio.sleep(every)
    await asyncio.sleep(30)  # hold the connection open, head never finished
    writer.close()
async def main():
    tasks = []
    for i in range(conns):
        tasks.append(asyncio.create_task(one(i)))
        if i % (rate // 10) == 0:
            await asyncio.sleep(0.1)
    await asyncio.wait(tasks, timeout=60)
asyncio.run(main())
"""


def run_under_limit(mode_args: list[str], tmp: Path, name: str) -> dict[str, object]:
    with Lab() as lab, memcg.limited(LIMIT) as (cg, flavour):
        server = lab.spawn(lab.server, [sys.executable, "-c", SERVER, lab.server_ip, "90"],
                           stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        out = tmp / f"{name}.pcapng"
        events = tmp / f"{name}.ndjson"
        cmd = [sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i", lab.server_if, "-f", "tcp port 8080",
               "-B", "8", "--dissect-memory", "4096", "--entries", str(tmp / f"{name}.entries"), "-w", str(out),
               "--duration", "22", "--progress", *mode_args]
        wrapper = f'echo $$ > {cg / "cgroup.procs"} && exec "$@"'
        tap = subprocess.Popen(["sh", "-c", wrapper, "sh", *cmd], stderr=subprocess.PIPE, text=True)
        lab.procs.append(tap)  # type: ignore[arg-type]
        assert tap.stderr is not None
        first = tap.stderr.readline()
        assert "listening on" in first, first
        client = lab.spawn(lab.client, [sys.executable, "-c", CLIENT, lab.server_ip, str(CONNECTIONS), str(HEAD_BYTES),
                                        str(OPEN_PER_SECOND), str(CHUNKS), str(CHUNK_EVERY)])
        _, err = tap.communicate(timeout=120)
        client.kill()
        result = {"returncode": tap.returncode, "stderr": first + err, "oom_kills": memcg.oom_kills(cg, flavour),
                  "peak": memcg.peak(cg, flavour),
                  "file": out, "events": events}
        return result


def test_full_mode_breaks_the_limit_and_auto_mode_holds_it(tmp_path: Path) -> None:
    full = run_under_limit(["--mode", "full"], tmp_path, "full")
    auto = run_under_limit(["--mode", "auto"], tmp_path, "auto")
    report = {k: {kk: vv for kk, vv in v.items() if kk in ("returncode", "oom_kills", "peak")}
              for k, v in (("full", full), ("auto", auto))}
    print(json.dumps(report))
    # full mode: the kernel killed it (or it was at the limit when it died)
    assert full["oom_kills"] >= 1 or full["returncode"] == -9, full["stderr"]
    # auto mode: no OOM kill, clean exit, peak below the limit, and the rate was cut
    assert auto["oom_kills"] == 0, auto["stderr"]
    assert auto["returncode"] == 0, auto["stderr"]
    assert int(auto["peak"]) < LIMIT  # type: ignore[call-overload]
    assert "sampling rate" in str(auto["stderr"]) or "kept" in str(auto["stderr"])
    assert subprocess.run(["tshark", "-r", str(auto["file"]), "-c", "1"], capture_output=True).returncode == 0
