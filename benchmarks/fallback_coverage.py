"""What the classic-filter fallback gives up against the in-kernel flow table, on simulated traffic.

    .venv/bin/python benchmarks/fallback_coverage.py [--flows 20000] [--tcp 0.5] [--seconds 40]

Flows start uniformly over the run and live LIFE seconds with a packet every 0.1 s; a share of them
is TCP (a SYN first). Auto mode's rate rises from 0.1 by 0.05 a second (the controller's raise slew)
with no limit in sight. Both tables run the real code:

- kernel table: each flow is decided at its first packet against the rate then in force
  (what kstap/sampling/kernel_table.py does in the kernel);
- fallback: the kernel passes only hashes under the ceiling (FlowSampler.ceiling()), the user-space
  table decides what reaches it, and in a range the ceiling opened less than an idle timeout ago only
  a TCP SYN is admitted (FlowSampler._midway).

Reported: flows kept, complete flows among them, and the share of the kernel table's kept flows the
fallback keeps.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dpkt

from kstap.sampling.flowhash import flow_hash, threshold
from kstap.sampling.flowkey import flow_key
from kstap.sampling.sampler import FlowSampler

SEED = 7


def packet(i: int, tcp: bool, first: bool) -> bytes:
    src, dst = struct.pack("!I", 0x0A000000 + (i >> 16)), b"\x0a\x63\x00\x01"
    sport = 1024 + (i & 0xFFFF) % 60000
    l4: object = (dpkt.tcp.TCP(sport=sport, dport=80, flags=0x02 if first else 0x18, data=b"" if first else b"x")
                  if tcp else dpkt.udp.UDP(sport=sport, dport=53, data=b"x"))
    return bytes(dpkt.ethernet.Ethernet(type=0x800, data=dpkt.ip.IP(src=src, dst=dst, p=6 if tcp else 17, data=l4)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--tcp", type=float, default=0.5, help="share of flows that are TCP")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--life", type=float, default=3.0)
    ap.add_argument("--idle", type=float, default=60.0, help="the flow table's idle timeout, s")
    args = ap.parse_args()
    rnd = random.Random(1)
    flows = []
    for i in range(args.flows):
        tcp = rnd.random() < args.tcp
        start = rnd.uniform(0, args.seconds)
        first, rest = packet(i, tcp, True), packet(i, tcp, False)
        key = flow_key(first)
        assert key is not None
        flows.append((start, tcp, first, rest, flow_hash(key, SEED)))
    events = sorted((start + k * 0.1, n, k) for n, (start, *_rest) in enumerate(flows)
                    for k in range(int(args.life / 0.1)))
    sampler = FlowSampler("auto", 0.1, SEED, idle_timeout_ns=int(args.idle * 1e9))
    ceiling = sampler.ceiling(now_ns=0)
    ideal: dict[int, bool] = {}
    got: dict[int, int] = {}
    tick = 1.0
    for t, n, k in events:
        while t >= tick:  # the controller raises the rate; the kernel gets the new ceiling
            sampler.set_rate(min(1.0, 0.1 + 0.05 * tick), "slew")
            sampler.expire(int(tick * 1e9))
            ceiling = sampler.ceiling(now_ns=int(tick * 1e9))
            tick += 1.0
        _, tcp, first, rest, h = flows[n]
        if k == 0:
            ideal[n] = h < threshold(sampler.rate)
        if h >= ceiling:
            continue  # the classic filter rejects it in the kernel
        raw = first if k == 0 else rest
        kept, _ = sampler.admit([(int(t * 1e9), len(raw), len(raw), raw, 0, 0)])
        if kept:
            got[n] = got.get(n, 0) + 1
    per_flow = int(args.life / 0.1)
    complete = sum(c == per_flow for c in got.values())
    kept_ideal = sum(ideal.values())
    for kind, want in (("all", None), ("tcp", True), ("udp", False)):
        ids = [n for n in range(args.flows) if want is None or flows[n][1] == want]
        k_ideal = sum(ideal[n] for n in ids)
        k_fb = sum(n in got for n in ids)
        print(f"{kind:4}: kernel table keeps {k_ideal:6,} flows; fallback keeps {k_fb:6,} "
              f"({k_fb / k_ideal if k_ideal else 0:.1%} of them)")
    print(f"fallback: {complete:,} of {len(got):,} kept flows complete; refused mid-way "
          f"{sampler.stats.refused_midway:,}; kernel table kept {kept_ideal:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
