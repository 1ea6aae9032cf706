"""The live dashboard: a :class:`kstap.pipeline.Reporter` that shows :func:`kstap.dashboard.view.render`
of the latest snapshot with rich's ``Live(get_renderable=...)``, and stops the capture on ``q``.

The capture loop only hands over snapshots (a reference swap); rich's own refresh thread pulls a
frame about once a second, so drawing never runs on the capture loop. Histories the snapshot does
not carry yet (the overall and per-worker rate, the memory level) are accumulated here, so the view
stays a pure function of what it is given.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from kstap.contracts import AlertRaised, Event
from kstap.dashboard.view import render
from kstap.model import Alert, Interface, StatsSnapshot
from kstap.vocabulary import AlertLevel

if TYPE_CHECKING:
    from kstap.pipeline import StopFlag

HISTORY = 3600
"""Points kept per curve: an hour at one per second (the view compresses long runs to fit)."""
MAX_ALERTS = 200


def terminal_console(file: TextIO) -> Console:
    """A console on ``file`` that follows the terminal's real size as it is resized.

    rich lets ``COLUMNS``/``LINES`` in the environment win over the terminal, and a stale pair
    (tmux sets them as a pane starts, shells may export them) would pin the live view's size.
    """
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return Console(file=file, _environ=environ)


class KeyReader:
    """Reads single keys from a terminal in cbreak mode on a thread; restores the terminal on stop.

    Does nothing when ``stream`` is not a terminal. Ctrl-C still raises SIGINT (cbreak keeps ISIG).
    """

    def __init__(self, stream: TextIO, on_key: Callable[[str], None]) -> None:
        self.stream = stream
        self.on_key = on_key
        self._saved: list[Any] | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        try:
            if not self.stream.isatty():
                return
            import termios
            import tty

            fd = self.stream.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSANOW)
        except (OSError, ValueError, AttributeError):  # no real terminal behind it
            self._saved = None
            return
        self._thread = threading.Thread(target=self._loop, args=(fd,), name="kstap-keys", daemon=True)
        self._thread.start()

    def _loop(self, fd: int) -> None:
        while not self._done.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(fd, 32)
            except OSError:
                return
            if not data:
                return
            for ch in data.decode(errors="ignore"):
                self.on_key(ch)

    def stop(self) -> None:
        """Stop the thread and put the terminal back as it was (idempotent)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None:
            import termios

            with contextlib.suppress(OSError, ValueError):
                termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None


class LiveDashboard:
    """Implements :class:`kstap.pipeline.Reporter` with a live view (plus ``start`` and ``close``).

    ``stop`` is set when the user presses ``q``; the pipeline then stops as on Ctrl-C and closes its
    files. Use it as a context manager (or call :meth:`close`) so the terminal is always restored::

        with LiveDashboard(stop) as dash:
            summary = run_tap(settings, dash, stop)
    """

    packet_lines = False
    """The dashboard owns the terminal: the pipeline must not print packet lines on stdout."""

    def __init__(self, stop: StopFlag | None = None, *, console: Console | None = None,
                 stdin: TextIO | None = None, warn: float = 0.70, critical: float = 0.90,
                 refresh_per_second: float = 1.0, initial: StatsSnapshot | None = None,
                 keyboard: bool = True, wall: Callable[[], float] = time.time) -> None:
        self.stop = stop
        self.wall = wall
        self._started = wall()
        self.console = console if console is not None else terminal_console(sys.stdout)
        self.stdin = stdin if stdin is not None else sys.stdin
        self.warn, self.critical = warn, critical
        self.refresh_per_second = refresh_per_second
        self.keyboard = keyboard
        self.snapshot = initial if initial is not None else StatsSnapshot()
        self.stopping = False
        """True once 'q' was pressed (the frame then says it is closing files)."""
        self.frames = 0
        """Frames drawn so far (tests and benchmarks read it)."""
        self._rates: deque[tuple[float, float]] = deque(maxlen=HISTORY)
        self._memory: deque[tuple[float, float]] = deque(maxlen=HISTORY)
        self._worker_rates: dict[int, deque[tuple[float, float]]] = {}
        self._alerts: deque[Alert] = deque(maxlen=MAX_ALERTS)
        self._live: Live | None = None
        self._keys: KeyReader | None = None
        self._lock = threading.Lock()

    # -- the Reporter protocol ---------------------------------------------------------------------------
    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        if not self.snapshot.targets:
            self.snapshot = replace(self.snapshot, targets=[i.name for i in interfaces])
        self.start()

    def progress(self, snapshot: StatsSnapshot) -> None:
        with self._lock:
            self.snapshot = self._with_history(snapshot)

    def event(self, event: Event) -> None:
        if isinstance(event, AlertRaised):
            self._add_alert(Alert(time=self._elapsed(), level=event.level, kind=event.kind, message=event.message))

    def warning(self, message: str) -> None:
        self._add_alert(Alert(time=self._elapsed(), level=AlertLevel.WARN, kind="warning", message=message))

    def _elapsed(self) -> float:
        """Seconds since this view started (alerts that come as events are stamped on arrival)."""
        return self.wall() - self._started

    # -- showing it --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Show the live view (idempotent); reads 'q' from stdin when it is a terminal."""
        if self._live is not None:
            return
        self._live = Live(get_renderable=self.frame, console=self.console,
                          refresh_per_second=self.refresh_per_second, transient=False,
                          vertical_overflow="ellipsis")
        self._live.start()
        if self.keyboard:
            self._keys = KeyReader(self.stdin, self.on_key)
            self._keys.start()

    def close(self) -> None:
        """Draw the last frame, stop the view and restore the terminal (idempotent)."""
        if self._keys is not None:
            self._keys.stop()
            self._keys = None
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def __enter__(self) -> LiveDashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frame(self) -> RenderableType:
        """What ``Live`` shows now: the view of the latest snapshot and a key hint."""
        with self._lock:
            snap = self.snapshot
            if self._alerts:
                snap = replace(snap, alerts=_merge_alerts(snap.alerts, self._alerts))
        self.frames += 1
        try:
            body = render(snap, width=self.console.width, height=max(8, self.console.height - 1),  # the key hint
                          warn=self.warn, critical=self.critical)
        except Exception as exc:  # a drawing bug must not kill the refresh thread or the capture
            body = Text(f"kstap: the dashboard could not draw this frame: {type(exc).__name__}: {exc}")
        hint = (Text("stopping: closing files…", style="bold yellow") if self.stopping
                else Text("q stop · Ctrl-C stop", style="dim"))
        return Group(body, hint)

    def on_key(self, key: str) -> None:
        """A key pressed on the terminal: 'q' stops the capture (as Ctrl-C would)."""
        if key in ("q", "Q") and not self.stopping:
            self.stopping = True
            if self.stop is not None:
                self.stop.set()
            if self._live is not None:
                self._live.refresh()

    def _add_alert(self, alert: Alert) -> None:
        with self._lock:
            self._alerts.append(alert)

    def _with_history(self, s: StatsSnapshot) -> StatsSnapshot:
        """``s`` with the curves it lacks filled from what earlier snapshots said."""
        self._rates.append((s.elapsed, s.rate))
        if s.resources is not None and s.resources.memory_limit:
            self._memory.append((s.elapsed, s.resources.memory_bytes / s.resources.memory_limit))
        workers = []
        for w in s.workers:
            points = self._worker_rates.setdefault(w.worker, deque(maxlen=HISTORY))
            points.append((s.elapsed, w.rate))
            workers.append(w if w.rate_history else replace(w, rate_history=list(points)))
        return replace(s, workers=workers,
                       rate_history=s.rate_history or list(self._rates),
                       memory_history=s.memory_history or list(self._memory))


def _merge_alerts(from_snapshot: list[Alert], from_events: deque[Alert]) -> list[Alert]:
    """Alerts of both sources, oldest first; an event the snapshot already holds is shown once."""
    seen = {(a.level, a.kind, a.message) for a in from_snapshot}
    extra = [a for a in from_events if (a.level, a.kind, a.message) not in seen]
    return sorted([*from_snapshot, *extra], key=lambda a: a.time)
