"""kstap.remote.server: the token guards every route but /healthz; control bodies are checked strictly."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any

import pytest

from kstap.remote import protocol, server
from kstap.remote.hub import ControlRejected, ControlRequest


def _call(port: int, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
          raw_headers: bool = False) -> tuple[int, dict[str, Any] | bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        if raw_headers:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders(body)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read() if path != "/v1/stream" or resp.status != 200 else resp.read1(1 << 16)
        try:
            return resp.status, json.loads(data), resp
        except ValueError:
            return resp.status, data, resp
    finally:
        conn.close()


def test_healthz_needs_no_token_and_says_the_state(fake_worker) -> None:
    w = fake_worker()
    status, body, _ = _call(w.port, "GET", "/healthz")
    assert status == 200 and body == {"state": "capturing", "node": "node-a"}
    w.hub.state = "starting"
    assert _call(w.port, "GET", "/healthz")[0] == 503


BAD_AUTH = {
    "none": lambda t: {}, "wrong": lambda t: {"Authorization": "Bearer wrong"},
    "basic": lambda t: {"Authorization": f"Basic {t}"}, "bare": lambda t: {"Authorization": t},
    "longer": lambda t: {"Authorization": f"Bearer {t}x"}, "shorter": lambda t: {"Authorization": f"Bearer {t[:-1]}"},
    "x-header-wrong": lambda t: {protocol.TOKEN_HEADER: "Bearer nope"},
}


@pytest.mark.parametrize("path", ["/v1/stream", "/v1/stats"])
@pytest.mark.parametrize("case", sorted(BAD_AUTH))
def test_without_the_right_token_401(fake_worker, path: str, case: str) -> None:
    w = fake_worker()
    status, body, resp = _call(w.port, "GET", path, headers=BAD_AUTH[case](w.token))
    assert status == 401 and body == {"error": "unauthorized"}
    assert resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert w.token not in json.dumps(body)


def test_control_needs_the_token_too(fake_worker) -> None:
    w = fake_worker()
    status, _, _ = _call(w.port, "POST", "/v1/control", body=b'{"rate":0.5}',
                         headers={"Content-Type": "application/json"})
    assert status == 401
    assert w.inbox.take() is None


@pytest.mark.parametrize("header", ["Authorization", protocol.TOKEN_HEADER])
def test_with_the_token_stats_and_stream_answer(fake_worker, header: str) -> None:
    w = fake_worker()
    headers = {header: f"Bearer {w.token}"}
    status, body, _ = _call(w.port, "GET", "/v1/stats", headers=headers)
    assert status == 200 and isinstance(body, dict)
    assert body["node"] == "node-a" and body["state"] == "capturing" and body["interfaces"][0]["name"] == "veth0"
    status, data, resp = _call(w.port, "GET", "/v1/stream", headers=headers)
    assert status == 200 and resp.getheader("Content-Type") == protocol.CONTENT_TYPE
    assert isinstance(data, bytes) and data.startswith(protocol.MAGIC)


def test_tokens_are_compared_as_digests_in_constant_time(fake_worker, monkeypatch) -> None:
    w = fake_worker()
    seen: list[tuple[int, int]] = []
    real = server.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(server.hmac, "compare_digest", spy)
    for token in ("x", w.token, w.token * 10):
        _call(w.port, "GET", "/v1/stats", headers={"Authorization": f"Bearer {token}"})
    assert seen and all(pair == (32, 32) for pair in seen)


def test_unknown_routes_and_methods(fake_worker) -> None:
    w = fake_worker()
    assert _call(w.port, "GET", "/v1/nope", headers=w.auth)[0] == 404
    assert _call(w.port, "DELETE", "/v1/control", headers=w.auth)[0] == 405
    assert _call(w.port, "POST", "/v1/stats", headers=w.auth, body=b"{}")[0] == 405


BAD_BODIES = {
    "not json": b"rate=0.5",
    "a list": b"[0.5]",
    "empty object": b"{}",
    "unknown field": b'{"rate":0.5,"mode":"full"}',
    "rate zero": b'{"rate":0}',
    "rate above one": b'{"rate":1.5}',
    "rate as text": b'{"rate":"0.5"}',
    "rate as bool": b'{"rate":true}',
    "rate NaN": b'{"rate":NaN}',
    "filter not text": b'{"filter":42}',
    "filter with NUL": b'{"filter":"tcp\\u0000"}',
    "filter too long": json.dumps({"filter": "tcp or " * 700}).encode(),
    "oversized body": json.dumps({"filter": "x" * 5000}).encode(),
    "invalid utf-8": b'{"filter":"\xff"}',
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_malformed_control_bodies_are_400(fake_worker, name: str) -> None:
    w = fake_worker()
    status, body, _ = _call(w.port, "POST", "/v1/control", headers={**w.auth, "Content-Type": "application/json"},
                            body=BAD_BODIES[name])
    assert status == 400, body
    assert isinstance(body, dict) and body["error"]
    assert w.inbox.take() is None


def test_control_needs_a_content_length(fake_worker) -> None:
    w = fake_worker()
    status, _, _ = _call(w.port, "POST", "/v1/control", headers=w.auth, raw_headers=True)
    assert status == 400
    status, _, _ = _call(w.port, "POST", "/v1/control", raw_headers=True,
                         headers={**w.auth, "Transfer-Encoding": "chunked"}, body=b"c\r\n{\"rate\":0.5}\r\n0\r\n\r\n")
    assert status == 400
    status, _, _ = _call(w.port, "POST", "/v1/control", raw_headers=True,
                         headers={**w.auth, "Content-Length": "99999999"}, body=b"{}")
    assert status == 400


def test_control_applied_by_the_loop_is_200_and_queued_is_202(fake_worker, monkeypatch) -> None:
    w = fake_worker()
    with w.applying_control():
        status, body, _ = _call(w.port, "POST", "/v1/control", headers=w.auth, body=b'{"rate":0.25,"filter":"udp"}')
        assert status == 200 and body == {"applied": True, "rate": 0.25, "filter": "udp"}
    assert _call(w.port, "GET", "/v1/stats", headers=w.auth)[1]["control"] == {"rate": 0.25, "filter": "udp"}  # type: ignore[index]
    real = w.inbox.submit
    monkeypatch.setattr(w.inbox, "submit", lambda req, timeout=3.0: real(req, timeout=0.05))
    status, body, _ = _call(w.port, "POST", "/v1/control", headers=w.auth, body=b'{"rate":0.5}')
    assert status == 202 and body == {"applied": False, "rate": 0.5}


def test_control_the_worker_refuses_is_409(fake_worker) -> None:
    def full_mode(req: ControlRequest) -> None:
        if req.rate is not None:
            raise ControlRejected(409, "this worker keeps every flow")

    w = fake_worker(validate=full_mode)
    status, body, _ = _call(w.port, "POST", "/v1/control", headers=w.auth, body=b'{"rate":0.5}')
    assert status == 409 and body == {"error": "this worker keeps every flow"}


def test_control_the_loop_fails_to_apply_is_400(fake_worker) -> None:
    w = fake_worker()

    def loop() -> None:
        for _ in range(300):
            req = w.inbox.take()
            if req is not None:
                w.inbox.done(req, "the kernel refused the filter")
                return
            threading.Event().wait(0.01)

    t = threading.Thread(target=loop)
    t.start()
    status, body, _ = _call(w.port, "POST", "/v1/control", headers=w.auth, body=b'{"filter":"tcp"}')
    t.join()
    assert status == 400 and body == {"error": "the kernel refused the filter"}


def test_stream_before_the_capture_started_is_503(fake_worker, monkeypatch) -> None:
    monkeypatch.setattr(server, "HELLO_WAIT", 0.1)
    w = fake_worker(hello=False)
    status, _body, resp = _call(w.port, "GET", "/v1/stream", headers=w.auth)
    assert status == 503 and resp.getheader("Retry-After") == "1"


@pytest.mark.parametrize("query", ["after=-1", "after=x", "after=99", "after=1&after=2&a=1&b=2&c=3&d=4&e=5&f=6&g=7",
                                   "after=+1", "after=%201", "after=1_0", "after=%D9%A1"])
def test_stream_query_is_checked(fake_worker, query: str) -> None:
    w = fake_worker()
    status, _, _ = _call(w.port, "GET", f"/v1/stream?{query}&run={w.hub.run}", headers=w.auth)
    assert status == 400


def test_too_many_readers_is_503(fake_worker) -> None:
    w = fake_worker()
    w.api._streams = threading.BoundedSemaphore(1)
    w.api._streams.acquire()
    assert _call(w.port, "GET", "/v1/stream", headers=w.auth)[0] == 503


def test_parse_control_accepts_the_documented_shapes() -> None:
    assert server.parse_control(b'{"rate":1}') == ControlRequest(1.0, None)
    assert server.parse_control(b'{"filter":""}') == ControlRequest(None, "")
    assert server.parse_control(b'{"rate":0.5,"filter":"tcp port 80"}') == ControlRequest(0.5, "tcp port 80")


def _switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))


def test_an_idle_api_sleeps_until_a_request_and_closes_at_once(fake_worker) -> None:
    w = fake_worker()
    thread = w.api._thread
    assert thread is not None and thread.native_id is not None
    before = _switches(thread.native_id)
    threading.Event().wait(1.0)
    assert _switches(thread.native_id) - before <= 2, "the accept loop woke while nobody connected"
    assert _call(w.port, "GET", "/healthz")[0] == 200  # a request still wakes it
    done = threading.Event()
    threading.Thread(target=lambda: (w.api.close(), done.set()), daemon=True).start()
    assert done.wait(2.0), "close() waited for a poll interval instead of waking the accept loop"
    assert not thread.is_alive()
