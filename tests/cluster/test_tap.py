"""`kstap tap -n NS -w f.pcapng --entries e.ndjson` on the real cluster, as the README shows it."""

from __future__ import annotations

import collections
import json
import secrets
from pathlib import Path

import pytest
from e2e import APP_NS, NODES, Apps, exec_in, http_requests, interface_names, kget, tap, tshark


def cross_and_local_traffic(apps: Apps, tag: str, n: int = 5) -> dict[str, list[str]]:
    """HTTP/1 requests client-1 → http-2 and client-2 → http-1 (across nodes) and client-1 → http-1 (same
    node), h2c and DNS across nodes; returns the HTTP paths by kind."""
    paths = {"cross": [f"{tag}-x{i}" for i in range(2 * n)], "local": [f"{tag}-l{i}" for i in range(n)]}
    http_requests("client-1", apps.ip("http-2"), paths["cross"][:n])
    http_requests("client-2", apps.ip("http-1"), paths["cross"][n:])
    http_requests("client-1", apps.ip("http-1"), paths["local"])
    exec_in("client-1", f"curl -s -o /dev/null -m 5 --http2-prior-knowledge http://{apps.ip('h2c-2')}:8081/{tag}-h2")
    exec_in("client-2", f"dig @{apps.ip('dns-1')} +tries=1 +time=2 +short {tag}.kstap.test")
    return paths


def test_tap_namespace_full(apps: Apps, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    sent: dict[str, list[str]] = {}
    run = tap(["-n", APP_NS], during=lambda: sent.update(cross_and_local_traffic(apps, tag)), duration=25,
              tmp=tmp_path)
    assert run.code == 0, run.err
    # one IDB per node, and tshark reads the file
    names = interface_names(run.pcap)
    assert names == [f"{n}/any" for n in NODES], names
    # each request's packet once per node that hosts an end of it: both vantage points of a cross-node
    # request (its copies on the veth, the bridge and the uplink of one node folded into one)
    seen = http_request_interfaces(run.pcap)
    for p in sent["cross"]:
        assert sorted(seen[p]) == NODES, (p, seen[p])
    for p in sent["local"]:
        assert seen[p] == [f"{apps.node('http-1')}/any".split("/")[0]], (p, seen[p])
    # the entries: each HTTP request exactly once, a cross-node one with both nodes
    entries = [e for e in run.entry_list() if (e.get("path") or "").lstrip("/").startswith(tag)]
    by_path = collections.Counter((e["path"] or "").lstrip("/") for e in entries)
    for p in sent["cross"] + sent["local"]:
        assert by_path[p] == 1, (p, by_path, run.err)
    for e in entries:
        p = e["path"].lstrip("/")
        if p in sent["cross"]:
            assert sorted(e["nodes"]) == NODES, e
        elif p in sent["local"]:
            assert e["nodes"] == [apps.node("http-1")], e
    kinds = {e["protocol"] for e in run.entry_list()}
    assert {"http/1.1", "http/2", "dns"} <= kinds, kinds
    # the workers ran from the image built from the Dockerfile, and are gone again
    assert not kget("daemonsets", "-n", "kstap")["items"] if _ns_exists("kstap") else True


def http_request_interfaces(pcap: Path) -> dict[str, list[str]]:
    """URI → the nodes of the interfaces its request packet is on, one item per copy (tshark without its
    retransmission analysis: a second vantage point's copy is dissected too)."""
    lines = tshark("-r", str(pcap), "-o", "tcp.analyze_sequence_numbers:FALSE", "-Y", "http.request", "-T",
                   "fields", "-e", "frame.interface_name", "-e", "http.request.uri").splitlines()
    seen: dict[str, list[str]] = collections.defaultdict(list)
    for line in lines:
        iface, _, uri = line.partition("\t")
        seen[uri.lstrip("/")].append(iface.split("/")[0])
    return seen


def _ns_exists(ns: str) -> bool:
    from e2e import kubectl

    return kubectl("get", "namespace", ns, check=False).returncode == 0


@pytest.mark.parametrize("mode", ["percentage", "auto"])
def test_tap_all_namespaces_regex_sampled(apps: Apps, tmp_path: Path, mode: str) -> None:
    """`-A -e NS` with a pod regex, in percentage and auto mode: only the matching pods, merged, readable."""
    tag = secrets.token_hex(3)
    args = ["^(http|client)-", "-A", "-e", "kube-system", "-e", "default", "--mode", mode]
    if mode == "percentage":
        args += ["--rate", "0.5", "--seed", "0x5eed"]
    def traffic() -> None:
        cross_and_local_traffic(apps, tag, n=8)
        # between two pods the regex does not match: must not be captured
        exec_in("h2c-1", f"dig @{apps.ip('dns-2')} +tries=1 +time=2 +short {tag}-other.kstap.test")

    run = tap(args, during=traffic, duration=25, tmp=tmp_path)
    assert run.code == 0, run.err
    assert interface_names(run.pcap) == [f"{n}/any" for n in NODES]
    start = [e for e in run.events if e.get("event") == "start"]
    assert start and start[0]["mode"] == mode, start
    assert any(e.get("event") == "summary" for e in run.events)
    uris = tshark("-r", str(run.pcap), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri").split()
    names = tshark("-r", str(run.pcap), "-Y", "dns", "-T", "fields", "-e", "dns.qry.name").split()
    assert not any("-other." in n for n in names), names  # h2c-1 -> dns-2: neither end is a target
    if mode == "percentage":
        kept = {u.lstrip("/") for u in uris if u.lstrip("/").startswith(tag)}
        assert 0 < len(kept) < 21, kept  # a sample of the 21 requests: some flows, not all
    json.dumps(run.events)  # the events are JSON all the way
