"""``kstap stats FILE``: estimates of the true traffic behind a sampled capture."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from kstap.errors import ExitCode, KstapError

if TYPE_CHECKING:
    from rich.console import Console

    from kstap.estimate.capture_stats import CaptureStats
    from kstap.estimate.horvitz_thompson import Estimate


def stats(
    file: str = typer.Argument(..., metavar="FILE", help="A pcap or pcapng capture (e.g. from 'kstap tap -w')."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (with a \"schema\" version)."),
) -> int:
    """Estimate total packets, bytes and flows behind a sampled capture, with 95% intervals."""
    from kstap.estimate.capture_stats import read_capture_stats

    result = read_capture_stats(file)
    if as_json:
        print(json.dumps(result.as_dict(), separators=(",", ":")), flush=True)
    else:
        from rich.console import Console

        render(result, Console(file=sys.stdout, highlight=False, soft_wrap=True))
    sys.stdout.flush()  # the figures first, then what qualifies them
    for warning in result.warnings:
        print(f"kstap: warning: {warning}", file=sys.stderr)
    if result.error is not None:
        raise KstapError(result.error, hint=f"the estimates printed cover the {result.packets_read} packets "
                                            "read before that point; rerun on an intact file for full figures")
    return int(ExitCode.OK)


# -- the human view --------------------------------------------------------------------------------
def _n(x: float) -> str:
    return f"{x:,.0f}"


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.4g}"


def _when(time_ns: int, start_ns: int | None) -> str:
    stamp = datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]
    offset = f"+{(time_ns - start_ns) / 1e9:.3f}s " if start_ns is not None else ""
    return f"{offset}({stamp} UTC)"


def _row(name: str, e: Estimate) -> tuple[str, str, str, str, str]:
    return name, _n(e.observed), _n(e.total), f"[{_n(e.low)}, {_n(e.high)}]", _n(e.std_error)


def render(s: CaptureStats, console: Console) -> None:
    """The table and the facts around it, as text on ``console``."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    state = "" if s.complete else ", damaged: read up to the damage"
    console.print(Text(f"{s.path} ({s.format}, {s.packets_read:,} packets read{state})", style="bold"))
    if s.run is not None:
        r = s.run
        console.print(Text(f"sampling: mode {r.mode or '?'}, rate {_rate(r.rate)}, seed id {r.seed or '?'}, "
                           f"filter {r.filter or '(none)'}"))
    elif not s.sampled:
        console.print(Text("sampling: none recorded (no kstap comments): every flow counted with p = 1"))

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("")
    for name in ("observed", "estimated total", "95% interval", "std. error"):
        table.add_column(name, justify="right", no_wrap=True)
    e = s.estimates
    table.add_row(*_row("packets", e.packets))
    table.add_row(*_row("bytes", e.bytes))
    table.add_row(*_row("flows", e.flows))
    console.print(table)

    def fact(label: str, text: str) -> None:
        console.print(Text(f"{label:<14} {text}"))

    probability = f"; inclusion probability {_rate(s.p_min)} to {_rate(s.p_max)}" if s.p_min is not None else ""
    fact("sampled flows", f"{s.flows_sampled:,} ({s.flows_with_comment:,} with a kstap flow comment{probability})")
    if s.non_ip_packets:
        fact("non-IP frames", f"{s.non_ip_packets:,} (always kept: counted exactly)")
    t = s.timeline
    source = "" if t.known else " (assumed: no comment names a rate)"
    plural = "change" if len(t.changes) == 1 else "changes"
    fact("sampling rate", f"min {_rate(t.minimum)}, mean {_rate(t.mean)}, max {_rate(t.maximum)}; "
                          f"{len(t.changes)} {plural}{source}")
    for c in t.changes:
        reason = f" ({c.reason})" if c.reason else ""
        fact("", f"{_when(c.time_ns, s.first_ns)}  {_rate(c.previous)} → {_rate(c.rate)}{reason}")
    fact("shed flows", f"{s.shed_flows:,}" + (" (incomplete: their later packets were evicted)"
                                               if s.shed_flows else ""))
    d = s.drops
    if d.dropped is None:
        drops = "not recorded (no interface statistics block)"
    else:
        received = f" of {d.received:,} received by the filter" if d.received is not None else ""
        drops = f"{d.dropped:,}{received}: lost, not sampled; not in the estimates above"
    fact("kernel drops", drops)
