"""Protocol detection by content."""

from __future__ import annotations

import pytest

from kstap.dissect import detect


@pytest.mark.parametrize("data, protocol", [
    (b"GET / HTTP/1.1\r\n", "http/1"),
    (b"\r\nPOST /x?y=1 HTTP/1.0\r\nHost: a\r\n\r\n", "http/1"),
    (b"PROPFIND /dav HTTP/1.1\r\n", "http/1"),
    (b"GET / HTTP/1.1\n", "http/1"),  # bare LF line ends (RFC 9112 section 2.2)
    (b"\nGET /lf HTTP/1.0\nHost: a\n\n", "http/1"),
    (b"GET / HTTP/1.1", detect.NEED_MORE),
    (b"GE", detect.NEED_MORE),
    (b"PRI * HTTP/2.0\r\n", detect.NEED_MORE),
    (detect.PREFACE, "http/2"),
    (b"\x00\x1c\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04test\x00\x00\x01\x00\x01", "dns"),
    (b"\x00\x1c\x12\x34", detect.NEED_MORE),
    (b"SSH-2.0-OpenSSH_9.6\r\n", detect.UNKNOWN),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)), detect.UNKNOWN),
    (b"get / http/1.1\r\n", detect.UNKNOWN),
    (b"GET / HTTP/2\r\n", detect.UNKNOWN),
    (b"A" * (detect.DETECT_LIMIT + 1), detect.UNKNOWN),
])
def test_detect_client(data: bytes, protocol: str) -> None:
    assert detect.detect_client(data).protocol == protocol


def test_http2_is_lazy_and_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "_H2", [None])
    assert detect.detect_client(detect.PREFACE).protocol == detect.UNSUPPORTED


def test_sides() -> None:
    assert detect.request_like(b"GET / HTTP/1.1\r\n")
    assert not detect.request_like(b"HTTP/1.1 200 OK\r\n")
    assert detect.http1_response(b"HTTP/1.1 200 OK\r\n")
    assert not detect.http1_response(b"GET / HTTP/1.1\r\n")
