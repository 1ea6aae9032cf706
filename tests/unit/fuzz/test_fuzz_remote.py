"""The worker's HTTP API and the CLI's decoder of the worker stream under fuzzing (fuzz/remote_targets.py).

worker_api: every request gets a well-formed answer with a documented status, never a 500 or a
bare body; a protected route answers anything but 401 only with the exact token; the token is in
no answer; the worker keeps serving. worker_stream: only ProtocolError escapes, the frames do not
depend on where the stream was cut, and every frame survives being written out and encoded again."""

from __future__ import annotations

import json

import remote_targets as rt
import seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutated

from kstap.remote import protocol

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", "G\x00T", "PRI", ""]
PATHS = ["/healthz", "/v1/stream", "/v1/stats", "/v1/control", "/", "/v1/stream/", "/V1/STATS", "//v1/stats",
         "http://[x", "http://w/v1/stats", "/v1/stats#x", "*", "/%2e%2e/v1/stats", "/v1/stats;x", "\x7f"]
QUERIES = ["", "after=0", "after=3", "after=-1", "after=99999999999999999999", "after=1&after=2", "after=x",
           f"run={rt.RUN}&after=2", "run=other&after=2", "after=%00", "a&b&c&d&e&f&g&h&i", "=", "after=\u0661",
           "after= 2", "after=1_0", "run=" + "r" * 300]
AUTH = ["", f"Bearer {rt.TOKEN}", f"bearer {rt.TOKEN}", f"Bearer  {rt.TOKEN} ", f"Bearer {rt.TOKEN}\x0b",
        f"Bearer {rt.TOKEN[:-1]}", f"Bearer {rt.TOKEN}x", "Bearer ", "Basic Zm9v", rt.TOKEN, "Bearer \xff"]
BODIES = [b"", b"{}", b'{"rate": 0.5}', b'{"rate": 2}', b'{"filter": "tcp"}', b'{"filter": "((("}',
          b'{"filter": "\\udc80"}', b'{"filter": "\\ud83d\\ude00"}', b'{"rate": 1e999}', b'{"rate": true}',
          b"[" * 5000, b'{"rate": 0.5, "x": 1}', b"\xff\xfe", b'{"filter": "' + b"a" * 4100 + b'"}']
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "", "HTTP/1.1 extra"]


@st.composite
def http_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS))
    query = draw(st.sampled_from(QUERIES))
    target = path + ("?" + query if query else "")
    line = " ".join(p for p in (method, target, draw(st.sampled_from(VERSIONS))) if p)
    headers = []
    for name in draw(st.lists(st.sampled_from(["Authorization", protocol.TOKEN_HEADER]), max_size=2)):
        headers.append(f"{name}: {draw(st.sampled_from(AUTH))}")
    body = draw(st.sampled_from(BODIES))
    length = draw(st.sampled_from(["exact", "none", "short", "long", "bad", "chunked"]))
    if length == "exact":
        headers.append(f"Content-Length: {len(body)}")
    elif length == "short":
        headers.append(f"Content-Length: {max(0, len(body) - 3)}")
    elif length == "long":
        headers.append(f"Content-Length: {len(body) + 50}")
    elif length == "bad":
        headers.append("Content-Length: -7")
    elif length == "chunked":
        headers.append("Transfer-Encoding: chunked")
    if draw(st.booleans()):
        headers.append(draw(st.sampled_from(["Expect: 100-continue", "Connection: close", "Connection: keep-alive",
                                             "X: " + "y" * 70000, "bad header line", "Host:"])))
    head = (line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("utf-8")
    return head + body


@FAST
@given(st.lists(http_request(), min_size=1, max_size=4), st.sampled_from(rt.STATES), st.sampled_from(rt.MODES))
def test_worker_api_answers_every_request(requests: list[bytes], state: str, mode: str) -> None:
    rt.run_worker_api(b"".join(requests), state, mode)


@FAST
@given(mutated(seeds.worker_api_seeds(), max_edits=8))
def test_worker_api_damaged_requests(data: bytes) -> None:
    rt.worker_api(data)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(AUTH), st.sampled_from(rt.STATES))
def test_only_the_exact_token_opens_the_api(auth: str, state: str) -> None:
    request = f"GET /v1/stats HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n".encode("latin-1")
    [(status, _ctype, body)] = rt.run_worker_api(request, state)
    exact = auth.strip(" \t") in (f"Bearer {rt.TOKEN}", f"Bearer  {rt.TOKEN}")
    assert (status == 200) == exact and (status == 401) == (not exact), (auth, status)
    assert rt.TOKEN.encode() not in body and json.loads(body)


@FAST
@given(mutated(seeds.worker_stream_seeds(), max_edits=10))
def test_worker_stream_damaged(data: bytes) -> None:
    rt.worker_stream(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 40))
def test_worker_stream_random_bytes_after_a_preamble(data: bytes, step: int) -> None:
    rt.worker_stream(bytes([step, 1]) + data)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_worker_stream_cut_anywhere_gives_the_same_frames(draw: st.DataObject) -> None:
    stream = seeds.worker_stream_bytes()
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    frames = rt.run_worker_stream(pieces)
    assert len(frames) == 11 and isinstance(frames[-1].body, protocol.End)
