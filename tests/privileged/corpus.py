"""Real peers for the fidelity corpus (tests/privileged/test_dissect_corpus.py), started in a lab.

Knot DNS (authoritative: DNSSEC-signed zones with NSEC and with NSEC3, a TSIG-guarded dynamic zone),
unbound (recursive: NXDOMAIN through real recursion into Knot, REFUSED from a refusing local zone),
and the comparison with tshark that every corpus test shares. Configuration files are written into
the test's tmp directory; the daemons run in the foreground so the lab stops them by PID.
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

from kstap.demo.lab import Lab

TSIG_NAME = "kstap-update."
TSIG_SECRET = base64.b64encode(b"kstap corpus tsig secret 32 byte").decode()

# Every record type the issue lists, in zone-file syntax Knot reads (TXT carries bytes that are not
# UTF-8; one owner name carries a byte that is not printable). Knot 3.2 has no WKS syntax: the WKS
# record (10.9.0.1, TCP, ports 25 and 80) is written in RFC 3597's generic form, served as type 11.
ZONE_RECORDS = r"""
@        3600 IN SOA  ns1 hostmaster 1 3600 600 86400 300
@        3600 IN NS   ns1
ns1      3600 IN A    {ip}
www      3600 IN A    10.9.0.1
www      3600 IN AAAA fd00::1
@        3600 IN MX   10 mail
mail     3600 IN A    10.9.0.2
@        3600 IN TXT  "plain text" "bytes \255\254\128 that are not UTF-8"
@        3600 IN SPF  "v=spf1 ip4:10.9.0.0/24 -all"
@        3600 IN CAA  0 issue "ca.example.net"
@        3600 IN HTTPS 1 . alpn="h2,http/1.1" port=8443
svc      3600 IN SVCB 1 svc-target.example.net. alpn="h2" port=8080
@        3600 IN NAPTR 100 10 "S" "SIP+D2U" "" _sip._udp
www      3600 IN SSHFP 4 2 123456789abcdef67890123456789abcdef67890123456789abcdef123456789
@        3600 IN LOC  52 22 23.000 N 4 53 32.000 E -2.00m 0.00m 10000m 10m
@        3600 IN TYPE11 \# 16 0a090001 06 00000040000000000000 80
_sip._udp 3600 IN SRV 0 5 5060 www
odd\007name 3600 IN A 10.9.0.7
sub      3600 IN NS   ns.sub
ns.sub   3600 IN A    10.9.0.8
sub      3600 IN DS   12345 13 2 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"""

KNOT_CONF = """
server:
    rundir: "{dir}"
    listen: {ip}@53
    tcp-workers: 1
    udp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{dir}"
key:
  - id: {tsig}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: update
    key: {tsig}
    action: update
policy:
  - id: nsec
    algorithm: ecdsap256sha256
    nsec3: off
  - id: nsec3
    algorithm: ecdsap256sha256
    nsec3: on
    nsec3-iterations: 0
    nsec3-salt-length: 0
template:
  - id: default
    storage: "{dir}"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: signed.test
    file: signed.test.zone
    dnssec-signing: on
    dnssec-policy: nsec
  - domain: nsec3.test
    file: nsec3.test.zone
    dnssec-signing: on
    dnssec-policy: nsec3
  - domain: dyn.test
    file: dyn.test.zone
    acl: update
"""

UNBOUND_CONF = """
server:
    interface: {ip}
    port: 53
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 0.0.0.0/0 allow
    module-config: "iterator"
    do-not-query-localhost: no
    num-threads: 1
    local-zone: "test." nodefault
    local-zone: "refused.test." refuse
stub-zone:
    name: "signed.test."
    stub-addr: {upstream}
"""


def write_zones(directory: Path, ip: str) -> None:
    records = ZONE_RECORDS.format(ip=ip)
    for zone in ("signed.test", "nsec3.test", "dyn.test"):
        (directory / f"{zone}.zone").write_text(f"$ORIGIN {zone}.\n$TTL 3600\n{records}")


def start_knot(lab: Lab, directory: Path, ip: str) -> subprocess.Popen[bytes]:
    """knotd in the foreground in the server namespace; returns once it answers (zones signed)."""
    write_zones(directory, ip)
    conf = directory / "knot.conf"
    conf.write_text(KNOT_CONF.format(dir=directory, ip=ip, tsig=TSIG_NAME, secret=TSIG_SECRET))
    p = lab.spawn(lab.server, ["knotd", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_answers(lab, ip, "nsec3.test", "NSEC3PARAM", p)
    return p


def start_unbound(lab: Lab, directory: Path, ip: str, upstream: str) -> subprocess.Popen[bytes]:
    conf = directory / "unbound.conf"
    conf.write_text(UNBOUND_CONF.format(dir=directory, ip=ip, upstream=upstream))
    p = lab.spawn(lab.server, ["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE)
    _wait_answers(lab, ip, "refused.test", "A", p)
    return p


def _wait_answers(lab: Lab, ip: str, name: str, rtype: str, p: subprocess.Popen[bytes]) -> None:
    """Poll with kdig from the server namespace (never captured: the capture starts afterwards)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if p.poll() is not None:
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            raise AssertionError(f"DNS server exited ({p.returncode}): {err}")
        r = subprocess.run(["ip", "netns", "exec", lab.server, "kdig", f"@{ip}", "+time=1", "+retry=0", name,
                            rtype], capture_output=True, text=True, timeout=10)
        if "status: REFUSED" in r.stdout or ("status: NOERROR" in r.stdout and "ANSWER: 0;" not in r.stdout):
            return
        time.sleep(0.3)
    raise AssertionError(f"no answer for {name} {rtype} from {ip}")


# -- HTTP/1 ----------------------------------------------------------------------------------------

STATUSES = (200, 201, 202, 203, 206, 207, 208, 226, 250, 299)
"""``/item/N`` answers STATUSES[N % 10]: a response paired with the wrong request shows."""

HTTP1_SERVER = r'''
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
STATUSES = __STATUSES__
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # head and body go as they are written: two segments, no Nagle wait
    def log_message(self, *args):
        pass
    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/blob/"):  # /blob/SIZE: SIZE bytes of body
            self._answer(200, b"b" * int(self.path.rsplit("/", 1)[1].split("?")[0]))
            return
        n = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/item/") else 0
        self._answer(STATUSES[n % 10], b"item %d\n" % n)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))  # int("005") == 5
        self._answer(200, b"got " + body + b"\n")
server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
server.timeout = 0.5
deadline = time.monotonic() + float(sys.argv[3])
print("READY", flush=True)
while time.monotonic() < deadline:
    server.handle_request()
'''.replace("__STATUSES__", repr(STATUSES))


# -- HTTP/2 ----------------------------------------------------------------------------------------

BIG = 300_000
"""Bytes of hypercorn's answer: sent as one DATA frame to a client that allows frames that large."""

H2_APP = r'''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"D" * __BIG__})
'''.replace("__BIG__", str(BIG))


def wait_http(lab: Lab, url: str, *curl_args: str) -> None:
    """Poll ``url`` with curl from the server namespace until it answers (before any capture starts)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", lab.server, "curl", "-s", "-o", "/dev/null", "-m", "2",
                            "-w", "%{http_code}", *curl_args, url], capture_output=True, text=True, timeout=10)
        if r.stdout.strip() == "200":
            return
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered")
