"""The worker's start line says whether the capture runs on the C helper (a custom image built
without a compiler falls back to a Python step per packet, silently otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kstap import worker as worker_module
from kstap.model import Interface
from kstap.remote.hub import StreamHub
from kstap.worker import WorkerReporter


@dataclass
class Logged:
    hub: StreamHub = field(default_factory=lambda: StreamHub("n1"))
    lines: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)


@pytest.mark.parametrize("built", [True, False])
def test_the_start_line_says_whether_the_c_helper_serves(built: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not built:
        monkeypatch.setattr(worker_module, "epb_batch", None)
    elif getattr(worker_module, "epb_batch") is None:  # noqa: B009 (not re-exported)
        pytest.skip("the C helper is not built")
    w = Logged()
    WorkerReporter(w).listening([Interface("any", 276)], "af_packet", 1)  # type: ignore[arg-type]
    (line,) = w.lines
    assert line.startswith("capturing on any (af_packet")
    assert ("the C helper is not built" in line) is not built
    assert w.hub.state == "capturing"
