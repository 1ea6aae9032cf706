"""Fidelity on real traffic: real peers in lab namespaces, captured by tcpdump, ``kstap dissect`` vs tshark.

- DNS: Knot DNS serving DNSSEC-signed zones (NSEC and NSEC3) with every record type of the issue,
  queried by kdig over UDP and TCP; unbound answering NXDOMAIN (recursing into Knot) and REFUSED;
  nsupdate sending TSIG-signed dynamic updates (one with a wrong key: NOTAUTH). Every transaction's
  name, type, rcode and answer count equal tshark's.
- HTTP/1: curl against Python's ``http.server`` — 1,000 keep-alive transactions on one connection, and
  one segment removed from the middle with editcap; Content-Length with leading zeros and a request
  with conflicting Content-Length (refused, still an entry); requests with bare-LF line ends.
- HTTP/2: nghttp2's client (h2load, SETTINGS_MAX_FRAME_SIZE 1 MiB) against hypercorn, which then sends
  300 kB DATA frames; nghttp2's client against nghttp2's server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from corpus import BIG, H2_APP, HTTP1_SERVER, STATUSES, TSIG_NAME, TSIG_SECRET, start_knot, start_unbound, wait_http

from kstap.dissect.dns import qtype_name, rcode_name

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LISTED = {"RRSIG": 46, "DNSKEY": 48, "DS": 43, "NSEC": 47, "NSEC3": 50, "NSEC3PARAM": 51, "HTTPS": 65,
          "SVCB": 64, "CAA": 257, "SPF": 99, "NAPTR": 35, "SSHFP": 44, "LOC": 29, "WKS": 11, "TXT": 16,
          "TSIG": 250}
"""The record types the issue lists (TKEY is not here: neither Knot nor nsupdate -y sends one)."""


def run_in(ns: str, *argv: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *argv], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def messages(rows: list[list[str]]) -> list[tuple[str, ...]]:
    """tshark field rows → one tuple per message (fields of several messages in a frame are a,b,c)."""
    out: list[tuple[str, ...]] = []
    for row in rows:
        out += list(zip(*[cell.split(",") for cell in row], strict=True))
    return out


def dissect(kstap_proc, path: Path) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    r = kstap_proc("dissect", str(path), "--entries", "-", timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# -- DNS -------------------------------------------------------------------------------------------

DNS_QUERIES = [
    ("signed.test", "SOA"), ("signed.test", "DNSKEY"), ("signed.test", "NS"), ("signed.test", "MX"),
    ("signed.test", "TXT"), ("signed.test", "SPF"), ("signed.test", "CAA"), ("signed.test", "HTTPS"),
    ("signed.test", "NAPTR"), ("signed.test", "LOC"), ("signed.test", "TYPE11"), ("signed.test", "NSEC"),
    ("signed.test", "RRSIG"), ("www.signed.test", "SSHFP"), ("www.signed.test", "A"), ("www.signed.test", "AAAA"),
    ("svc.signed.test", "SVCB"), ("sub.signed.test", "DS"), ("_sip._udp.signed.test", "SRV"),
    ("nosuch.signed.test", "A"), ("odd\\007name.signed.test", "A"), ("nsec3.test", "NSEC3PARAM"),
    ("nsec3.test", "DNSKEY"), ("nosuch.nsec3.test", "A"), ("www.nsec3.test", "CAA"),
]
UPDATE = "server {ip}\nzone dyn.test\nupdate add new.dyn.test 300 A 10.9.0.9\nsend\n"


def test_dns_of_every_record_type_agrees_with_tshark(harness, kstap_proc, wireshark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = harness.lab
    knot_ip, unbound_ip = lab.server_ip, lab.server_ip.rsplit(".", 1)[0] + ".3"
    subprocess.run(["ip", "-n", lab.server, "addr", "add", f"{unbound_ip}/24", "dev", lab.server_if], check=True)
    start_knot(lab, tmp_path, knot_ip)
    start_unbound(lab, tmp_path, unbound_ip, knot_ip)
    path = tmp_path / "dns.pcap"
    cap = harness.tcpdump(path, "port 53")

    query_args = [a for name, rtype in DNS_QUERIES for a in (name, rtype)]
    for transport in ("+notcp", "+tcp"):
        r = run_in(lab.client, "kdig", f"@{knot_ip}", "+dnssec", "+time=3", "+retry=1", transport, *query_args)
        assert r.returncode == 0 and r.stdout.count("status:") == len(DNS_QUERIES), r.stdout + r.stderr
    for transport in ("+notcp", "+tcp"):
        r = run_in(lab.client, "kdig", f"@{unbound_ip}", "+time=3", "+retry=1", transport, "nosuch.signed.test", "A",
                   "www.signed.test", "A", "x.refused.test", "A")
        assert r.stdout.count("status: NXDOMAIN") == 1 and r.stdout.count("status: REFUSED") == 1, r.stdout
    good, bad = f"hmac-sha256:{TSIG_NAME}:{TSIG_SECRET}", f"hmac-sha256:{TSIG_NAME}:{TSIG_SECRET[::-1]}"
    for key, tcp in ((good, []), (good, ["-v"]), (bad, [])):
        r = run_in(lab.client, "nsupdate", "-y", key, *tcp, stdin=UPDATE.format(ip=knot_ip), timeout=30)
        assert (r.returncode == 0) == (key == good), r.stderr
    harness.settle(path, minimum=100)
    assert cap.stop() == 0

    entries = [e for e in dissect(kstap_proc, path) if e["protocol"] == "dns"]
    rows = wireshark.fields(path, "ip.proto", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.count.answers",
                            "dns.count.prerequisites", display_filter="dns.flags.response == 1")
    tshark: Counter[tuple[object, ...]] = Counter()
    for proto, *fields in rows:  # one frame may hold several messages (DNS over TCP): "a,b" per field
        cells = [f.split(",") for f in fields]
        n = max(len(c) for c in cells)
        for name, t, rc, an, prereq in zip(*[c if c != [""] else [""] * n for c in cells], strict=True):
            # an UPDATE's header counts are zones, prerequisites, updates: ANCOUNT is the prerequisites
            transport = "tcp" if proto == "6" else "udp"
            tshark[(name, qtype_name(int(t)), rcode_name(int(rc)), int(an or prereq), transport)] += 1
    ours = Counter((e["query_name"], e["query_type"], e["rcode"], e["answers"], e["transport"]) for e in entries)
    assert ours == tshark  # every transaction: name, type, rcode and answer count as tshark reads them
    assert all("error" not in e for e in entries), [e for e in entries if "error" in e]
    assert sum(tshark.values()) == 2 * len(DNS_QUERIES) + 6 + 3
    rcodes = Counter(e["rcode"] for e in entries)
    assert rcodes["NXDOMAIN"] >= 6 and rcodes["REFUSED"] == 2 and rcodes["NOTAUTH"] == 1
    assert sum(1 for e in entries if e["query_type"] == "SOA" and e["query_name"] == "dyn.test") == 3  # updates

    # every listed record type is in the answers kstap decoded (types from tshark's record fields)
    served = {int(t) for row in wireshark.fields(path, "dns.resp.type") for cell in row for t in cell.split(",") if t}
    missing = {name for name, code in LISTED.items() if code not in served}
    assert not missing, f"record types never served: {missing}"


# -- HTTP/1 ----------------------------------------------------------------------------------------

HTTP_PORT = 8080

BARE_LF_CLIENT = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
# a client whose lines end in a bare LF (RFC 9112 section 2.2 lets the server accept it; this one does)
for head in (b"GET /item/3 HTTP/1.1\nHost: lf.test\n\n", b"GET /item/4 HTTP/1.1\r\nHost: mixed.test\n\r\n",
             b"POST /lf HTTP/1.1\nHost: lf.test\nContent-Length: 4\n\nbody"):
    s.sendall(head)
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    top, _, body = got.partition(b"\r\n\r\n")
    length = int(top.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(4096)
    print(top.split(b" ", 2)[1].decode(), flush=True)
s.close()
'''


def http_server(harness, lifetime: float = 60) -> None:  # type: ignore[no-untyped-def]
    lab = harness.lab
    p = lab.spawn(lab.server, [sys.executable, "-c", HTTP1_SERVER, lab.server_ip, str(HTTP_PORT), str(lifetime)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"READY"


def responses(wireshark, path: Path) -> list[tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """(the URI it answers, status) of every HTTP response tshark reads."""
    return messages(wireshark.fields(path, "http.response_for.uri", "http.response.code",
                                     display_filter="http.response"))


def item(path: str) -> int:
    return int(path.rsplit("/", 1)[1])


def test_http1_lost_segment_in_1000_keep_alive_transactions(harness, kstap_proc, wireshark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Must show 3: one response head lost in the middle of 1,000 keep-alive exchanges costs one entry."""
    lab = harness.lab
    http_server(harness)
    path = tmp_path / "keepalive.pcap"
    cap = harness.tcpdump(path, f"tcp port {HTTP_PORT}", "-B", "16384")
    r = run_in(lab.client, "curl", "-s", "--rate", "300/s", "-w", "CODE %{http_code} %{num_connects}\\n",
               f"http://{lab.server_ip}:{HTTP_PORT}/item/[1-1000]", timeout=120)
    codes = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("CODE ")]
    assert len(codes) == 1000 and sum(int(c) for _, c in codes) == 1, r.stderr  # one connection, kept alive
    harness.settle(path, minimum=4000)
    assert cap.stop() == 0
    assert "\n0 packets dropped by kernel" in cap.stderr, cap.stderr  # the one lost segment is ours

    whole = dissect(kstap_proc, path)
    assert len(whole) == 1000 and all("error" not in e and "resynced" not in e for e in whole)
    assert all(e["status"] == STATUSES[item(e["path"]) % 10] for e in whole)
    t_resp = responses(wireshark, path)
    assert Counter((item(u), int(c)) for u, c in t_resp) == Counter((item(e["path"]), e["status"]) for e in whole)

    # drop one response head from the middle (editcap removes the frame; no byte is forged)
    heads = [int(n) for (n,) in wireshark.fields(path, "frame.number", display_filter=(
        f'tcp.srcport == {HTTP_PORT} && tcp.payload[0:9] == "HTTP/1.1 "'))]
    victim = heads[len(heads) // 2]
    cut = tmp_path / "keepalive-lost.pcap"
    assert wireshark.run("editcap", str(path), str(cut), str(victim)).returncode == 0

    entries = dissect(kstap_proc, cut)
    assert len(entries) >= 990
    gap = [i for i, e in enumerate(entries) if e.get("error") == "gap"]
    assert len(gap) == 1, [e for e in entries if "error" in e]
    lost = gap[0]
    assert 400 < lost < 600
    assert not any("resynced" in e for e in entries[:lost])
    after = entries[lost + 1 :]
    assert after and all(e.get("resynced") is True and "error" not in e for e in after)  # marked
    assert all(e["status"] == STATUSES[item(e["path"]) % 10] for e in entries if "error" not in e)  # paired right
    # tshark on the same damaged file: every exchange it pairs, kstap pairs the same way
    t_cut = responses(wireshark, cut)
    assert Counter((item(u), int(c)) for u, c in t_cut) == Counter(
        (item(e["path"]), e["status"]) for e in entries if "error" not in e)


def test_http1_bare_lf_leading_zeros_and_refused_framing(harness, kstap_proc, wireshark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = harness.lab
    http_server(harness)
    path = tmp_path / "framing.pcap"
    cap = harness.tcpdump(path, f"tcp port {HTTP_PORT}")
    url = f"http://{lab.server_ip}:{HTTP_PORT}"
    r = run_in(lab.client, sys.executable, "-c", BARE_LF_CLIENT, lab.server_ip, str(HTTP_PORT))
    assert r.stdout.split() == ["203", "206", "200"], r.stderr
    r = run_in(lab.client, "curl", "-s", "-H", "Content-Length: 0005", "--data-binary", "hello", f"{url}/zeros")
    assert r.stdout == "got hello\n", r.stderr
    # conflicting Content-Length: this server reads the first; kstap refuses the request, but reports it
    r = run_in(lab.client, "curl", "-s", "-m", "5", "-H", "Content-Length: 5", "-H", "Content-Length: 6",
               "--data-binary", "hello", f"{url}/conflict")
    assert r.stdout == "got hello\n", r.stderr
    harness.settle(path, minimum=20)
    assert cap.stop() == 0

    entries = dissect(kstap_proc, path)
    got = sorted((e["path"], e.get("status"), e.get("error"), e.get("authority")) for e in entries)
    assert got == [("/conflict", None, "malformed", lab.server_ip + f":{HTTP_PORT}"),
                   ("/item/3", 203, None, "lf.test"), ("/item/4", 206, None, "mixed.test"),
                   ("/lf", 200, None, "lf.test"), ("/zeros", 200, None, lab.server_ip + f":{HTTP_PORT}")]
    # tshark reads the same requests and answers; the conflicting one it cannot frame either (it takes the
    # last Content-Length and waits for a byte that never comes): it shows only a PDU never reassembled
    t_req = messages(wireshark.fields(path, "http.request.method", "http.request.uri", display_filter="http.request"))
    assert Counter(u for _, u in t_req) == Counter(e["path"] for e in entries if "error" not in e)
    assert wireshark.fields(path, "http.request.method", display_filter='frame contains "POST /conflict"') == [[""]]
    t_resp = responses(wireshark, path)
    assert {(urlsplit(u).path, int(c)) for u, c in t_resp if u} == {
        (e["path"], e["status"]) for e in entries if "error" not in e}


# -- HTTP/2 ----------------------------------------------------------------------------------------

H2_PORT, NGHTTPD_PORT = 8443, 8444


def h2_frames(wireshark, path: Path) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(type, length) of every HTTP/2 frame tshark reads."""
    r = wireshark.run("tshark", "-n", "-r", str(path), "-d", f"tcp.port=={H2_PORT},http2", "-d",
                      f"tcp.port=={NGHTTPD_PORT},http2", "-T", "fields", "-e", "http2.type", "-e", "http2.length")
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        types, _, lengths = line.partition("\t")
        if types:
            out += [(int(t), int(n)) for t, n in zip(types.split(","), lengths.split(","), strict=True)]
    return out


def test_http2_large_frames_from_real_peers(harness, kstap_proc, wireshark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = harness.lab
    (tmp_path / "h2app.py").write_text(H2_APP)
    lab.spawn(lab.server, [sys.executable, "-m", "hypercorn", "--bind", f"{lab.server_ip}:{H2_PORT}", "h2app:app"],
              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "file").write_bytes(b"N" * 100_000)
    lab.spawn(lab.server, ["nghttpd", "--no-tls", "-a", lab.server_ip, "-d", str(docroot), str(NGHTTPD_PORT)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(lab, f"http://{lab.server_ip}:{H2_PORT}/", "--http2-prior-knowledge")
    wait_http(lab, f"http://{lab.server_ip}:{NGHTTPD_PORT}/file", "--http2-prior-knowledge")
    path = tmp_path / "h2.pcap"
    cap = harness.tcpdump(path, f"tcp port {H2_PORT} or tcp port {NGHTTPD_PORT}", "-B", "16384")
    # nghttp2's client announces SETTINGS_MAX_FRAME_SIZE 1 MiB (-f) and large windows: hypercorn answers
    # each request with one 300 kB DATA frame, legal after that SETTINGS
    r = run_in(lab.client, "h2load", "-n", "4", "-c", "1", "-m", "1", "-f", "1M", "-w", "24", "-W", "24",
               f"http://{lab.server_ip}:{H2_PORT}/big")
    assert "4 succeeded" in r.stdout, r.stdout + r.stderr
    r = run_in(lab.client, "nghttp", "-n", "-w", "20", f"http://{lab.server_ip}:{NGHTTPD_PORT}/file",
               f"http://{lab.server_ip}:{NGHTTPD_PORT}/file?again", f"http://{lab.server_ip}:{NGHTTPD_PORT}/nosuch")
    assert r.returncode == 0, r.stderr
    harness.settle(path, minimum=30)
    assert cap.stop() == 0
    assert "\n0 packets dropped by kernel" in cap.stderr, cap.stderr

    frames = h2_frames(wireshark, path)
    assert sum(1 for t, n in frames if t == 0 and n > 16384) >= 4  # tshark sees the large DATA frames
    entries = dissect(kstap_proc, path)
    assert all(e["protocol"] == "http/2" and "error" not in e for e in entries), entries
    big = [e for e in entries if e["server"].endswith(f":{H2_PORT}")]
    assert [(e["path"], e["status"]) for e in big] == [("/big", 200)] * 4
    assert all(e["response_bytes"] >= BIG for e in big)
    small = sorted((e["path"], e["status"]) for e in entries if e["server"].endswith(f":{NGHTTPD_PORT}"))
    assert small == [("/file", 200), ("/file?again", 200), ("/nosuch", 404)]
    # tshark: the same streams, paths and statuses
    r = wireshark.run("tshark", "-n", "-r", str(path), "-d", f"tcp.port=={H2_PORT},http2", "-d",
                      f"tcp.port=={NGHTTPD_PORT},http2", "-Y", "http2.headers.status", "-T", "fields",
                      "-e", "tcp.srcport", "-e", "http2.headers.status")
    rows = (line.split("\t") for line in r.stdout.splitlines())
    t_status = Counter((int(port), int(status)) for port, statuses in rows for status in statuses.split(","))
    assert t_status == Counter((int(e["server"].rsplit(":", 1)[1]), e["status"]) for e in entries)
