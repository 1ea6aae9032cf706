"""One dashboard frame: a pure function of a :class:`StatsSnapshot` and a width.

No clock, no terminal, no state: the same snapshot at the same width gives the same frame, which is
what the golden tests pin (tests/golden/dashboard/*.txt). Curves are drawn here with block
characters (eight levels per cell), so nothing depends on a plotting library.
"""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Callable, Sequence
from operator import itemgetter

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.constrain import Constrain
from rich.panel import Panel
from rich.segment import Segment
from rich.text import Text

from kstap.model import Alert, ControllerState, ResourceStats, StatsSnapshot, WorkerStats

BLOCKS = " ▁▂▃▄▅▆▇█"
"""A cell filled to 0/8 … 8/8 of its height."""
HBLOCKS = " ▏▎▍▌▋▊▉█"
"""A cell filled to 0/8 … 8/8 of its width."""
LEVEL_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red", "info": "cyan"}
LEVEL_LABEL = {"ok": "ok", "warn": "WARN", "critical": "CRITICAL", "info": "info"}
DROP_CRITICAL = 0.01
"""Drop ratio shown as critical (red); any drop at all is shown as a warning."""
CHART_HEIGHT = 4
"""Rows of the overall sampling-rate chart: 32 levels, 3 % of the scale each."""
MAX_ALERTS = 5
MAX_ENDPOINTS = 5
SIDE_BY_SIDE = 80
"""From this width on, traffic and resources (alerts and endpoints) share a row."""


# -- numbers as text ----------------------------------------------------------------------------------
def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_pct(fraction: float) -> str:
    """100%, 42.0%, 0.50%, <0.01%, 0%."""
    p = fraction * 100
    if not math.isfinite(p):
        return "?"
    if p == 0:
        return "0%"
    if p >= 99.95:
        return f"{p:.0f}%"
    if p >= 1:
        return f"{p:.1f}%"
    if p >= 0.01:
        return f"{p:.2f}%"
    return "<0.01%"


def fmt_elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def fmt_span(seconds: float) -> str:
    """Short axis labels: 45s, 12m05s, 1h02m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def fmt_alert_time(t: float) -> str:
    """An alert's time: seconds since the capture started, as +12.3s."""
    return f"+{t:.1f}s"


def level(fraction: float | None, warn: float, critical: float) -> str:
    """'ok', 'warn' or 'critical' for a fraction of a limit."""
    if fraction is None or not math.isfinite(fraction):
        return "ok"
    if fraction >= critical:
        return "critical"
    if fraction >= warn:
        return "warn"
    return "ok"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


# -- curves ---------------------------------------------------------------------------------------------
def with_now(points: Sequence[tuple[float, float]], now: float, value: float) -> list[tuple[float, float]]:
    """The history, extended to ``now`` with the value in force (histories may hold changes only)."""
    out = list(points)
    if not out or now > out[-1][0]:
        out.append((now, value))
    return out


def resample(points: Sequence[tuple[float, float]], columns: int, *, min_step: float = 1.0,
             reduce: Callable[[Sequence[float]], float] = min) -> list[float | None]:
    """(time, value) points, oldest first, as ``columns`` cells from the first time to the last.

    A cell covers at least ``min_step`` seconds (so a short run is drawn from the left at one cell
    per second, and a long one is compressed to fit); its value is ``reduce`` (min: a brief cut
    stays visible) of the value in force at its start and every point inside it. Cells after the
    last point are None.
    """
    if columns <= 0:
        return []
    if not points:
        return [None] * columns
    times = list(map(itemgetter(0), points))
    values = list(map(itemgetter(1), points))
    t0, t1 = times[0], times[-1]
    step = max(min_step, (t1 - t0) / (columns - 1)) if columns > 1 else max(min_step, t1 - t0)
    out: list[float | None] = []
    for i in range(columns):
        end = t0 + i * step
        if end > t1 + 1e-9:
            out.append(None)
            continue
        hi = bisect.bisect_right(times, end + 1e-9)
        if i == 0:
            out.append(values[hi - 1])
            continue
        lo = bisect.bisect_right(times, end - step + 1e-9)
        out.append(reduce(values[max(lo - 1, 0):hi]))  # in force at the cell's start, and all inside
    return out


def chart_rows(values: Sequence[float | None], height: int, *, lo: float = 0.0, hi: float = 1.0) -> list[str]:
    """``height`` text rows drawing the values as columns of block characters (top row first).

    Every present value shows at least a sliver, so "no data" (a blank) and "tiny" differ.
    """
    levels: list[int | None] = []
    for v in values:
        if v is None or not math.isfinite(v):
            levels.append(None)
            continue
        frac = (min(max(v, lo), hi) - lo) / (hi - lo) if hi > lo else 0.0
        levels.append(max(1, round(frac * height * 8)))
    rows = []
    for r in range(height):
        base = (height - 1 - r) * 8
        rows.append("".join(" " if lv is None else BLOCKS[min(8, max(0, lv - base))] for lv in levels))
    return rows


def sparkline(points: Sequence[tuple[float, float]], width: int, *, lo: float = 0.0, hi: float = 1.0,
              reduce: Callable[[Sequence[float]], float] = min) -> str:
    """A one-row curve of ``width`` cells."""
    return chart_rows(resample(points, width, reduce=reduce), 1, lo=lo, hi=hi)[0]


def bar(fraction: float, width: int, style: str) -> Text:
    """A water-level bar: ``fraction`` of ``width`` cells filled, in eighths."""
    f = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 0.0
    eighths = round(f * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (HBLOCKS[part] if part and full < width else "")
    return Text.assemble((filled, style), ("░" * (width - len(filled)), "grey50"))


# -- panels --------------------------------------------------------------------------------------------
def _panel(body: RenderableType, title: str | Text, width: int, style: str = "blue") -> Panel:
    return Panel(body, title=title, title_align="left", border_style=style, width=width, padding=(0, 1))


class KeyValues:
    """Rows of ``label  value`` as one Text (labels padded to a width; long values cut with …).

    Cheaper than a rich Table grid, which lays itself out again on every frame.
    """

    def __init__(self, label_width: int) -> None:
        self.label_width = label_width
        self.rows: list[tuple[Text, Text]] = []

    def add_row(self, label: Text, value: Text) -> None:
        self.rows.append((label, value))

    def text(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        for i, (label, value) in enumerate(self.rows):
            if i:
                out.append("\n")
            out.append_text(label)
            out.append(" " * max(1, self.label_width + 1 - label.cell_len))
            out.append_text(value)
        return out


def _grid(label_width: int) -> KeyValues:
    return KeyValues(label_width)


def _header(s: StatsSnapshot, width: int) -> Panel:
    inner = width - 4
    targets = ", ".join(s.targets[:4]) + (f" +{len(s.targets) - 4} more" if len(s.targets) > 4 else "")
    fields = [
        ("elapsed", fmt_elapsed(s.elapsed)),
        ("profile", s.profile or "none"),
        ("filter", s.filter or "(none)"),
        ("targets", targets or "(none)"),
        ("output", s.output or "(none: counting only)"),
    ]
    line = Text(no_wrap=False, overflow="fold")
    for i, (key, value) in enumerate(fields):
        if i:
            line.append("   ")
        line.append(f"{key} ", style="dim")
        line.append(_clip(value, max(12, inner // 2)), style="bold")
    mode_style = {"full": "green", "auto": "cyan"}.get(s.mode, "magenta")
    title = Text.assemble(("kstap", "bold"), " · ", (f"{s.mode} mode", f"bold {mode_style}"))
    return _panel(line, title, width)


def _rate_panel(s: StatsSnapshot, width: int) -> Panel:
    inner = width - 4
    columns = max(8, inner - 6)
    points = with_now(s.rate_history, s.elapsed, s.rate)
    values = resample(points, columns)
    rows = chart_rows(values, CHART_HEIGHT)
    body = Text()
    for i, row in enumerate(rows):
        body.append("100% ┤" if i == 0 else "     │", style="dim")
        body.append(row.rstrip(), style="cyan")
        body.append("\n")
    used = sum(v is not None for v in values)
    start, end = fmt_span(points[0][0]), fmt_span(points[-1][0])
    gap = used - len(start) - len(end)
    axis = "  0% └" + start + ("─" * gap + end if gap >= 1 else "")
    body.append(axis, style="dim")
    title = Text.assemble(("sampling rate ", "bold"), (fmt_pct(s.rate), "bold cyan"))
    changes = sum(1 for a, b in zip(s.rate_history, s.rate_history[1:], strict=False) if a[1] != b[1])
    if changes:
        title.append(f" · {changes} change{'s' if changes != 1 else ''}", style="dim")
    return _panel(body, title, width)


def _traffic_panel(s: StatsSnapshot, width: int) -> Panel:
    grid = _grid(13)
    grid.add_row(Text("packets/s", style="dim"), Text(fmt_count(round(s.packets_per_second)), style="bold"))
    grid.add_row(Text("captured", style="dim"), Text(f"{fmt_count(s.captured)} packets"))
    grid.add_row(Text("bytes", style="dim"), Text(fmt_bytes(s.bytes_captured)))
    grid.add_row(Text("received", style="dim"), Text(fmt_count(s.received)))
    ratio = s.drop_ratio
    drop_style = "green" if s.dropped == 0 else ("bold red" if ratio >= DROP_CRITICAL else "yellow")
    grid.add_row(Text("kernel drops", style="dim"),
                 Text(f"{fmt_count(s.dropped)} ({fmt_pct(ratio)})", style=drop_style))
    grid.add_row(Text("sampled out", style="dim"), Text(fmt_count(s.sampled_out)))
    if s.duplicates:
        grid.add_row(Text("duplicates", style="dim"), Text(f"{fmt_count(s.duplicates)} removed"))
    if s.left_out:
        grid.add_row(Text("left out", style="dim"), Text(f"{fmt_count(s.left_out)} in the kernel"))
    grid.add_row(Text("flows", style="dim"), Text(f"{fmt_count(s.flows_tracked)} tracked"))
    if s.dissect_memory:
        grid.add_row(Text("dissect mem", style="dim"), Text(fmt_bytes(s.dissect_memory)))
    return _panel(grid.text(), Text("traffic", style="bold"), width)


def _resources_panel(s: StatsSnapshot, width: int, warn: float, critical: float) -> Panel:
    inner = width - 4
    bar_width = max(6, inner - 11 - 17)
    grid = _grid(10)
    r = s.resources
    if r is None:
        grid.add_row(Text("memory", style="dim"), Text("not measured", style="dim"))
    else:
        _memory_rows(grid, r, s.memory_history, bar_width, warn, critical)
        _cpu_rows(grid, r, bar_width, warn, critical)
    grid.add_row(Text("controller", style="dim"), _controller_text(s.controller, s.mode))
    if s.controller is not None:
        grid.add_row(Text(""), _pid_text(s.controller))
    title = Text.assemble(("resources", "bold"), (f" · {r.source}" if r and r.source else "", "dim"))
    return _panel(grid.text(), title, width)


def _memory_rows(grid: KeyValues, r: ResourceStats, history: Sequence[tuple[float, float]], bar_width: int,
                 warn: float, critical: float) -> None:
    if not r.memory_limit:
        grid.add_row(Text("memory", style="dim"), Text(f"{fmt_bytes(r.memory_bytes)} (no limit found)"))
        return
    fraction = r.memory_bytes / r.memory_limit
    lv = level(fraction, warn, critical)
    style = LEVEL_STYLE[lv]
    line = bar(fraction, bar_width, style)
    line.append(f" {fmt_pct(fraction):>6}", style=style)
    if lv != "ok":
        line.append(f" {LEVEL_LABEL[lv]}", style=f"bold {style}")
    grid.add_row(Text("memory", style="dim"), line)
    grid.add_row(Text(""), Text(f"{fmt_bytes(r.memory_bytes)} / {fmt_bytes(r.memory_limit)}"
                                f" · warn {warn:.0%} · crit {critical:.0%}", style="dim"))
    if len(history) > 1:
        curve = sparkline(history, bar_width, reduce=max)
        grid.add_row(Text(""), Text(curve.rstrip(), style=style))
    extra = []
    if r.oom_events:
        extra.append(("OOM events " + str(r.oom_events), "bold red"))
    if r.psi_memory_some is not None or r.psi_memory_full is not None:
        some = r.psi_memory_some or 0.0
        full = r.psi_memory_full or 0.0
        extra.append((f"psi some {some:.2f} full {full:.2f}", "red" if full > 0 else "dim"))
    if extra:
        t = Text()
        for i, (text, st) in enumerate(extra):
            t.append(("  " if i else "") + text, style=st)
        grid.add_row(Text(""), t)


def _cpu_rows(grid: KeyValues, r: ResourceStats, bar_width: int, warn: float, critical: float) -> None:
    if r.cpu_limit:
        fraction = r.cpu_cores / r.cpu_limit
        style = LEVEL_STYLE[level(fraction, warn, critical)]
        line = bar(fraction, bar_width, style)
        line.append(f" {fmt_pct(fraction):>6}", style=style)
        grid.add_row(Text("cpu", style="dim"), line)
        detail = f"{r.cpu_cores:.2f} of {r.cpu_limit:.2f} cores"
    else:
        detail = f"{r.cpu_cores:.2f} cores (no limit found)"
        grid.add_row(Text("cpu", style="dim"), Text(detail))
        detail = ""
    throttled = f"throttled {fmt_count(r.throttled_periods)} periods"
    t = Text(detail + (" · " if detail else ""), style="dim")
    t.append(throttled, style="yellow" if r.throttled_periods else "dim")
    grid.add_row(Text(""), t)


def _controller_text(c: ControllerState | None, mode: str) -> Text:
    if c is None:
        return Text("off" if mode != "auto" else "waiting for the first tick", style="dim")
    t = Text()
    t.append(f"pressure {c.pressure:.2f}", style="bold")
    t.append(f" → setpoint {c.setpoint:.2f} · error {c.error:+.2f}")
    return t


def _pid_text(c: ControllerState) -> Text:
    t = Text(f"P {c.p_term:+.3f}  I {c.i_term:+.3f}  D {c.d_term:+.3f}", style="dim")
    if c.reason:
        t.append(f" · {c.reason}", style="bold red" if c.reason == "emergency" else "")
    return t


def _alerts_panel(alerts: Sequence[Alert], width: int) -> Panel:
    if not alerts:
        return _panel(Text("no alerts", style="dim"), Text("alerts", style="bold"), width)
    inner = width - 4
    body = Text()
    for i, a in enumerate(list(reversed(alerts))[:MAX_ALERTS]):
        lv = a.level if a.level in LEVEL_STYLE else "warn"
        if i:
            body.append("\n")
        body.append(f"{fmt_alert_time(a.time):<8} ", style="dim")
        body.append(f"{LEVEL_LABEL[lv]:<8} ", style=f"bold {LEVEL_STYLE[lv]}")
        body.append(_clip(f"{a.kind}: {a.message}", max(8, inner - 18)))
    more = len(alerts) - MAX_ALERTS
    title = Text.assemble(("alerts", "bold"), (f" · {len(alerts)}" + (f" ({more} older)" if more > 0 else ""),
                                               "dim"))
    worst = "critical" if any(a.level == "critical" for a in alerts) else "warn"
    return _panel(body, title, width, style="red" if worst == "critical" else "yellow")


def _endpoints_panel(endpoints: Sequence[tuple[str, int]], width: int) -> Panel:
    """The busiest L7 endpoints, as one wrapped line (``name count · name count · …``)."""
    inner = width - 4
    body = Text()
    used = 0
    for name, n in endpoints[:MAX_ENDPOINTS]:
        label, count = _clip(name, max(12, inner - 12)) + " ", fmt_count(n)
        size = len(label) + len(count)
        if used and used + 5 + size > inner:
            body.append("\n")
            used = 0
        elif used:
            body.append("  ·  ", style="dim")
            used += 5
        body.append(label)
        body.append(count, style="bold")
        used += size
    return _panel(body, Text("top endpoints", style="bold"), width)


NODE_WIDTH = 14
MIN_CURVE = 8


def _workers_panel(workers: Sequence[WorkerStats], width: int) -> Panel:
    """A row per worker, as aligned text (a rich Table costs ~1 ms per row to lay out at 1 Hz)."""
    inner = width - 4
    lost = 0
    states, drops = [], []
    for w in workers:
        if w.alive:
            states.append(Text("up", style="green") if not w.restarts else Text(f"up ↻{w.restarts}", style="yellow"))
        else:
            lost += 1
            states.append(Text("LOST", style="bold red"))
        ratio = w.dropped / w.received if w.received else 0.0
        drops.append(Text(fmt_count(w.dropped) + (f" ({fmt_pct(ratio)})" if w.dropped else "")))
    columns: list[tuple[str, str, list[Text]]] = [  # (header, justify, cells)
        ("worker", "left", [Text(str(w.worker)) for w in workers]),
        ("node", "left", [Text(_clip(w.node or "-", NODE_WIDTH)) for w in workers]),
        ("state", "left", states),
        ("captured", "right", [Text(fmt_count(w.captured)) for w in workers]),
        ("received", "right", [Text(fmt_count(w.received)) for w in workers]),
        ("drops", "right", drops),
        ("rate", "right", [Text(fmt_pct(w.rate)) for w in workers]),
    ]
    widths = [max(len(h), *(c.cell_len for c in cells)) for h, _, cells in columns]

    def used() -> int:
        return 1 + sum(widths) + 2 * (len(widths) - 1)

    curve_width = inner - used() - 2
    if curve_width < MIN_CURVE:  # make room: drop 'received' first, then the curve
        del columns[4], widths[4]
        curve_width = inner - used() - 2
    if curve_width >= MIN_CURVE:
        curves = [Text(sparkline(w.rate_history, curve_width).rstrip() if w.rate_history else "", style="cyan")
                  for w in workers]
        columns.append(("rate curve" if curve_width >= 10 else "curve", "left", curves))
        widths.append(curve_width)
    body = Text(no_wrap=True, overflow="ellipsis")
    body.append_text(_row([Text(h, style="dim") for h, _, _ in columns], widths, [j for _, j, _ in columns]))
    for i, w in enumerate(workers):
        body.append("\n")
        row = _row([cells[i] for _, _, cells in columns], widths, [j for _, j, _ in columns])
        if not w.alive:
            row.stylize("dim")
        body.append_text(row)
    title = Text.assemble(("workers", "bold"), (f" · {len(workers) - lost} up", "dim"))
    if lost:
        title.append(f" · {lost} lost", style="bold red")
    return _panel(body, title, width, style="red" if lost else "blue")


def _row(cells: Sequence[Text], widths: Sequence[int], justify: Sequence[str]) -> Text:
    line = Text(" ")
    for i, (cell, w, j) in enumerate(zip(cells, widths, justify, strict=True)):
        if i:
            line.append("  ")
        pad = " " * max(0, w - cell.cell_len)
        if j == "right":
            line.append(pad)
            line.append_text(cell)
        else:
            line.append_text(cell)
            line.append(pad)
    line.rstrip()
    return line


def _body_lines(panel: Panel) -> int:
    return str(panel.renderable).count("\n") + 1


class SideBySide:
    """Two fixed-width panels on the same rows, drawn to the same height (no table layout)."""

    def __init__(self, left: Panel, right: Panel) -> None:
        left.height = right.height = max(_body_lines(left), _body_lines(right)) + 2
        self.left, self.right = left, right

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lw, rw = self.left.width or options.max_width // 2, self.right.width or options.max_width // 2
        left = console.render_lines(self.left, options.update(width=lw), pad=True)
        right = console.render_lines(self.right, options.update(width=rw), pad=True)
        for a, b in zip(left, right, strict=False):
            yield from a
            yield from b
            yield Segment.line()


def _pair(left: Panel, right: Panel) -> SideBySide:
    return SideBySide(left, right)


def render(snapshot: StatsSnapshot, *, width: int, height: int | None = None, warn: float = 0.70,
           critical: float = 0.90) -> RenderableType:
    """The dashboard for ``snapshot``, at most ``width`` cells wide (and ``height`` rows, if given).

    ``warn`` and ``critical`` are the memory (and CPU) water levels, as fractions of the limit,
    from which the bars turn yellow and red. On a short terminal whole panels are left out, least
    needed first (endpoints, workers, the rate chart, quiet alerts), never cut in the middle, and a
    last line says how many.
    """
    s = snapshot
    width = max(40, width)
    side = width >= SIDE_BY_SIDE
    left_w = width * 2 // 5 if side else width
    right_w = width - left_w if side else width
    traffic = _traffic_panel(s, left_w)
    resources = _resources_panel(s, right_w, warn, critical)
    # (renderable, priority: lower is kept first)
    parts: list[tuple[RenderableType, int]] = [(_header(s, width), 0), (_rate_panel(s, width), 4)]
    parts += [(_pair(traffic, resources), 1)] if side else [(traffic, 1), (resources, 2)]
    parts.append((_alerts_panel(s.alerts, width), 3 if s.alerts else 5))
    if s.top_endpoints:
        parts.append((_endpoints_panel(s.top_endpoints, width), 7))
    if s.workers:
        parts.append((_workers_panel(s.workers, width), 6))
    if height is None:
        return Constrain(Group(*(p for p, _ in parts)), width=width)
    return Constrain(Group(*_fit(parts, width, height)), width=width)


def _fit(parts: list[tuple[RenderableType, int]], width: int, height: int) -> list[RenderableType]:
    """The parts that fit in ``height`` rows, kept by priority, shown in their order, plus a note."""
    measure = Console(width=width, file=io.StringIO(), color_system=None)
    rows = [len(measure.render_lines(p, measure.options.update(width=width), pad=False)) for p, _ in parts]
    kept: set[int] = set()
    used = 0
    for i in sorted(range(len(parts)), key=lambda i: parts[i][1]):
        room = height - used - (0 if len(kept) + 1 == len(parts) else 1)  # a row for the note
        if rows[i] <= room:
            kept.add(i)
            used += rows[i]
    shown: list[RenderableType] = [p for i, (p, _) in enumerate(parts) if i in kept]
    hidden = len(parts) - len(kept)
    if hidden:
        note = f" {hidden} panel{'s' if hidden != 1 else ''} hidden ({height} rows): a taller terminal shows all"
        shown.append(Text(note, style="dim", no_wrap=True, overflow="ellipsis"))
    return shown
