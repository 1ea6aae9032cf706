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


# -- the worker's HTTP API (target worker_api) and the worker stream (worker_stream) -----------------------
# Found by the worker_api target on its first runs; each one is a request a client (or anyone who can
# reach the worker's port on the node) can send.
def _api(request: bytes, state: str = "capturing", mode: str = "percentage") -> list[tuple[int, str, bytes]]:
    import remote_targets

    return remote_targets.run_worker_api(request, state, mode)


def test_absolute_url_with_a_broken_ipv6_host_is_400() -> None:
    # urlsplit raised ValueError ("Invalid IPv6 URL") in do_GET/do_POST: no answer at all, the
    # connection dropped and "request failed: ValueError" logged. Now 400, and the token is not needed.
    for method in ("GET", "POST"):
        [(status, ctype, body)] = _api(f"{method} http://[x/v1/stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
        assert status == 400 and ctype == "application/json" and b"malformed request target" in body


@pytest.mark.parametrize(("line", "expected"), [
    (b"GET /healthz\r\n", 400), (b"GET /v1/stats\r\n\r\n", 400), (b"GET / FOO\r\n\r\n", 400),
    (b"GET / HTTP/1.1 x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost:\r\n\r\nGET /healthz HTTP/0.9\r\nHost: w\r\n\r\n", 505),  # atheris
    (b"HEAD /a b /c HTTP/0.9\r\n\r\n", 400),  # atheris: more than three words, refused as HTTP/0.9
])
def test_http_0_9_requests_get_a_status_line(line: bytes, expected: int) -> None:
    # http.server answered HTTP/0.9 requests ("GET /healthz" without a version, found first; then by
    # atheris "GET /healthz HTTP/0.9", after a good request on the same connection) with the bare
    # JSON body, and a request line with a bad version with a bare HTML page: no status line, no
    # headers, so a client cannot tell the answer from a later one.
    answers = _api(line, "failed")
    assert answers[-1][0] == expected


def test_control_filter_with_a_lone_surrogate_is_400() -> None:
    # {"filter": "\udc80"} is valid JSON but no Unicode text: the worker's validator passed it to
    # libpcap, whose .encode() raised UnicodeEncodeError: no answer, the connection dropped. The
    # CLI's stream decoder accepted the same in HELLO/EVENT/END strings (an interface name or filter
    # that would then fail the pcapng writer). parse_json_object now refuses lone surrogates (400 /
    # ProtocolError); a proper pair (an emoji) is still text.
    import remote_targets

    from kstap.remote import protocol

    auth = f"Authorization: Bearer {remote_targets.TOKEN}\r\n"
    body = b'{"filter": "\\udc80 or tcp"}'
    request = f"POST /v1/control HTTP/1.1\r\n{auth}Content-Length: {len(body)}\r\n\r\n".encode() + body
    [(status, _ctype, answer)] = _api(request)
    assert status == 400 and b"surrogate" in answer
    with pytest.raises(protocol.ProtocolError, match="lone surrogate"):
        protocol.parse_json_object(b'{"message": "a\\ud800"}', "EVENT")
    assert protocol.parse_json_object(b'{"m": "\\ud83d\\ude00"}', "EVENT") == {"m": "\U0001F600"}


@pytest.mark.parametrize("junk", ["\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0"])
def test_token_followed_by_non_http_whitespace_is_refused(junk: str) -> None:
    # The token check stripped any Unicode whitespace (str.strip()), so "Bearer TOKEN\x1c" was
    # accepted: not the exact token. HTTP's own whitespace (space, tab) is still allowed around it.
    import remote_targets

    token = remote_targets.TOKEN
    [(status, _, _)] = _api(f"GET /v1/stats HTTP/1.1\r\nAuthorization: Bearer {token}{junk}\r\n\r\n".encode("latin-1"))
    assert status == 401
    [(status, _, _)] = _api(f"GET /v1/stats HTTP/1.1\r\nAuthorization: Bearer {token} \t\r\n\r\n".encode())
    assert status == 200
