"""``kstap demo``: the whole job on a throw-away network — no cluster, nothing outside touched.

Two network namespaces joined by a veth pair (:class:`kstap.demo.lab.Lab`); the traffic server
(HTTP/1.1, DNS, UDP sink) in one, the paced client in the other (:mod:`kstap.demo.traffic`);
the usual capture pipeline on the client's end of the veth writes the pcapng.
"""

from __future__ import annotations

import json
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import typer

from kstap.config import OutputSettings, TapSettings, parse_rate, parse_size, settle_auto_start
from kstap.contracts import Event
from kstap.errors import EnvironmentProblem, ExitCode, Interrupted, KstapError, UsageError
from kstap.model import CaptureSummary, Interface, StatsSnapshot

if TYPE_CHECKING:
    from kstap.cli.outputs import CliReporter
    from kstap.demo.lab import Lab
    from kstap.pipeline import StopFlag

TRAFFIC = "kstap.demo.traffic"
READY_TIMEOUT = 10.0
"""Seconds the server may take to bind its sockets (a cold Python start is ~0.3 s)."""
TAIL = 1.0
"""Seconds of capture left after the client stops (it starts ~0.5 s late: Python's start-up), so
its last answers and FINs are in the file."""


def demo(
    duration: float = typer.Option(10.0, "--duration", help="Seconds of traffic and capture."),
    udp_pps: int = typer.Option(200, "--udp-pps", help="UDP flood rate in datagrams/s; turn it up."),
    write: str = typer.Option("demo.pcapng", "-w", "--write", help="pcapng output file."),
    workers: int = typer.Option(1, "--workers", help="Capture processes joined by PACKET_FANOUT_HASH."),
    progress: bool = typer.Option(False, "--progress", help="Print a status line every second on stderr."),
    mode: str = typer.Option("auto", "--mode", help="Sampling mode: full, percentage or auto."),
    rate: str | None = typer.Option(None, "--rate", help="Share of flows kept (auto: the starting rate, 10%)."),
    memory_budget: str = typer.Option("256Mi", "--memory-budget", help="Memory the capture stays under (auto)."),
    json_output: bool = typer.Option(False, "--json", help="NDJSON events on stdout instead of text."),
    dashboard: bool | None = typer.Option(None, "--dashboard/--no-dashboard",
                                          help="Live dashboard (default: when stdout is a terminal)."),
    entries: str | None = typer.Option("demo.entries.ndjson", "--entries",
                                       help="Dissected requests as NDJSON ('-' = stdout, '' = off)."),
) -> int:
    """Capture real HTTP, DNS and UDP traffic on a throw-away two-namespace network (needs root).

    By default the capture runs in auto mode (the controller watches this process's memory and
    CPU) and dissects HTTP and DNS into demo.entries.ndjson.
    """
    from kstap import pipeline

    if duration <= 0:
        raise UsageError("--duration must be positive (seconds)", hint="e.g. --duration 10")
    if udp_pps < 0:
        raise UsageError("--udp-pps cannot be negative", hint="--udp-pps 0 turns the flood off")
    settings = TapSettings(interfaces=["(lab veth)"], duration=duration, workers=workers,
                           output=OutputSettings(path=write), entries=entries or None)
    settings.sampling.mode = mode
    settings.sampling.rate = parse_rate(rate) if rate is not None else 1.0
    settle_auto_start(settings, {"sampling.mode"} | ({"sampling.rate"} if rate is not None else set()))
    settings.sampling.memory_budget = parse_size(memory_budget)
    settings.validate()  # usage errors before any namespace exists
    from kstap.cli import outputs

    stop = pipeline.StopFlag()
    text = outputs.choose_reporter(stop=stop, json_output=json_output, output_path=write, dashboard=dashboard,
                                   progress=progress, run=outputs.RunInfo.from_settings(settings))
    with text:
        with _signals_only_stop(stop), _lab(stop) as lab:
            _say(f"demo: namespaces {lab.client} ({lab.client_ip}) <-veth-> {lab.server} ({lab.server_ip})")
            explained = rate_explanation(settings)
            if explained:
                _say(explained)
            summary, counts = _run(lab, settings, udp_pps, text, stop)
        text.summary(summary)
    if counts:
        _say(f"demo: client sent {counts.get('http_requests', 0)} HTTP requests "
             f"({counts.get('http_errors', 0)} failed), {counts.get('dns_queries', 0)} DNS queries "
             f"({counts.get('dns_nxdomain', 0)} NXDOMAIN), {counts.get('udp_datagrams', 0)} UDP datagrams")
    _say("demo: network namespaces removed")
    if write != "-":
        _say(f"demo: look inside with: tshark -r {shlex.quote(write)} -Y 'http.request || dns'")
    return int(ExitCode.OK)


def rate_explanation(settings: TapSettings) -> str | None:
    """Why the demo's rate starts where it does and moves (auto mode), in one line; None otherwise."""
    smp = settings.sampling
    if smp.mode != "auto":
        return None
    budget = f"{smp.memory_budget >> 20} MiB" if smp.memory_budget else "its cgroup's limit"
    return (f"demo: auto mode starts at {smp.rate:.0%} of flows (starting at 100% is the memory risk auto mode "
            f"avoids) and raises the rate step by step while memory stays under {budget}; "
            f"watch it climb")


def _run(lab: Lab, settings: TapSettings, udp_pps: int, text: CliReporter,
         stop: StopFlag) -> tuple[CaptureSummary, dict[str, int] | None]:
    """Server up, capture on the client's veth end, client on; the summary and the client's counts."""
    from kstap import pipeline

    duration = settings.duration or 0.0
    server = lab.python(lab.server, TRAFFIC, "serve", "--address", lab.server_ip,
                        "--lifetime", str(duration + 60), stdout=subprocess.PIPE, start_new_session=True)
    client = _Client(lab, stop, ["--server", lab.server_ip, "--udp-pps", str(udp_pps),
                                 "--duration", str(max(duration / 2, duration - TAIL))])
    settings.interfaces, settings.netns = [lab.client_if], lab.client
    try:
        _wait_ready(server, stop)
        summary = pipeline.run_tap(settings, _StartClientOnListen(text, client), stop)
    except KstapError as exc:
        if isinstance(exc.summary, CaptureSummary):
            text.summary(exc.summary, error=exc)
        raise
    finally:
        counts = client.finish()
        if server.stdout is not None:
            server.stdout.close()
    if client.error is not None:
        raise client.error
    return summary, counts


def _say(line: str) -> None:
    typer.echo(line, err=True)


@contextmanager
def _signals_only_stop(stop: StopFlag) -> Iterator[None]:
    """While the lab exists, SIGINT/SIGTERM/SIGHUP (a closed terminal) only set ``stop``, so
    teardown always completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set(signum)

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _lab(stop: StopFlag) -> Iterator[Lab]:
    """The lab, closed whatever happens; a Ctrl-C that broke an ``ip`` command is an interrupt."""
    from kstap.demo.lab import Lab

    lab = Lab()
    try:
        lab.__enter__()
    except EnvironmentProblem:
        if stop:
            raise Interrupted("interrupted while building the demo network",
                              hint="the demo network was removed; nothing was written") from None
        raise
    try:
        yield lab
    finally:
        lab.close()


def _wait_ready(server: subprocess.Popen[bytes], stop: StopFlag) -> None:
    """Wait for the server's READY line (all sockets bound)."""
    assert server.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(server.stdout, selectors.EVENT_READ)
        while not stop:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KstapError(f"the demo server did not start within {READY_TIMEOUT:.0f} s",
                                 hint="the machine may be very busy; rerun with --debug to see the server's output")
            if sel.select(min(left, 0.1)):
                line = server.stdout.readline()
                if line.strip() == b"READY":
                    return
                if not line:
                    raise KstapError(f"the demo server exited early (status {server.wait()})",
                                     hint="its error is printed above; rerun with --debug")
    raise Interrupted("interrupted before capture started", hint="nothing was written")


class _Client:
    """The traffic client: started once capture listens, stopped and asked for its counts after."""

    def __init__(self, lab: Lab, stop: StopFlag, args: list[str]) -> None:
        self.lab, self.stop, self.args = lab, stop, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: KstapError | None = None

    def start(self) -> None:
        try:
            self.proc = self.lab.python(self.lab.client, TRAFFIC, "client", *self.args,
                                        stdout=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self.error = KstapError(f"could not start the demo client: {exc}",
                                    hint="kstap demo needs root and the ip command (iproute2)")
            self.stop.set()

    def finish(self) -> dict[str, int] | None:
        """Stop the client if it still runs; its counts, or None if it did not report them."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()  # it prints its counts and exits on SIGTERM
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return None  # the lab kills it
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            counts = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
        return counts if isinstance(counts, dict) else None


class _StartClientOnListen:
    """A :class:`kstap.pipeline.Reporter` that starts the client as soon as capture listens."""

    def __init__(self, text: CliReporter, client: _Client) -> None:
        self.text, self.client = text, client

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        self.text.listening(interfaces, backend, workers)
        self.client.start()

    def progress(self, snapshot: StatsSnapshot) -> None:
        self.text.progress(snapshot)

    def event(self, event: Event) -> None:
        self.text.event(event)

    def warning(self, message: str) -> None:
        self.text.warning(message)
