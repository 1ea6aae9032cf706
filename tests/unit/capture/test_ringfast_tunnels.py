"""The C encoder keys VXLAN/Geneve frames as Python and the kernel do: by the inner packet.

Every tunnel edge case of ``tests/unit/sampling/test_flowhash_tunnels.py`` (the cases the kernel's
tail is checked on), plus VXLAN in VXLAN, Geneve options before IPv6, VLAN tags inside and outside,
goes through a TPACKET_V3 block as the kernel lays it: as is, with its outer 802.1Q/802.1ad tag in
the ring's metadata (``TP_STATUS_VLAN_VALID``: the encoder reads it where the file puts it back), and
cut short by a snaplen. The first-packet comment must carry Python's flow hash of the frame the file
holds (none for a frame without a flow); a key that needed bytes the snaplen cut must say so (the
kernel read them), and a key that did not say so must be the key of the whole packet.
"""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.capture import afpacket
from kstap.capture.afpacket import TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID
from kstap.capture.flowtable import FirstPacketTable
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.sampling import metadata
from kstap.sampling.flowhash import flow_hash
from kstap.sampling.flowkey import flow_key
from tests.unit.capture.test_afpacket import fake_ring, pcapng_iface
from tests.unit.sampling.test_flowhash_tunnels import (
    CASES,
    INNER,
    INNER6,
    INNER_IP4,
    INNER_IP6,
    eth,
    geneve_header,
    ip4,
    outer_key,
    outer_udp,
    udp,
    vxlan,
    vxlan_header,
)

pytestmark = pytest.mark.skipif(afpacket.encode_block_sampled is None, reason="C fast path not built")

SEED = 0x7E57
SUFFIX = metadata.flow_note_suffix("percentage", 0.5, "abc")


def tag(tci: int, etype: int) -> bytes:
    return struct.pack("!HH", tci, etype)


def extra_cases() -> dict[str, tuple[bytes, object]]:
    """Cases the kernel-tail list leaves implicit (the flow Python must find, for the record)."""
    inner_eth = eth(INNER_IP4)
    level2 = ip4(udp(vxlan_header() + inner_eth, 40001, 8472), src="10.1.0.1", dst="10.1.0.2")
    return {
        "vxlan-in-vxlan": (vxlan(eth(level2)), INNER),
        "vxlan-inner-vlan": (vxlan(eth(tag(7, 0x0800) + INNER_IP4, 0x8100)), INNER),
        "geneve-options-ipv6": (outer_udp(geneve_header(0x86DD, 9) + INNER_IP6, 6081), INNER6),
        "geneve-options-eth-ipv6": (outer_udp(geneve_header(0x6558, 4) + eth(INNER_IP6, 0x86DD), 6081), INNER6),
        "outer-vlan-vxlan": (eth(tag(10, 0x0800) + vxlan(inner_eth)[14:], 0x8100), INNER),
        "outer-qinq-vxlan": (eth(tag(10, 0x8100) + tag(20, 0x0800) + vxlan(inner_eth)[14:], 0x88A8), INNER),
        "vxlan-over-ipv6-inner-ipv6": (vxlan(eth(INNER_IP6, 0x86DD), v6=True), INNER6),
    }


ALL = {**{name: frame for name, (frame, _) in CASES.items()}, **{n: f for n, (f, _) in extra_cases().items()}}

PLAIN, TAGGED, TAGGED_AD = 1, 1 | TP_STATUS_VLAN_VALID, 1 | TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID


def encode(data: bytes, wire: int, status: int) -> tuple[bytes, list[str], int, int]:
    """One packet through a fresh first-packet table: (the frame in the file, its comments, packets keyed,
    keys cut)."""
    encode_block_sampled = afpacket.encode_block_sampled
    assert encode_block_sampled is not None
    seen = FirstPacketTable(SEED, SUFFIX, capacity=4)
    ring = fake_ring([[(data, wire, status, 5, 0x88A8)]])
    out = encode_block_sampled(ring.mm, 0, 1 << 16, 3, 1 << 30, seen.table, SEED, SUFFIX)
    idbs = b"".join(pcapng.interface_description(pcapng_iface()) for _ in range(4))  # the fake ring is if 3
    [(rec, info)] = list(CaptureReader(io.BytesIO(pcapng.section_header() + idbs + out[0])))
    return rec[3], info.comments if info else [], out[6], out[7]


def python_comment(frame: bytes) -> list[str]:
    key = flow_key(frame)
    return [] if key is None else [metadata.flow_note(f"{flow_hash(key, SEED):08x}", "percentage", 0.5, "abc")]


def test_the_extra_cases_are_keyed_by_python_as_documented() -> None:
    for name, (frame, flow) in extra_cases().items():
        assert flow_key(frame) == flow, name


@pytest.mark.parametrize("status", [PLAIN, TAGGED, TAGGED_AD], ids=["plain", "tag-in-metadata", "8021ad-in-metadata"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_c_comments_each_case_with_pythons_hash(name: str, status: int) -> None:
    frame = ALL[name]
    if status != PLAIN and (len(frame) < 14 or frame[12:14] in (b"\x81\x00", b"\x88\xa8")):
        # the kernel moves the outer tag out of the frame: the ring's frame starts after it
        frame = frame[:12] + frame[16:]
    written, comments, keyed, cut = encode(frame, len(frame), status)
    if status != PLAIN and len(frame) >= 12:
        assert written[12:16] == (b"\x88\xa8" if status == TAGGED_AD else b"\x81\x00") + b"\x00\x05"
    assert comments == python_comment(written)
    assert (keyed, cut) == (1, 0)


def test_the_comment_names_the_inner_flow_not_the_outer_datagram() -> None:
    frame = CASES["vxlan"][0]
    _, comments, _, _ = encode(frame, len(frame), PLAIN)
    hashes = {f"{flow_hash(key, SEED):08x}" for key in (INNER, outer_key(4789))}
    assert len(hashes) == 2
    assert comments == [metadata.flow_note(f"{flow_hash(INNER, SEED):08x}", "percentage", 0.5, "abc")]


@pytest.mark.parametrize("name", ["vxlan", "vxlan-in-geneve", "geneve-options-ipv6", "vxlan-over-ipv6-inner-ipv6",
                                  "outer-qinq-vxlan", "vxlan-inner-vlan", "ipv4-bad-ihl"])
def test_a_snaplen_cut_is_keyed_as_the_file_shows_it_and_said_to_be_cut(name: str) -> None:
    """Cut at every length: the comment is Python's key of the captured bytes; whenever that is not the
    key of the whole packet (the kernel's), the encoder reports the key cut."""
    frame = ALL[name]
    whole = flow_key(frame)
    for snap in range(len(frame)):
        written, comments, keyed, cut = encode(frame[:snap], len(frame), PLAIN)
        assert comments == python_comment(written), snap
        assert keyed == 1
        if flow_key(written) != whole:
            assert cut == 1, snap


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(ALL)), st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
       st.integers(0, 400), st.sampled_from([PLAIN, TAGGED, TAGGED_AD]), st.booleans())
def test_mutated_and_cut_frames_are_keyed_as_python_keys_the_file(name: str, edits: list[tuple[int, int]], cut: int,
                                                                  status: int, snapped: bool) -> None:
    """Any byte changed, the frame cut anywhere (a short packet, or a snaplen): the same comment as
    Python on the file's frame; a key not reported cut is the whole packet's key."""
    frame = bytearray(ALL[name])
    for at, value in edits:
        if at < len(frame):
            frame[at] = value
    whole = bytes(frame)
    data = whole[: len(whole) - cut % (len(whole) + 1)]
    wire = len(whole) if snapped else len(data)
    written, comments, _keyed, was_cut = encode(data, wire, status)
    assert comments == python_comment(written)
    tag_bytes = (b"\x88\xa8" if status == TAGGED_AD else b"\x81\x00") + b"\x00\x05"
    whole_file = whole if status == PLAIN else whole[:12] + tag_bytes + whole[12:]
    if not was_cut and len(data) >= 12:
        assert flow_key(written) == flow_key(whole_file if snapped else written)
