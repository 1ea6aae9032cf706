"""Live capture: every file written is 0600 whatever the umask, and the run's seed appears in no output
(capture files, NDJSON events, entries, stderr) — only its id does. See docs/security.md."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from kstap.sampling.flowhash import seed2, seed_id

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SEED = 0x0BADC0DE


def test_live_capture_files_are_private_and_hold_no_seed(harness):
    lab, tmp = harness.lab, harness.tmp
    harness.server()
    argv = [sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i", lab.server_if, "-w", "live.pcapng",
            "-C", "0.002", "--mode", "percentage", "--rate", "0.5", "--seed", f"{SEED:#x}", "--entries",
            "e.ndjson", "--json"]
    p = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: os.umask(0))
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        assert '"event":"start"' in first, first + (p.stderr.read() if p.stderr else "")
        harness.send(udp_flows=30, udp_sizes=(10, 400), tcp_conns=4, tcp_sizes=(50, 500))
        harness.settle(*sorted(tmp.glob("live_*.pcapng"))[-1:], timeout=3)
        p.send_signal(2)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)
    assert p.returncode == 0, err
    files = sorted(tmp.glob("live_*.pcapng"))
    assert len(files) >= 2, files
    for f in [*files, tmp / "e.ndjson"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f"{f.name}: {oct(f.stat().st_mode)}"
    captures = "".join(f.read_bytes().decode("latin-1") for f in files)
    assert seed_id(SEED) in captures
    outputs = {"capture": captures, "events": first + out, "stderr": err, "entries": (tmp / "e.ndjson").read_text()}
    for value in (SEED, seed2(SEED)):
        for form in (str(value), f"{value:x}", f"{value:08x}"):
            for where, text in outputs.items():
                assert form not in text.lower(), f"the seed appears in {where} as {form}"
