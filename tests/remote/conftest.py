"""In-process workers for the remote tests: a StreamHub served by a real WorkerAPI on 127.0.0.1.

No capture runs here: tests publish into the hub by hand, so every watermark and packet is chosen.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from kstap.model import Interface
from kstap.remote.hub import ControlInbox, ControlRequest, StreamHub
from kstap.remote.server import WorkerAPI

TOKEN = secrets.token_hex(16)


@dataclass
class FakeWorker:
    """A hub and its API; ``restart_api`` rebinds the same port (a dropped connection),
    ``new_run`` swaps the hub (a restarted worker)."""

    hub: StreamHub
    inbox: ControlInbox
    api: WorkerAPI
    port: int
    validate: Callable[[ControlRequest], None] | None = None
    apis: list[WorkerAPI] = field(default_factory=list)

    token: str = TOKEN

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop_api(self) -> None:
        self.api.close()

    def restart_api(self, hub: StreamHub | None = None) -> None:
        self.api.close()
        if hub is not None:
            self.hub = hub
        self.api = WorkerAPI(("127.0.0.1", self.port), TOKEN, self.hub, self.inbox, heartbeat=0.05)
        self.api.start()
        self.apis.append(self.api)

    @contextmanager
    def applying_control(self) -> Iterator[None]:
        """While inside: a stand-in for the capture loop takes each queued control request and
        marks it done (the worker then answers 200 "applied" instead of 202 "queued")."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                req = self.inbox.take()
                if req is not None:
                    self.inbox.done(req)
                stop.wait(0.02)

        t = threading.Thread(target=loop)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def new_run(self, interfaces: list[Interface]) -> StreamHub:
        hub = StreamHub(self.hub.node)
        hub.set_hello(interfaces)
        hub.state = "capturing"
        self.restart_api(hub)
        return hub


@pytest.fixture
def fake_worker() -> Iterator[Callable[..., FakeWorker]]:
    made: list[FakeWorker] = []

    def make(node: str = "node-a", interfaces: list[Interface] | None = None, *, hello: bool = True,
             validate: Callable[[ControlRequest], None] | None = None, backlog: int = 32 << 20) -> FakeWorker:
        hub = StreamHub(node, backlog_bytes=backlog)
        if hello:
            hub.set_hello(interfaces or [Interface("veth0")], comment="kstap: run mode=full", mode="full")
            hub.state = "capturing"
        inbox = ControlInbox(validate)
        api = WorkerAPI(("127.0.0.1", 0), TOKEN, hub, inbox, heartbeat=0.05)
        api.start()
        w = FakeWorker(hub, inbox, api, api.address[1], validate, [api])
        made.append(w)
        return w

    yield make
    for w in made:
        for api in w.apis:
            api.close()
