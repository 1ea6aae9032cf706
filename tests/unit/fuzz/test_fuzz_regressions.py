"""Every crash the fuzzers found, kept as a test (docs/reliability.md lists them)."""

from __future__ import annotations

import base64

import pytest
import targets

from kstap import config
from kstap.errors import UsageError
from kstap.sinks.text import describe

# atheris, target flowkey: an IPv6 packet (raw IP link type) whose hop-by-hop header is followed by
# next-header 44 made dpkt raise AttributeError ('IP6HopOptsHeader' has no 'frag_off') inside
# kstap.sinks.text.describe, which only caught dpkt's usual errors: one such packet on the wire
# would have stopped a 'kstap tap -i IF' that prints packet lines. Fixed: describe catches anything.
IPV6_FRAG_OFF = base64.b64decode(
    "AQAAAAAAACwAAAAAAYbdYCQBAAAAAP//AAAA//8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAfX19fQB9fQAAAAAA"
    "AAA="
)


def test_ipv6_hop_by_hop_then_fragment_header_does_not_crash_the_packet_line() -> None:
    targets.flowkey(IPV6_FRAG_OFF)
    frame = IPV6_FRAG_OFF[1:]
    line = describe((1_700_000_000 * 10**9, len(frame), len(frame), frame, 0, 0), 101)
    assert "malformed frame" in line


# hypothesis, target settings: sizes and numbers that validate accepted but the pipeline could not use
# ("internal error", exit 1, instead of a usage error, exit 2).
@pytest.mark.parametrize("items", [
    ["sampling.memory_budget=infMi"],                      # parse_size: int(inf) -> OverflowError
    ["output.path=x.pcapng", "output.rotate_mb=inf"],      # -C inf: int(inf * 1e6) in the pipeline
    ["sampling.idle_timeout=nan"],                         # int(nan * 1e9) in the pipeline
    ["sampling.idle_timeout=-1"],                          # every flow expired at once
])
def test_non_finite_numbers_are_usage_errors(items: list[str]) -> None:
    assert targets.run_settings(None, [*items, "interfaces=veth0"], {}) is None


def test_parse_size_rejects_infinity() -> None:
    for text in ("infMi", "-infGi", "1e999Ki", "nanMi"):
        with pytest.raises(UsageError):
            config.parse_size(text)
