"""A hypothesis strategy that damages valid inputs the way a fuzzer does: flips, cuts, splices."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_edits: int = 6) -> bytes:
    """One of ``seeds`` with up to ``max_edits`` edits (byte set/flip, insert, delete, cut, repeat)."""
    data = bytearray(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["set", "flip", "insert", "delete", "cut", "repeat", "interesting"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "interesting" and data:
            data[pos] = draw(st.sampled_from(INTERESTING))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "cut":
            del data[pos:]
        elif kind == "repeat" and data:
            end = min(len(data), pos + draw(st.integers(1, 64)))
            data[end:end] = data[pos:end]
    return bytes(data)
