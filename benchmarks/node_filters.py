"""Per-node filter size and build time for 10 … 10,000 target pod IPs, and which fallback applies.

    .venv/bin/python benchmarks/node_filters.py [--user-filter tcp] [--sizes 10,100,1000,10000]

Two IP layouts: *dense* (consecutive addresses, as a node's podCIDR hands them out) and *sparse*
(random in 10.0.0.0/8, the worst case for CIDR aggregation). Time is :func:`kstap.kube.nodefilter.node_filter`
end to end (libpcap compiles, with its optimizer, included). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kstap.kube.nodefilter import node_filter


def layouts(n: int, rng: random.Random) -> dict[str, list[str]]:
    base = int(ipaddress.ip_address("10.244.0.2"))
    dense = [str(ipaddress.ip_address(base + i)) for i in range(n)]
    sparse = sorted({str(ipaddress.ip_address((10 << 24) + rng.randrange(1 << 24))) for _ in range(n)})
    return {"dense": dense, "sparse": sparse}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--user-filter", default="tcp")
    ap.add_argument("--sizes", default="10,100,1000,10000")
    args = ap.parse_args()
    rng = random.Random(6)
    print("| layout | pod IPs | strategy | CIDR blocks | instructions | build time | extra addresses |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for n in (int(x) for x in args.sizes.split(",")):
        for name, ips in layouts(n, rng).items():
            t0 = time.perf_counter()
            nf = node_filter(args.user_filter, ips)
            ms = (time.perf_counter() - t0) * 1000
            print(f"| {name} | {len(ips)} | {nf.strategy} | {len(nf.networks) or '-'} | {nf.instructions} "
                  f"| {ms:.0f} ms | {nf.extra_addresses} |")


if __name__ == "__main__":
    main()
