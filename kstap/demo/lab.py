"""A throw-away network: two namespaces joined by a veth pair, removed on exit whatever happens.

Used by ``kstap demo`` and by the privileged tests. Names carry the creating PID so parallel runs
never collide, and everything is deleted by name and PID (never by pattern).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from kstap.errors import EnvironmentProblem


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise EnvironmentProblem(f"'ip {' '.join(args)}' failed: {r.stderr.strip()}",
                                 hint="the demo needs root and iproute2 (apt-get install iproute2)")


_SEQ = itertools.count()


@dataclass
class Lab:
    """Namespaces ``client``/``server`` with veth ends ``client_if``/``server_if``."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}x{next(_SEQ)}")
    subnet: int = 77
    """Third octet of 10.X.Y.0/24 on the veth pair (addresses exist only inside the lab)."""
    client: str = ""
    server: str = ""
    client_if: str = ""
    server_if: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = self.client or f"kstap-{self.tag}-c"
        self.server = self.server or f"kstap-{self.tag}-s"
        self.client_if = self.client_if or f"ksc{self.tag}"[-15:]
        self.server_if = self.server_if or f"kss{self.tag}"[-15:]

    @property
    def client_ip(self) -> str:
        return f"10.213.{self.subnet}.1"

    @property
    def server_ip(self) -> str:
        return f"10.213.{self.subnet}.2"

    def __enter__(self) -> Lab:
        if os.geteuid() != 0:
            raise EnvironmentProblem("the demo creates network namespaces, which needs root",
                                     hint="run as root, or replay the sample: "
                                          "kstap tap --read examples/sample.pcapng -w out.pcapng")
        try:
            for ns in (self.client, self.server):
                _ip("netns", "add", ns)
                self._created.append(ns)
            _ip("link", "add", self.client_if, "netns", self.client, "type", "veth",
                "peer", "name", self.server_if, "netns", self.server)
            for ns, dev, addr in ((self.client, self.client_if, self.client_ip),
                                  (self.server, self.server_if, self.server_ip)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def spawn(self, ns: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside namespace ``ns``; it is killed (by PID) when the lab closes."""
        p: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def python(self, ns: str, module: str, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return self.spawn(ns, [sys.executable, "-m", module, *args], **kw)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3)
        self.procs.clear()
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created.clear()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
