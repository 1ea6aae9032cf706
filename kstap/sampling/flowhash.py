"""The seeded, symmetric 32-bit flow hash — defined once, computed in Python and in classic BPF.

    endpoint(words, port) = fmix32(mixwords(seed ^ port, words))
    mixwords(h, words)    = for w in words: h = (h ^ (w·C1)) · C2;  h ^= h >> 15
    flow_hash             = fmix32((endpoint(A) + endpoint(B)) ^ proto·GOLDEN ^ seed2)

Addresses are read as big-endian 32-bit words, ports as big-endian 16-bit numbers, exactly what
BPF ``ld``/``ldh`` load. Adding the two endpoint hashes makes the result independent of direction
without sorting the endpoints (a sort costs branches in BPF). ``fmix32`` is murmur3's finalizer;
cBPF has no rotate, so the word mixer is the multiply-xorshift half of murmur3's block step.
Every step is 32-bit ALU work that classic BPF has (mul, add, xor, rsh).

Threshold selection (PSAMP hash-based selection, RFC 5475): keep a flow iff hash < rate·2³²; what
is kept at rate r is kept at every higher rate.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kstap.linklayer import ETH_IPV4, ETH_IPV6, ETH_TRANSPARENT, GENEVE_PORT, MAX_TUNNELS, VXLAN_PORTS
from kstap.sampling.flowkey import FlowKey

M32 = 0xFFFFFFFF
C1 = 0xCC9E2D51
C2 = 0x1B873593
F1 = 0x85EBCA6B
F2 = 0xC2B2AE35
GOLDEN = 0x9E3779B1
FULL = 1 << 32


def fmix32(h: int) -> int:
    """murmur3's 32-bit finalizer."""
    h ^= h >> 16
    h = (h * F1) & M32
    h ^= h >> 13
    h = (h * F2) & M32
    h ^= h >> 16
    return h


def seed2(seed: int) -> int:
    """The second constant derived from the seed (mixed into the final step)."""
    return fmix32((seed ^ GOLDEN) & M32)


def seed_id(seed: int) -> str:
    """A public name for a seed: recorded in captures instead of the seed itself."""
    return hashlib.sha256(struct.pack("!I", seed & M32)).hexdigest()[:12]


def _words(addr: bytes) -> tuple[int, ...]:
    return struct.unpack(f"!{len(addr) // 4}I", addr)


def endpoint_hash(seed: int, addr: bytes, port: int) -> int:
    h = (seed ^ port) & M32
    for w in _words(addr):
        h = ((h ^ ((w * C1) & M32)) * C2) & M32
        h ^= h >> 15
    return fmix32(h)


def flow_hash(key: FlowKey, seed: int) -> int:
    """The flow's 32-bit hash under ``seed`` (the same for both directions)."""
    e = (endpoint_hash(seed, key.a_addr, key.a_port) + endpoint_hash(seed, key.b_addr, key.b_port)) & M32
    return fmix32(e ^ ((key.proto * GOLDEN) & M32) ^ seed2(seed))


def threshold(rate: float) -> int:
    """Flows with hash < threshold are kept; 2³² (keep all) for rate ≥ 1."""
    if rate >= 1.0:
        return FULL
    return max(0, min(FULL, int(rate * FULL)))


def keeps(hash_value: int, rate: float) -> bool:
    return hash_value < threshold(rate)


# -- classic BPF -------------------------------------------------------------------------------------

Insn = tuple[int, int, int, int]

# opcodes (linux/filter.h)
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_W_IND, LD_H_IND, LD_B_IND = 0x40, 0x48, 0x50
LD_IMM, LD_LEN, LD_MEM, LDX_IMM, LDX_MEM = 0x00, 0x80, 0x60, 0x01, 0x61
ST, STX = 0x02, 0x03
ALU_ADD_K, ALU_ADD_X, ALU_MUL_K, ALU_AND_K, ALU_LSH_K, ALU_RSH_K = 0x04, 0x0C, 0x24, 0x54, 0x64, 0x74
ALU_SUB_K, ALU_SUB_X, ALU_XOR_K, ALU_XOR_X = 0x14, 0x1C, 0xA4, 0xAC
TAX, TXA = 0x07, 0x87
JA, JEQ_K, JGE_K, JSET_K, JGT_X, JGE_X = 0x05, 0x15, 0x35, 0x45, 0x2D, 0x3D
RET_K = 0x06

# scratch memory slots
M_IPOFF, M_PROTO, M_SPORT, M_DPORT, M_H, M_T, M_EA, M_L4, M_INNER, M_ET = 0, 3, 4, 5, 6, 7, 8, 9, 10, 11


class _Asm:
    """A tiny assembler with labels; conditional jumps are resolved to 8-bit forward offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int | str]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int | str = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def _rel(self, pc: int, target: int | str) -> int:
        if isinstance(target, int):
            return target
        off = self.labels[target] - pc - 1
        if not 0 <= off <= 255:
            raise ValueError(f"jump to {target} out of range ({off})")
        return off

    def build(self) -> list[Insn]:
        out: list[Insn] = []
        for pc, (code, jt, jf, k) in enumerate(self.code):
            if code == JA and isinstance(k, str):
                out.append((code, 0, 0, self.labels[k] - pc - 1))
            else:
                assert isinstance(k, int)
                out.append((code, self._rel(pc, jt), self._rel(pc, jf), k & M32))
        return out


def _fmix_asm(a: _Asm) -> None:
    """A = fmix32(A), using M_T and X."""
    for shift, mul in ((16, F1), (13, F2), (16, None)):
        a.op(ST, M_T)
        a.op(ALU_RSH_K, shift)
        a.op(TAX)
        a.op(LD_MEM, M_T)
        a.op(ALU_XOR_X)
        if mul is not None:
            a.op(ALU_MUL_K, mul)


def _jump_if_ported(a: _Asm, at: str, ported: str, other: str) -> None:
    """With the protocol number in A: to ``ported`` for TCP, UDP and SCTP (they have ports), else ``other``."""
    a.op(JEQ_K, 6, ported, at + "p17")
    a.label(at + "p17")
    a.op(JEQ_K, 17, ported, at + "p132")
    a.label(at + "p132")
    a.op(JEQ_K, 132, ported, other)


def _endpoint_asm(a: _Asm, seed: int, word_offsets: Sequence[int], port_slot: int) -> None:
    """A = endpoint_hash(seed, words at X-relative offsets, port in M[port_slot])."""
    a.op(LD_MEM, port_slot)
    a.op(ALU_XOR_K, seed & M32)
    a.op(ST, M_H)
    for off in word_offsets:
        a.op(LDX_MEM, M_IPOFF)
        a.op(LD_W_IND, off)
        a.op(ALU_MUL_K, C1)
        a.op(TAX)
        a.op(LD_MEM, M_H)
        a.op(ALU_XOR_X)
        a.op(ALU_MUL_K, C2)
        a.op(ST, M_H)
        a.op(ALU_RSH_K, 15)
        a.op(TAX)
        a.op(LD_MEM, M_H)
        a.op(ALU_XOR_X)
        a.op(ST, M_H)
    _fmix_asm(a)


SKF_AD_PROTOCOL = (-0x1000 + 0) & M32
"""Ancillary load of skb->protocol (host order): a cooked socket's frames start at the network
header, so the ethertype is not in the packet."""


def sampling_tail(seed: int, thresh: int, snaplen: int, *, cooked: bool = False) -> list[Insn]:
    """BPF that returns ``snaplen`` iff the packet's flow hash < ``thresh`` (no flow: always).

    The flow is the one :func:`kstap.sampling.flowkey.key_tuple` reads, byte for byte: the
    network header is decoded per level (the outer packet, then up to
    :data:`~kstap.linklayer.MAX_TUNNELS` VXLAN/Geneve inner packets), each level checking the
    packet length before it loads, so a short or malformed packet is never dropped by a load past
    its end (classic BPF rejects on such a load) where Python keys it or keeps it. One hash, at
    the end, reads the innermost level's slots.

    ``cooked``: for a SOCK_DGRAM packet socket (``-i any``), where the kernel filter sees the
    packet from its network header on and the ethertype comes from the skb's protocol.
    """
    a = _Asm()
    _flow_key_and_hash(a, seed, snaplen, *((None, 0) if cooked else (12, 14)))
    a.op(JGE_K, thresh, "drop", "keep")
    a.label("keep")
    a.op(RET_K, snaplen)
    a.label("drop")
    a.op(RET_K, 0)
    return a.build()


M_HASH, M_KEYED = 12, 13
"""Where :func:`hash_tail` leaves the flow hash, and 1 if the packet has a flow (0: none)."""


def hash_tail(seed: int, snaplen: int, *, ethertype_at: int | None, network_at: int) -> list[Insn]:
    """The sampling tail's flow key and hash without the decision, for the in-kernel flow table
    (translated to eBPF by :mod:`kstap.filters.cbpf_to_ebpf`): every path returns ``snaplen``,
    with M[:data:`M_KEYED`] = 1 and M[:data:`M_HASH`] = the flow hash for a packet that has a flow.

    ``ethertype_at``: the link header's protocol field (None: the skb's protocol, for a packet
    that starts at its network header); ``network_at``: where the network header starts.
    """
    a = _Asm()
    a.op(LD_IMM, 0)
    a.op(ST, M_KEYED)
    _flow_key_and_hash(a, seed, snaplen, ethertype_at, network_at)
    a.op(ST, M_HASH)
    a.op(LD_IMM, 1)
    a.op(ST, M_KEYED)
    a.op(RET_K, snaplen)
    return a.build()


def _flow_key_and_hash(a: _Asm, seed: int, snaplen: int, ethertype_at: int | None, base: int) -> None:
    """From the link header to A = the flow hash; packets without a flow return ``snaplen``."""
    # The kernel's checker wants every scratch slot written before any read on every path, and
    # it lets a path run on past a ret (the hash follows the last level's ret): give the
    # tunnel and flow slots a value up front.
    for slot in (M_L4, M_INNER, M_PROTO, M_SPORT, M_DPORT):
        a.op(ST, slot)
    # find the network header past up to two VLAN tags; X = its offset
    if ethertype_at is None:
        a.op(LD_W_ABS, SKF_AD_PROTOCOL)
    else:
        a.op(LD_LEN)
        a.op(JGE_K, base, "eth", "unkeyed")
        a.label("eth")
        a.op(LD_H_ABS, ethertype_at)
    a.op(LDX_IMM, base)
    for depth, nxt in ((1, "vlan1"), (2, "vlan2")):
        a.op(JEQ_K, 0x8100, f"tag{depth}", f"q{depth}")
        a.label(f"q{depth}")
        a.op(JEQ_K, 0x88A8, f"tag{depth}", "l0")
        a.label(f"tag{depth}")
        a.op(LD_LEN)
        a.op(JGE_K, base + 4 * depth, nxt, "unkeyed")
        a.label(nxt)
        a.op(LDX_IMM, base + 4 * depth)
        a.op(LD_H_ABS, base - 2 + 4 * depth)
    a.op(JA, "l0")
    a.label("unkeyed")
    a.op(RET_K, snaplen)  # a truncated link-layer header: no flow, kept (as linklayer decodes it)
    for level in range(MAX_TUNNELS + 1):
        a.label(f"l{level}")
        _decode(a, f"l{level}", snaplen, inner=f"l{level + 1}" if level < MAX_TUNNELS else None)
    a.label("hash")
    _hash(a, seed)


TUNNEL_PORTS = {**{port: "vx" for port in VXLAN_PORTS}, GENEVE_PORT: "gn"}
"""UDP destination ports whose payload is followed to the inner packet (VXLAN, Linux's VXLAN
default, Geneve): the same rule as :mod:`kstap.linklayer`."""


def _decode(a: _Asm, p: str, snaplen: int, *, inner: str | None) -> None:
    """A = ethertype, X = network offset (≤ the packet length) → the level's flow slots, then the
    hash; with ``inner``, a valid VXLAN/Geneve datagram goes on to that level instead.

    Slots: M_ET (ethertype: which hash), M_IPOFF, M_PROTO, M_SPORT, M_DPORT. Non-IP and a
    truncated IP header: no flow, kept. Ports only for an unfragmented TCP/UDP/SCTP packet whose
    first 4 transport bytes are in the packet (else 0, as in ``key_tuple``).
    """
    a.op(ST, M_ET)
    a.op(STX, M_IPOFF)
    a.op(JEQ_K, 0x0800, p + "v4", p + "not4")
    a.label(p + "not4")
    a.op(JEQ_K, 0x86DD, p + "v6", p + "unkeyed")
    # IPv4
    a.label(p + "v4")
    a.op(LD_LEN)
    a.op(ALU_SUB_X)
    a.op(JGE_K, 20, p + "v4hdr", p + "unkeyed")
    a.label(p + "v4hdr")
    a.op(LD_IMM, 0)
    a.op(ST, M_SPORT)
    a.op(ST, M_DPORT)
    a.op(LD_B_IND, 9)
    a.op(ST, M_PROTO)
    a.op(LD_H_IND, 6)
    a.op(ALU_AND_K, 0x3FFF)
    a.op(JEQ_K, 0, p + "v4proto", p + "hashed")  # a fragment: no ports
    a.label(p + "v4proto")
    a.op(LD_MEM, M_PROTO)
    _jump_if_ported(a, p + "v4", p + "v4ports", p + "hashed")
    a.label(p + "v4ports")
    a.op(LD_B_IND, 0)
    a.op(ALU_AND_K, 0x0F)
    a.op(ALU_LSH_K, 2)
    a.op(ALU_ADD_X)
    a.op(TAX)
    a.op(LD_LEN)
    a.op(ALU_SUB_K, 4)  # the length is ≥ 20 here: no wrap
    a.op(JGE_X, 0, p + "v4load", p + "hashed")
    a.label(p + "v4load")
    a.op(LD_H_IND, 0)
    a.op(ST, M_SPORT)
    a.op(LD_H_IND, 2)
    a.op(ST, M_DPORT)
    if inner is not None:
        a.op(STX, M_L4)
    a.op(JA, p + "tunnel" if inner is not None else p + "hashed")
    # IPv6
    a.label(p + "v6")
    a.op(LD_LEN)
    a.op(ALU_SUB_X)
    a.op(JGE_K, 40, p + "v6hdr", p + "unkeyed")
    a.label(p + "v6hdr")
    a.op(LD_IMM, 0)
    a.op(ST, M_SPORT)
    a.op(ST, M_DPORT)
    a.op(LD_B_IND, 6)
    a.op(ST, M_PROTO)
    _jump_if_ported(a, p + "v6", p + "v6ports", p + "hashed")
    a.label(p + "v6ports")
    a.op(LD_LEN)
    a.op(ALU_SUB_X)
    a.op(JGE_K, 44, p + "v6load", p + "hashed")
    a.label(p + "v6load")
    a.op(LD_H_IND, 40)
    a.op(ST, M_SPORT)
    a.op(LD_H_IND, 42)
    a.op(ST, M_DPORT)
    if inner is not None:
        a.op(TXA)
        a.op(ALU_ADD_K, 40)
        a.op(ST, M_L4)
        a.label(p + "tunnel")
        _tunnel(a, p, p + "hashed")
        a.op(JA, inner)
    a.label(p + "hashed")
    a.op(JA, "hash")
    a.label(p + "unkeyed")
    a.op(RET_K, snaplen)  # non-IP, or a truncated IP header: no flow, always kept


def _tunnel(a: _Asm, p: str, outer: str) -> None:
    """Ports loaded, M_L4 = the UDP header (≥ 4 bytes of it in the packet): a VXLAN or Geneve
    datagram whose header is valid and whole → A = inner ethertype, X = inner network offset (≤ the
    length), falling through; anything else (another port, too short, VXLAN without its I flag,
    Geneve of another version, its options past the end, a protocol other than Ethernet/IPv4/IPv6,
    a truncated inner Ethernet or VLAN header) → ``outer``: keyed as the plain UDP datagram it is,
    as :func:`kstap.linklayer.network` does."""
    a.op(LD_MEM, M_PROTO)
    a.op(JEQ_K, 17, p + "udp", outer)
    a.label(p + "udp")
    a.op(LD_MEM, M_DPORT)
    ports = list(TUNNEL_PORTS.items())
    for i, (port, kind) in enumerate(ports):
        nxt = p + f"t{i + 1}" if i + 1 < len(ports) else outer
        a.op(JEQ_K, port, p + kind, nxt)
        if i + 1 < len(ports):
            a.label(nxt)
    # VXLAN: UDP header, 8-byte VXLAN header with the I flag (a valid VNI), a whole Ethernet header
    a.label(p + "vx")
    a.op(LD_LEN)
    a.op(LDX_MEM, M_L4)
    a.op(ALU_SUB_X)
    a.op(JGE_K, 8 + 8 + 14, p + "vxlen", outer)
    a.label(p + "vxlen")
    a.op(LD_B_IND, 8)
    a.op(JSET_K, 0x08, p + "vxok", outer)
    a.label(p + "vxok")
    _advance_x(a, 16)
    a.op(JA, p + "eth")
    # Geneve: version 0, options inside the packet, then Ethernet (0x6558), IPv4 or IPv6
    a.label(p + "gn")
    a.op(LD_LEN)
    a.op(LDX_MEM, M_L4)
    a.op(ALU_SUB_X)
    a.op(JGE_K, 8 + 8, p + "gnlen", outer)
    a.label(p + "gnlen")
    a.op(LD_B_IND, 8)
    a.op(JGE_K, 0x40, outer, p + "gv0")  # version (top 2 bits) 0 only
    a.label(p + "gv0")
    a.op(ALU_AND_K, 0x3F)
    a.op(ALU_LSH_K, 2)
    a.op(ALU_ADD_X)
    a.op(ALU_ADD_K, 16)
    a.op(ST, M_INNER)
    a.op(LD_LEN)
    a.op(LDX_MEM, M_INNER)
    a.op(JGT_X, 0, p + "gnbody", outer)  # at least one byte past the options
    a.label(p + "gnbody")
    a.op(LDX_MEM, M_L4)
    a.op(LD_H_IND, 10)
    a.op(LDX_MEM, M_INNER)
    a.op(JEQ_K, ETH_IPV4, p + "found", p + "gn6")
    a.label(p + "gn6")
    a.op(JEQ_K, ETH_IPV6, p + "found", p + "gneth")
    a.label(p + "gneth")
    a.op(JEQ_K, ETH_TRANSPARENT, p + "gnethlen", outer)
    a.label(p + "gnethlen")
    a.op(LD_LEN)
    a.op(ALU_SUB_K, 14)  # the length is ≥ 16 here: no wrap
    a.op(JGE_X, 0, p + "eth", outer)
    # X = inner Ethernet header (whole): its ethertype, then up to two VLAN tags, each checked
    a.label(p + "eth")
    _load_h_and_advance_x(a, 12, 14)
    for depth in (1, 2):
        a.op(JEQ_K, 0x8100, p + f"tag{depth}", p + f"q{depth}")
        a.label(p + f"q{depth}")
        a.op(JEQ_K, 0x88A8, p + f"tag{depth}", p + "found")
        a.label(p + f"tag{depth}")
        a.op(LD_LEN)
        a.op(ALU_SUB_X)
        a.op(JGE_K, 4, p + f"tagok{depth}", outer)
        a.label(p + f"tagok{depth}")
        _load_h_and_advance_x(a, 2, 4)
    a.label(p + "found")


def _advance_x(a: _Asm, n: int) -> None:
    """X += n (classic BPF adds only to A)."""
    a.op(TXA)
    a.op(ALU_ADD_K, n)
    a.op(TAX)


def _load_h_and_advance_x(a: _Asm, at: int, n: int) -> None:
    """A = the halfword at X + at, then X += n (A is parked in M_T meanwhile)."""
    a.op(LD_H_IND, at)
    a.op(ST, M_T)
    _advance_x(a, n)
    a.op(LD_MEM, M_T)


def _hash(a: _Asm, seed: int) -> None:
    """The flow slots of the innermost level → A = the flow hash."""
    a.op(LD_MEM, M_ET)
    a.op(JEQ_K, 0x86DD, "h6", "h4")
    a.label("h4")
    _endpoint_asm(a, seed, [12], M_SPORT)
    a.op(ST, M_EA)
    _endpoint_asm(a, seed, [16], M_DPORT)
    a.op(JA, "combine")
    a.label("h6")
    _endpoint_asm(a, seed, [8, 12, 16, 20], M_SPORT)
    a.op(ST, M_EA)
    _endpoint_asm(a, seed, [24, 28, 32, 36], M_DPORT)
    # A + M_EA, ^ proto·GOLDEN ^ seed2, fmix
    a.label("combine")
    a.op(LDX_MEM, M_EA)
    a.op(ALU_ADD_X)
    a.op(ST, M_T)
    a.op(LD_MEM, M_PROTO)
    a.op(ALU_MUL_K, GOLDEN)
    a.op(TAX)
    a.op(LD_MEM, M_T)
    a.op(ALU_XOR_X)
    a.op(ALU_XOR_K, seed2(seed))
    _fmix_asm(a)


@dataclass(frozen=True)
class SampledProgram:
    """A user filter with the sampling tail spliced in."""

    insns: tuple[Insn, ...]
    threshold: int


def splice(filter_insns: Sequence[Insn], seed: int, rate: float) -> SampledProgram:
    """Replace every accepting ``ret #k`` of a libpcap program by a jump to the sampling tail."""
    return splice_threshold(filter_insns, seed, threshold(rate))


def splice_threshold(filter_insns: Sequence[Insn], seed: int, thresh: int, *,
                     cooked: bool = False) -> SampledProgram:
    """:func:`splice` with the hash threshold given directly (the flow table's ceiling);
    ``cooked``: the program runs on a cooked socket (see :func:`sampling_tail`)."""
    if thresh >= FULL:
        return SampledProgram(tuple(filter_insns), thresh)
    snaplen = max((k for code, _, _, k in filter_insns if code == RET_K and k), default=262144)
    base = len(filter_insns)
    out: list[Insn] = []
    for pc, (code, jt, jf, k) in enumerate(filter_insns):
        if code == RET_K and k:
            out.append((JA, 0, 0, base - pc - 1))
        else:
            out.append((code, jt, jf, k))
    out.extend(sampling_tail(seed, thresh, snaplen, cooked=cooked))
    return SampledProgram(tuple(out), thresh)


def flow_id(key: FlowKey, seed: int) -> str:
    """The id entries and comments use for a flow: its seeded hash as 8 hex digits."""
    return f"{flow_hash(key, seed):08x}"
