"""Interface Statistics Block counters read the same everywhere (issue 15, must show 4).

A capture by dumpcap and one by ``kstap tap`` on the lab's veth, with real traffic; their ISB counters
are read by a pcapng reader written here from the spec (not kstap's), by ``kstap stats --json`` and,
for kstap's file, compared with the summary ``kstap tap`` printed. The spec (draft-ietf-opsawg-pcapng,
section 4.6): isb_ifrecv (4), isb_ifdrop (5), isb_filteraccept (6), isb_osdrop (7) and isb_usrdeliv (8)
are 64-bit unsigned integers in the byte order of the section (its byte-order magic says which).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

COUNTERS = {4: "ifrecv", 5: "ifdrop", 6: "filteraccept", 7: "osdrop", 8: "usrdeliv"}


def spec_isbs(path: Path) -> list[dict[str, int]]:
    """Every ISB of the file: its interface id and counters, read as the spec defines them."""
    data = path.read_bytes()
    out: list[dict[str, int]] = []
    pos, order = 0, "<"
    while pos + 12 <= len(data):
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":  # SHB: its type reads the same in both orders
            order = "<" if data[pos + 8 : pos + 12] == bytes.fromhex("4d3c2b1a") else ">"
        block_type, length = struct.unpack(order + "II", data[pos : pos + 8])
        assert length >= 12 and length % 4 == 0, f"bad block length {length} at {pos}"
        if block_type == 5:
            body = data[pos + 8 : pos + length - 4]
            isb = {"if_id": struct.unpack(order + "I", body[:4])[0]}
            options, o = body[12:], 0
            while o + 4 <= len(options):
                code, size = struct.unpack(order + "HH", options[o : o + 4])
                if code == 0:
                    break
                if code in COUNTERS:
                    assert size == 8
                    isb[COUNTERS[code]] = struct.unpack(order + "Q", options[o + 4 : o + 12])[0]
                o += 4 + size + (-size % 4)
            out.append(isb)
        pos += length
    return out


def last_per_interface(isbs: list[dict[str, int]]) -> dict[int, dict[str, int]]:
    return {isb["if_id"]: isb for isb in isbs}  # counts are cumulative: the last block has the totals


def stats_json(kstap_proc, path: Path) -> dict:  # type: ignore[no-untyped-def, type-arg]
    r = kstap_proc("stats", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_dumpcap_isb_reads_right_in_kstap_stats(harness, kstap_proc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = harness.lab
    harness.server()
    path = tmp_path / "dumpcap.pcapng"
    dumpcap = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.server}", "dumpcap", "-q", "-i", lab.server_if,
                                "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (path.exists() and path.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the file exists once dumpcap's capture is armed
        harness.send(udp_flows=20, tcp_conns=3)
        harness.settle(path, minimum=100)
    finally:
        dumpcap.send_signal(signal.SIGINT)
        dumpcap.wait(timeout=20)
    isbs = last_per_interface(spec_isbs(path))
    assert list(isbs) == [0] and isbs[0]["ifrecv"] >= 100, isbs  # dumpcap wrote one, with real counts
    report = stats_json(kstap_proc, path)
    drops = report["kernel_drops"]
    assert (drops["received"], drops["dropped"], drops["interfaces"]) == (isbs[0]["ifrecv"], isbs[0]["ifdrop"], 1)
    assert drops["received"] < 1 << 32  # never 2^32 times the count (the old high-32-first reading)
    assert not any("kernel dropped" in w for w in report["warnings"]) or isbs[0]["ifdrop"] > 0


def test_kstap_isb_reads_the_same_in_summary_spec_reader_and_stats(harness, kstap_proc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    harness.server()
    path = tmp_path / "kstap.pcapng"
    cap = harness.kstap(path, "-f", "udp or tcp")
    harness.send(udp_flows=20, tcp_conns=3)
    harness.settle(path, minimum=100)
    assert cap.stop() == 0, cap.stderr
    summary = harness.summary(cap.stderr)
    isbs = last_per_interface(spec_isbs(path))
    assert (isbs[0]["ifrecv"], isbs[0]["ifdrop"]) == (summary["received"], summary["dropped"])
    assert isbs[0]["usrdeliv"] == summary["captured"]
    report = stats_json(kstap_proc, path)
    drops = report["kernel_drops"]
    assert (drops["received"], drops["dropped"]) == (summary["received"], summary["dropped"])
    # a full-mode capture: no flow carries a comment, and none needs one; the filter is as given
    assert report["run"]["mode"] == "full" and report["run"]["filter"] == "udp or tcp"
    assert report["warnings"] == [] or summary["dropped"] > 0, report["warnings"]
    r = kstap_proc("stats", str(path))
    assert r.returncode == 0 and "filter udp or tcp" in r.stdout and "filter udp or tcp;" not in r.stdout, r.stdout
