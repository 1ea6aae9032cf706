"""Frame decoding under fuzzing: the flow key, the sampler, the packet line, the BPF tail never crash
and never disagree (targets.run_frame states the contract)."""

from __future__ import annotations

import struct

import seeds
import targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutated

from kstap.sampling.flowkey import flow_key

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=120), st.sampled_from(targets.LINKTYPES), st.integers(0, 2**32 - 1))
def test_random_bytes_as_any_link_type(frame: bytes, linktype: int, seed: int) -> None:
    targets.run_frame(frame, linktype, seed)


@FAST
@given(mutated(seeds.sample_frames()), st.integers(0, 2**32 - 1))
def test_damaged_real_frames(frame: bytes, seed: int) -> None:
    targets.run_frame(frame, 1, seed)


@st.composite
def wire_frames(draw: st.DrawFn) -> bytes:
    """Well-formed Ethernet frames: 0-2 VLAN tags, IPv4 (maybe a fragment) or IPv6, any protocol."""
    proto = draw(st.sampled_from([6, 17, 132, 1, 58, 47, draw(st.integers(0, 255))]))
    l4 = struct.pack("!HH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535))) + draw(st.binary(max_size=24))
    if draw(st.booleans()):
        src, dst = draw(st.binary(min_size=4, max_size=4)), draw(st.binary(min_size=4, max_size=4))
        frag = draw(st.sampled_from([0, 0, 0x2000, 0x0010, 0x4000]))
        ihl = draw(st.sampled_from([5, 5, 6, 15]))
        options = b"\x01" * ((ihl - 5) * 4)
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(l4), 1, frag, 64, proto, 0, src,
                         dst) + options + l4
        ethertype = 0x0800
    else:
        src, dst = draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst) + l4
        ethertype = 0x86DD
    tags = b"".join(struct.pack("!HH", draw(st.sampled_from([0x8100, 0x88A8])), draw(st.integers(0, 4095)))
                    for _ in range(draw(st.integers(0, 2))))
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", ethertype) + ip


def reverse(frame: bytes) -> bytes:
    """The same frame sent the other way (addresses and ports swapped)."""
    off = 14
    while frame[off - 2 : off] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    b = bytearray(frame)
    if frame[off - 2 : off] == b"\x08\x00":
        b[off + 12 : off + 16], b[off + 16 : off + 20] = frame[off + 16 : off + 20], frame[off + 12 : off + 16]
        l4 = off + (frame[off] & 0x0F) * 4
    else:
        b[off + 8 : off + 24], b[off + 24 : off + 40] = frame[off + 24 : off + 40], frame[off + 8 : off + 24]
        l4 = off + 40
    b[l4 : l4 + 2], b[l4 + 2 : l4 + 4] = frame[l4 + 2 : l4 + 4], frame[l4 : l4 + 2]
    return bytes(b)


@FAST
@given(wire_frames(), st.integers(0, 2**32 - 1))
def test_both_directions_are_one_flow_in_python_and_in_bpf(frame: bytes, seed: int) -> None:
    targets.run_frame(frame, 1, seed)
    targets.run_frame(reverse(frame), 1, seed)
    assert flow_key(frame) == flow_key(reverse(frame)) is not None


def test_short_frames_are_decided_by_the_kernel_as_by_python() -> None:
    """A UDP header cut short is keyed by its address pair (ports 0) in Python and in the kernel's
    tail alike, which checks the length before it loads (a load past the end would drop it); every
    shorter cut too (no flow, or the address pair)."""
    full = seeds.sample_frames()[0]
    cut = full[:14 + 20 + 2]
    key = flow_key(cut)
    assert key is not None and (key.a_port, key.b_port) == (0, 0)
    for n in range(len(full) + 1):
        targets.run_frame(full[:n], 1)
