"""``kstap report``'s page: one self-contained HTML file about one capture (inline CSS and SVG, no script,
no network), for people who would rather look than read.

:func:`build` gathers the figures (:func:`kstap.estimate.capture_stats.read_capture_stats` for sampling,
estimates and kernel drops; the dissector for entries); :func:`render` is a pure function of them.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kstap import __version__
from kstap.estimate.capture_stats import CaptureStats

TOP = 10
"""Rows in the endpoint and protocol lists."""


@dataclass
class ReportData:
    """What the page shows."""

    stats: CaptureStats
    entries: int = 0
    protocols: Counter[str] = field(default_factory=Counter)
    endpoints: Counter[str] = field(default_factory=Counter)
    servers: Counter[str] = field(default_factory=Counter)
    entries_source: str = "dissected from the capture"


def endpoint(entry: dict[str, Any]) -> str:
    """An entry's L7 endpoint, named as the dashboard names it ('GET /api @ host', 'dns name')."""
    if entry.get("protocol") == "dns":
        return f"dns {entry.get('query_name') or '?'}"
    target = str(entry.get("path") or "/").split("?", 1)[0]
    return f"{entry.get('method') or '?'} {target} @ {entry.get('authority') or entry.get('server') or '?'}"


def count_entries(data: ReportData, lines: Any) -> None:
    """Add NDJSON entry lines to the counters of ``data``."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        entry = json.loads(line)
        if not isinstance(entry, dict) or "protocol" not in entry:
            continue
        data.entries += 1
        data.protocols[str(entry["protocol"])] += 1
        data.endpoints[endpoint(entry)] += 1
        data.servers[str(entry.get("server") or "?")] += 1


def build(path: str, entries: str | None = None) -> ReportData:
    """The figures for ``path``; ``entries``: an NDJSON file from ``kstap tap --entries`` (else dissect)."""
    from kstap.estimate.capture_stats import read_capture_stats

    data = ReportData(read_capture_stats(path))
    if entries is not None:
        data.entries_source = f"from {entries}"
        with open(entries, encoding="utf-8") as fh:
            count_entries(data, fh)
        return data
    from kstap.pipeline.offline import run_dissect

    with tempfile.TemporaryDirectory(prefix="kstap-report-") as tmp:
        out = os.path.join(tmp, "entries.ndjson")
        run_dissect(path, out, seed=0, memory_cap=64 << 20, idle_timeout=60.0)
        with open(out, encoding="utf-8") as fh:
            count_entries(data, fh)
    return data


# -- drawing ------------------------------------------------------------------------------------------
W, H, PAD = 720, 220, 44


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def rate_svg(s: CaptureStats) -> str:
    """The sampling rate over the capture as a step line (0..100 %), with its changes marked."""
    t = s.timeline
    start, end = s.first_ns, s.last_ns
    if start is None or end is None or end <= start:
        start, end = 0, 1
    span = end - start

    def x(ns: int) -> float:
        return PAD + (W - 2 * PAD) * (ns - start) / span

    def y(rate: float) -> float:
        return H - PAD + (2 * PAD - H) * rate

    points = [(x(start), y(t.initial))]
    rate = t.initial
    for c in t.changes:
        cx = x(max(start, min(end, c.time_ns)))
        points += [(cx, y(rate)), (cx, y(c.rate))]
        rate = c.rate
    points.append((x(end), y(rate)))
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    grid = "".join(
        f'<line x1="{PAD}" x2="{W - PAD}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
        f'<text x="{PAD - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:.0%}</text>'
        for v in (0, 0.25, 0.5, 0.75, 1.0))
    marks = "".join(f'<circle cx="{x(max(start, min(end, c.time_ns))):.1f}" cy="{y(c.rate):.1f}" r="3" class="mark">'
                    f"<title>{_esc(_when(c.time_ns, s.first_ns))}: {c.previous:.3g} → {c.rate:.3g}"
                    f"{' (' + _esc(c.reason) + ')' if c.reason else ''}</title></circle>" for c in t.changes)
    seconds = span / 1e9 if s.first_ns is not None else 0.0
    axis = (f'<text x="{PAD}" y="{H - PAD + 18}" class="axis">0 s</text>'
            f'<text x="{W - PAD}" y="{H - PAD + 18}" class="axis" text-anchor="end">{seconds:,.1f} s</text>')
    note = "" if t.known else (f'<text x="{W / 2}" y="{PAD - 14}" class="axis" text-anchor="middle">no rate recorded '
                               f"in the file: every flow counted as kept (rate 100 %)</text>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
            f'aria-label="sampling rate over time">{grid}{axis}{note}'
            f'<polyline points="{line}" class="rate"/>{marks}</svg>')


def bars_svg(rows: list[tuple[str, float, str]], *, unit: str = "") -> str:
    """Horizontal bars: (label, value, css class) each, scaled to the largest value."""
    if not rows:
        return '<p class="none">none</p>'
    top = max(v for _, v, _ in rows) or 1.0
    row_h, label_w = 26, 260
    height = row_h * len(rows) + 8
    out = []
    for i, (label, value, css) in enumerate(rows):
        y = 4 + i * row_h
        width = (W - label_w - 110) * value / top
        out.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="label">{_esc(_clip(label))}'
                   f"<title>{_esc(label)}</title></text>"
                   f'<rect x="{label_w}" y="{y + 3}" width="{max(width, 1):.1f}" height="{row_h - 8}" class="{css}"/>'
                   f'<text x="{label_w + width + 6:.1f}" y="{y + 17}" class="value">{_n(value)}{unit}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" role="img">'
            + "".join(out) + "</svg>")


def _clip(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _when(ns: int, start: int | None) -> str:
    stamp = datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"+{(ns - start) / 1e9:.1f} s ({stamp})" if start is not None else stamp


CSS = """
body{font:15px/1.45 "DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px auto;max-width:820px;color:#1d2430;
background:#fbfbfd}h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:26px 0 6px;border-bottom:1px solid #d8dce4}
.sub{color:#5b6475;margin:0 0 14px}.cards{display:flex;gap:10px;flex-wrap:wrap}.card{background:#fff;
border:1px solid #d8dce4;border-radius:6px;padding:8px 12px;min-width:150px}.card b{display:block;font-size:20px}
.card span{color:#5b6475;font-size:13px}svg{width:100%;height:auto;background:#fff;border:1px solid #d8dce4;
border-radius:6px}.grid{stroke:#e6e9ef}.axis,.value{font-size:12px;fill:#5b6475}.label{font-size:13px;fill:#1d2430}
.rate{fill:none;stroke:#2f6fdf;stroke-width:2.5}.mark{fill:#2f6fdf}.kept{fill:#2f6fdf}.est{fill:#9db8ef}
.drop{fill:#d9534f}.proto{fill:#3a9d6e}.ep{fill:#8a63c8}.none{color:#5b6475}footer{margin-top:28px;color:#8a93a3;
font-size:12px}.warn{color:#a15c00}
"""


def render(data: ReportData, *, title: str | None = None) -> str:
    """The page (a complete HTML document)."""
    s = data.stats
    e = s.estimates
    name = title or os.path.basename(s.path)
    run = s.run
    mode = f"{run.mode or '?'} mode, rate {run.rate:.3g}" if run is not None and run.rate is not None else (
        "sampled" if s.sampled else "not sampled (every flow kept)")
    span = (s.last_ns - s.first_ns) / 1e9 if s.first_ns is not None and s.last_ns is not None else 0.0
    d = s.drops
    drops = "no statistics block" if d.dropped is None else f"{_n(d.dropped)} of {_n(d.received or 0)}"
    drop_share = (d.dropped / d.received) if d.dropped is not None and d.received else 0.0
    cards = [("packets in the file", _n(s.packets_read)), ("flows kept", _n(e.flows.observed)),
             ("flows estimated in all", f"{_n(e.flows.total)}"), ("kernel drops", drops),
             ("entries", _n(data.entries)), ("duration", f"{span:,.1f} s")]
    flows = bars_svg([("flows kept (in the file)", e.flows.observed, "kept"),
                      ("flows estimated (Σ 1/rate)", e.flows.total, "est"),
                      ("95 % interval, high end", e.flows.high, "est")])
    packets = bars_svg([("packets kept", e.packets.observed, "kept"), ("packets estimated", e.packets.total, "est"),
                        ("dropped by the kernel", float(d.dropped or 0), "drop")])
    protocols = bars_svg([(p, float(n), "proto") for p, n in data.protocols.most_common(TOP)])
    endpoints = bars_svg([(p, float(n), "ep") for p, n in data.endpoints.most_common(TOP)])
    servers = bars_svg([(p, float(n), "ep") for p, n in data.servers.most_common(TOP)])
    warnings = "".join(f'<p class="warn">{_esc(w)}</p>' for w in s.warnings)
    if s.error:
        warnings += f'<p class="warn">the file is damaged: {_esc(s.error)}; the figures cover what was read</p>'
    card_html = "".join(f'<div class="card"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for k, v in cards)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>kstap report: {_esc(name)}</title><style>{CSS}</style></head>
<body>
<h1>kstap report: {_esc(name)}</h1>
<p class="sub">{_esc(s.format)} · {_esc(mode)} · drops {drop_share:.2%} of what the kernel received</p>
{warnings}
<div class="cards">{card_html}</div>
<h2>Sampling rate over the capture</h2>
{rate_svg(s)}
<h2>Flows kept against flows estimated</h2>
{flows}
<h2>Packets and kernel drops</h2>
{packets}
<p class="sub">Kernel drops are packets of kept flows that the kernel lost (ring full); they are not sampling.</p>
<h2>Protocols (entries {_esc(data.entries_source)})</h2>
{protocols}
<h2>Top endpoints</h2>
{endpoints}
<h2>Top servers</h2>
{servers}
<footer>kstap {_esc(__version__)} · {_esc(s.path)} · self-contained: no scripts, nothing loaded from the
network</footer>
</body></html>
"""
