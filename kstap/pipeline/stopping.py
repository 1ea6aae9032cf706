"""How a capture is told to stop: a flag set by SIGINT/SIGTERM/SIGHUP, a test, or the dashboard's 'q'."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType

from kstap.errors import Interrupted


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM (or a test, or the dashboard's 'q').

    :meth:`wakeup_fd` gives a descriptor that turns readable when the flag is set, so the capture
    loop can wait for packets, the next tick and a stop at once, with no idle wake-ups in between.
    """

    signum: int = 0
    _pipe: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        if self._pipe is not None:
            with contextlib.suppress(OSError):  # full (already readable) or closed: nothing more to say
                os.write(self._pipe[1], b"!")

    def wakeup_fd(self) -> int:
        """The read end of a pipe written to by :meth:`set` (made on first use, then kept)."""
        if self._pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._pipe = (r, w)
            if self.signum:
                os.write(w, b"!")
        return self._pipe[0]

    capturing: bool = field(default=False, compare=False)
    """Set by the loop once capture has started; before it, a signal interrupts at once (exit 130)."""

    def __bool__(self) -> bool:
        return self.signum != 0


class Signals:
    """Turn SIGINT/SIGTERM/SIGHUP into a flag for the capture loop (main thread only)."""

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop
        self._old: dict[int, object] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set(signum)
        if not self.stop.capturing:  # still arming (compiling, opening a FIFO with no writer): stop now
            raise Interrupted("interrupted before capture started", hint="nothing was written")

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
