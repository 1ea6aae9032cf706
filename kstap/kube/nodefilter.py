"""Each node's capture filter: the user's expression and that node's target pod IPs.

``(USER) and (ip host A or ip host B or ip6 host C …)`` — ``ip host``/``ip6 host`` rather than plain
``host``: plain ``host`` also matches ARP/RARP, which makes libpcap's optimizer take seconds for a
few hundred hosts (500 hosts: 8 s against 0.1 s) and is not pod traffic anyway.

Each IPv4 host costs about 4 classic BPF instructions, so about a thousand pod IPs fit the kernel's
4096. Past that the IPs are aggregated into the CIDR set with the least extra address space that
fits (greedy merging of neighbours); if even that does not fit (or the user's expression leaves no
room), the kernel filter is the user's expression alone and the IP set must be checked in user space.
The returned :class:`NodeFilter` says which of these applied, and why, in ``note``.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from dataclasses import dataclass

from kstap.errors import UsageError
from kstap.filters.bpf import BPF_MAXINSNS, compile_filter
from kstap.model import LINKTYPE_ETHERNET

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MATCH_NOTHING = "less 0"
"""A filter no real packet passes (libpcap refuses 'ip and not ip' as rejecting everything)."""

COST_V4 = 4
"""Approximate instructions per IPv4 host or network term, measured with libpcap 1.10."""
COST_V6 = 10
"""Approximate instructions per IPv6 term (four 32-bit words per address)."""


@dataclass(frozen=True)
class NodeFilter:
    """The filter one node's worker attaches, and how it was arrived at."""

    expression: str
    """What the worker compiles and attaches in the kernel."""
    strategy: str
    """``hosts``: exactly the target IPs. ``cidrs``: IPs aggregated into ``networks`` (the kernel lets a
    few non-target addresses through). ``user-space``: the kernel filter holds only the user's
    expression; the worker must check ``ips`` itself. ``none``: no target left on the node."""
    ips: tuple[str, ...]
    """The exact target IPs of the node (for a user-space check)."""
    instructions: int
    """Length of the compiled program (0 when not compiled: ``user-space`` with no expression)."""
    networks: tuple[str, ...] = ()
    """The CIDR blocks in ``expression`` (``cidrs`` only)."""
    extra_addresses: int = 0
    """Addresses inside ``networks`` that are not targets (``cidrs`` only)."""
    note: str | None = None
    """Why a fallback applied, in one sentence for people."""

    @property
    def kernel_exact(self) -> bool:
        """True when the kernel filter alone selects exactly the target IPs."""
        return self.strategy in ("hosts", "none") or (self.strategy == "cidrs" and self.extra_addresses == 0)


def _combine(user: str, terms: str) -> str:
    return f"({user}) and ({terms})" if user else terms


def _host_terms(addrs: list[IPAddress]) -> str:
    return " or ".join(f"ip{'6' if a.version == 6 else ''} host {a}" for a in addrs)


def _net_terms(nets: list[IPNetwork]) -> str:
    out = []
    for n in nets:
        proto = "ip6" if n.version == 6 else "ip"
        full = n.prefixlen == n.max_prefixlen
        out.append(f"{proto} host {n.network_address}" if full else f"{proto} net {n}")
    return " or ".join(out)


def _cost(addrs: list[IPAddress] | list[IPNetwork]) -> int:
    return sum(COST_V6 if a.version == 6 else COST_V4 for a in addrs)


def _compile_length(expression: str, linktype: int, limit: int) -> tuple[bool, int | None]:
    """(fits within ``limit``, instructions) — the count is None if libpcap did not say."""
    try:
        program = compile_filter(expression, linktype=linktype)
    except UsageError as exc:
        m = re.search(r"compiles to (\d+) BPF instructions", exc.message)
        if m is None:
            raise
        return False, int(m.group(1))
    return len(program.insns) <= limit, len(program.insns)


def node_filter(user_expression: str, ips: list[str] | tuple[str, ...], *, linktype: int = LINKTYPE_ETHERNET,
                limit: int = BPF_MAXINSNS) -> NodeFilter:
    """The filter for a node whose target pods have ``ips``: ``(user) and (ip host a or …)``.

    ``limit`` is the instruction budget (the kernel's 4096; lower it for kernels whose
    ``net.core.optmem_max`` is small). An invalid ``user_expression`` raises :class:`UsageError`.
    """
    user = user_expression.strip()
    base = len(compile_filter(user, linktype=linktype).insns) if user else 0  # the user's own errors first
    addrs = sorted({ipaddress.ip_address(ip) for ip in ips}, key=lambda a: (a.version, int(a)))
    exact = tuple(str(a) for a in addrs)
    if not addrs:
        expr = MATCH_NOTHING
        return NodeFilter(expr, "none", (), len(compile_filter(expr, linktype=linktype).insns),
                          note="no target pod on this node: capture nothing")
    if base + _cost(addrs) <= limit * 1.1:  # predicted to fit (the prediction is rough, so compile)
        expr = _combine(user, _host_terms(addrs))
        fits, n = _compile_length(expr, linktype, limit)
        if fits and n is not None:
            return NodeFilter(expr, "hosts", exact, n)
    budget = max(1, (limit - base) // COST_V4)
    families = len({a.version for a in addrs})
    for _ in range(8):
        if budget < families:
            break
        nets = aggregate(addrs, budget)
        expr = _combine(user, _net_terms(nets))
        fits, n = _compile_length(expr, linktype, limit)
        if fits and n is not None:
            extra = sum(net.num_addresses for net in nets) - len(addrs)
            also = f", which also let through {extra} other addresses" if extra else " (exactly the pod IPs)"
            note = (f"{len(addrs)} pod IPs exceed the {limit}-instruction BPF limit as single hosts: "
                    f"aggregated into {len(nets)} CIDR blocks{also}")
            return NodeFilter(expr, "cidrs", exact, n, tuple(str(x) for x in nets), extra, note)
        shrink = min(0.9, limit / n * 0.97) if n else 0.75
        budget = min(len(nets) - 1, int(len(nets) * shrink))
    expr = user
    n = len(compile_filter(expr, linktype=linktype).insns) if expr else 0
    note = (f"{len(addrs)} pod IPs do not fit the {limit}-instruction BPF limit even as CIDR blocks: "
            "the kernel filter is only the --bpf-filter expression and the IP set is filtered in user space")
    return NodeFilter(expr, "user-space", exact, n, note=note)


# -- CIDR aggregation ----------------------------------------------------------------------------
def _supernet(a: IPNetwork, b: IPNetwork) -> IPNetwork:
    """The smallest network holding both ``a`` and ``b`` (same family)."""
    lo, hi = int(a.network_address), int(b.broadcast_address)
    bits = a.max_prefixlen
    common = bits - (lo ^ hi).bit_length()
    plen = min(a.prefixlen, b.prefixlen, common)
    return ipaddress.ip_network((lo >> (bits - plen) << (bits - plen), plen)) if plen < bits else a


def aggregate(addrs: list[IPAddress], max_networks: int) -> list[IPNetwork]:
    """At most ``max_networks`` CIDR blocks covering every address, with little extra space.

    Exact merges first (``collapse_addresses``); then, greedily, the two neighbouring blocks whose
    common supernet adds the fewest addresses are merged, until the count fits. Families never mix, so
    the result has at least one block per address family present.
    """
    nets: list[IPNetwork] = []
    for version in (4, 6):
        fam = [a for a in addrs if a.version == version]
        nets.extend(ipaddress.collapse_addresses([ipaddress.ip_network(a) for a in fam]))  # type: ignore[type-var]
    if len(nets) <= max_networks:
        return nets
    alive = list(nets)
    nxt = list(range(1, len(nets) + 1))
    prv = list(range(-1, len(nets) - 1))
    dead = [False] * len(nets)
    gen = [0] * len(nets)
    heap: list[tuple[int, int, int, int, int]] = []

    def push(i: int) -> None:
        j = nxt[i]
        if j < len(alive) and alive[i].version == alive[j].version:
            s = _supernet(alive[i], alive[j])
            cost = s.num_addresses - alive[i].num_addresses - alive[j].num_addresses
            heapq.heappush(heap, (cost, i, j, gen[i], gen[j]))

    for i in range(len(alive) - 1):
        push(i)
    count = len(alive)
    while count > max_networks and heap:
        _, i, j, gi, gj = heapq.heappop(heap)
        if dead[i] or dead[j] or gen[i] != gi or gen[j] != gj or nxt[i] != j:
            continue
        merged = _supernet(alive[i], alive[j])
        dead[j] = True
        count -= 1
        k = nxt[j]
        while k < len(alive) and alive[k].version == merged.version and alive[k].subnet_of(merged):  # type: ignore[arg-type]
            dead[k] = True
            count -= 1
            k = nxt[k]
        p = prv[i]
        while p >= 0 and alive[p].version == merged.version and alive[p].subnet_of(merged):  # type: ignore[arg-type]
            dead[p] = True
            count -= 1
            p = prv[p]
        alive[i] = merged
        gen[i] += 1
        nxt[i] = k
        if k < len(alive):
            prv[k] = i
        prv[i] = p
        if p >= 0:
            nxt[p] = i
            push(p)
        push(i)
    return [n for n, d in zip(alive, dead, strict=True) if not d]
