"""gRPC over HTTP/2: what is recognisable from the outside without the service's schema.

A gRPC call is an HTTP/2 stream whose ``content-type`` is ``application/grpc`` (or ``+proto``,
``+json``, …). Its ``:path`` is ``/package.Service/Method``; each direction's DATA carries
length-prefixed messages (1 byte compressed flag, 4 bytes big-endian length, payload) that may be
split across DATA frames or packed several to a frame; the outcome is ``grpc-status`` (and the
percent-encoded ``grpc-message``) in the response trailers, or in the only HEADERS frame of a
"trailers-only" response.
"""

from __future__ import annotations

from urllib.parse import unquote

PREFIX = 5
"""Bytes of the length prefix in front of every message."""


def is_grpc(content_type: str | None) -> bool:
    """True for ``application/grpc`` and its ``+suffix`` / ``;params`` variants (not grpc-web)."""
    if not content_type:
        return False
    ct = content_type.strip().lower()
    return ct == "application/grpc" or ct.startswith(("application/grpc+", "application/grpc;"))


def service_method(path: str | None) -> tuple[str, str] | None:
    """``/pkg.Service/Method`` → ``("pkg.Service", "Method")``; None for anything else."""
    if not path or not path.startswith("/"):
        return None
    parts = path[1:].split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def parse_status(value: str | None) -> int | None:
    """``grpc-status`` as an int (0..2^31), None when absent or not a number."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        return None
    return int(value)


def decode_message(value: str | None) -> str | None:
    """``grpc-message`` is percent-encoded UTF-8 (gRPC over HTTP/2 spec); undo that. Empty → None."""
    if not value:
        return None
    return unquote(value, errors="replace")


class MessageCounter:
    """Counts length-prefixed messages in one direction of one call, fed DATA payload slices.

    Cost is per message, not per byte: whole payloads are skipped by their declared length.
    ``complete`` counts messages whose prefix and payload were both seen. ``lost`` is set when
    bytes went missing (a capture gap) at a point the counter cannot skip over exactly.
    """

    __slots__ = ("_head", "_left", "complete", "lost")

    def __init__(self) -> None:
        self._head = b""
        """Bytes of a prefix read so far (0..4 of them)."""
        self._left = 0
        """Payload bytes of the current message still to come."""
        self.complete = 0
        self.lost = False

    def feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        i = 0
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                if not self._left:
                    self.complete += 1
                continue
            need = PREFIX - len(self._head)
            chunk = bytes(data[i:i + need])
            i += len(chunk)
            if len(chunk) < need:
                self._head += chunk
                break
            head = self._head + chunk
            self._head = b""
            self._left = int.from_bytes(head[1:5], "big")
            if not self._left:
                self.complete += 1

    def skip(self, nbytes: int) -> None:
        """``nbytes`` of payload were never captured: exact only inside one message's payload."""
        if self._left >= nbytes and not self._head:
            self._left -= nbytes
            if not self._left:
                self.complete += 1
        else:
            self.lost = True
            self._left = 0
            self._head = b""

    @property
    def partial(self) -> bool:
        """A message was started and not finished."""
        return bool(self._head) or self._left > 0
