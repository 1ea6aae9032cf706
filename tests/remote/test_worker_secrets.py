"""A worker's outputs hold neither its API token nor the run's seed: its log lines, the whole stream a
reader gets (HELLO comment, stats and other events, entries, END summary), ``/v1/stats`` and every
answer. A real worker (replaying a capture, percentage mode with a pinned seed, dissection on) on 127.0.0.1."""

from __future__ import annotations

import http.client
import secrets
import threading
from pathlib import Path

from kstap.config import SamplingSettings, TapSettings
from kstap.remote import protocol
from kstap.sampling.flowhash import seed2, seed_id
from kstap.worker import Worker, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample.pcapng"
SEED = 0x5EED1234
TOKEN = "kstap-worker-secret-" + secrets.token_hex(16)


def seed_forms(seed: int) -> list[str]:
    forms = []
    for value in (seed, seed2(seed)):
        forms += [str(value), f"{value:x}", f"{value:08x}"]
    return forms


def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_worker_logs_stream_and_answers_hold_no_token_and_no_seed() -> None:
    logs: list[str] = []
    tap = TapSettings(read=str(SAMPLE), sampling=SamplingSettings(mode="percentage", rate=0.5, seed=SEED))
    worker = Worker(WorkerSettings(tap=tap, listen=("127.0.0.1", 0), token=TOKEN, node="node-a", entries=True,
                                   linger=30), log=logs.append)
    port = worker.address[1]
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    t.start()
    answers = [get(port, "/healthz", None), get(port, "/v1/stats"), get(port, "/v1/stats", "wrong"),
               get(port, "/v1/nope")]
    status, stream = get(port, "/v1/stream")  # the whole stream, to its END (the worker then stops)
    t.join(60)
    assert not t.is_alive() and result, logs
    assert status == 200
    frames = protocol.StreamDecoder().feed(stream)
    hello = frames[0].body
    assert isinstance(hello, protocol.Hello) and hello.seed_id == seed_id(SEED)  # the id, not the seed
    assert isinstance(frames[-1].body, protocol.End)
    kinds = {type(f.body).__name__ for f in frames}
    assert {"Batch", "Event", "Entries", "IfStats"} <= kinds, kinds
    texts = {"worker log": "\n".join(logs), "stream": stream.decode("latin-1"),
             **{f"answer {i}": body.decode("latin-1") for i, (_s, body) in enumerate(answers)}}
    assert logs and any("capture ended" in line for line in logs)
    for where, text in texts.items():
        assert TOKEN not in text, f"the token appears in the {where}"
        for form in seed_forms(SEED):
            assert form not in text.lower(), f"the seed appears in the {where} as {form}"
