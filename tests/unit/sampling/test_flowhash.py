"""The flow hash: pinned by golden vectors, symmetric, and identical in Python and in BPF."""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kstap.filters.bpf import BPF_MAXINSNS, Program, compile_filter
from kstap.sampling.flowhash import FULL, flow_hash, keeps, seed_id, splice, threshold
from kstap.sampling.flowkey import FlowKey, flow_key


def key(proto: int, a: str, ap: int, b: str, bp: int) -> FlowKey:
    ends = sorted([(ipaddress.ip_address(a).packed, ap), (ipaddress.ip_address(b).packed, bp)])
    return FlowKey(proto, *ends[0], *ends[1])


# Changing any of these changes which flows every deployed version keeps: never edit them.
GOLDEN = [
    (0x0, (6, "10.0.0.1", 40000, "10.0.0.2", 80), 0x91E121F9),
    (0x0, (17, "192.168.1.10", 53, "192.168.1.1", 5353), 0x00D6C3D7),
    (0xDEADBEEF, (6, "10.0.0.1", 40000, "10.0.0.2", 80), 0x7718E332),
    (0xDEADBEEF, (1, "10.1.1.1", 0, "10.1.1.2", 0), 0x8AADCA92),
    (0x2A, (6, "2001:db8::1", 443, "2001:db8::2", 51000), 0xAAB8D4AA),
    (0x2A, (17, "fe80::1", 546, "ff02::1:2", 547), 0xBA72E1F8),
]


@pytest.mark.parametrize(("seed", "flow", "expected"), GOLDEN)
def test_golden_vectors(seed: int, flow: tuple[int, str, int, str, int], expected: int) -> None:
    assert flow_hash(key(*flow), seed) == expected


def test_seed_id_is_stable_and_does_not_reveal_the_seed() -> None:
    assert seed_id(0xDEADBEEF) == "5f78c33274e4"
    assert "deadbeef" not in seed_id(0xDEADBEEF)


def test_threshold_is_monotone_and_full_keeps_everything() -> None:
    assert threshold(1.0) == FULL and threshold(2.0) == FULL
    assert threshold(0.0) == 0
    assert threshold(0.25) == 1 << 30
    assert keeps(FULL - 1, 1.0) and not keeps(0, 0.0)


# -- frames ------------------------------------------------------------------------------------------

def frame(v6: bool, proto: int, src: bytes, dst: bytes, sport: int, dport: int, *, vlan: int = 0,
          frag: bool = False) -> bytes:
    l4: object
    if proto == 6:
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, data=b"abc")
    elif proto == 17:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=b"abc")
    elif proto == 132:
        l4 = struct.pack("!HH", sport, dport) + bytes(8)
    else:
        l4 = dpkt.icmp.ICMP(type=8, data=b"ping")
    if v6:
        ip: object = dpkt.ip6.IP6(src=src, dst=dst, nxt=58 if proto == 1 else proto, hlim=64, data=l4)
        etype = 0x86DD
    else:
        ip = dpkt.ip.IP(src=src, dst=dst, p=proto, data=l4)
        if frag:
            ip.mf = 1  # type: ignore[attr-defined]
        etype = 0x0800
    raw = bytes(dpkt.ethernet.Ethernet(type=etype, data=ip))
    for _ in range(vlan):
        raw = raw[:12] + struct.pack("!HH", 0x8100, 7) + raw[12:]
    return raw


frames = st.builds(
    lambda v6, proto, a4, b4, a6, b6, sp, dp, vlan, frag: frame(
        v6, proto, a6 if v6 else a4, b6 if v6 else b4, sp, dp, vlan=vlan, frag=frag),
    st.booleans(), st.sampled_from([6, 17, 132, 1]),
    st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
    st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
    st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2), st.booleans(),
)


def reverse(raw: bytes) -> bytes:
    """The same packet in the other direction (addresses and ports swapped)."""
    key_ = flow_key(raw)
    assert key_ is not None
    off = 14
    while struct.unpack_from("!H", raw, off - 2)[0] in (0x8100, 0x88A8):
        off += 4
    b = bytearray(raw)
    if key_.family == 4:
        b[off + 12 : off + 16], b[off + 16 : off + 20] = raw[off + 16 : off + 20], raw[off + 12 : off + 16]
        l4 = off + (raw[off] & 0xF) * 4
    else:
        b[off + 8 : off + 24], b[off + 24 : off + 40] = raw[off + 24 : off + 40], raw[off + 8 : off + 24]
        l4 = off + 40
    b[l4 : l4 + 2], b[l4 + 2 : l4 + 4] = raw[l4 + 2 : l4 + 4], raw[l4 : l4 + 2]
    return bytes(b)


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(0, 2**32 - 1))
def test_hash_is_symmetric(raw: bytes, seed: int) -> None:
    a, b = flow_key(raw), flow_key(reverse(raw))
    assert a == b
    assert a is not None
    assert flow_hash(a, seed) == flow_hash(b, seed)


@settings(max_examples=400, deadline=None)
@given(frames, st.integers(0, 2**32 - 1), st.floats(0.01, 0.99))
@example(frame(False, 17, b"\1\1\1\1", b"\2\2\2\2", 40000, 6081), 0, 0.5)  # UDP to Geneve's port, not Geneve
@example(frame(True, 17, b"\1" * 16, b"\2" * 16, 40000, 4789), 0, 0.5)
def test_bpf_tail_decides_exactly_like_python(raw: bytes, seed: int, rate: float) -> None:
    """libpcap's BPF interpreter runs the spliced program: same decision as the Python hash."""
    program = splice(compile_filter("").insns, seed, rate)
    prog = Program("", 1, 262144, program.insns)
    key_ = flow_key(raw)
    assert key_ is not None
    assert prog.matches(raw, len(raw)) == (flow_hash(key_, seed) < program.threshold)


def test_tail_keeps_non_ip_frames_and_honours_the_user_filter() -> None:
    arp = bytes(dpkt.ethernet.Ethernet(type=0x0806, data=b"\0" * 28))
    prog = splice(compile_filter("").insns, 1, 0.0)
    assert Program("", 1, 262144, prog.insns).matches(arp, len(arp))
    udp_only = splice(compile_filter("udp").insns, 1, 1.0 - 1e-9)
    tcp = frame(False, 6, b"\1\2\3\4", b"\5\6\7\10", 1, 2)
    assert not Program("udp", 1, 262144, udp_only.insns).matches(tcp, len(tcp))
    assert len(splice(compile_filter("tcp port 80 or udp port 53").insns, 1, 0.5).insns) < BPF_MAXINSNS


def test_fragments_share_the_address_pair_flow() -> None:
    first = flow_key(frame(False, 17, b"\1\1\1\1", b"\2\2\2\2", 1000, 2000, frag=True))
    assert first is not None and (first.a_port, first.b_port) == (0, 0)


def test_selection_is_uniform_enough() -> None:
    """10,000 flows at rate 0.3: the kept share is within 4 sigma of 0.3."""
    seed = 0x5EED
    kept = sum(flow_hash(key(17, f"10.0.{i // 250}.{i % 250}", 1000 + i, "10.9.9.9", 53), seed) < threshold(0.3)
               for i in range(10_000))
    sigma = (10_000 * 0.3 * 0.7) ** 0.5
    assert abs(kept - 3000) < 4 * sigma
