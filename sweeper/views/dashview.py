"""Drawing `sweeper status` with rich: `render()` a StatusSnapshot for a terminal of 80 columns
and up, and `watch()` it live. The numbers come from dashboard.collect(); nothing here reads the
database or imports torch or mlflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sweeper.views.dashboard import Leaderboard, RunningRow, StatusSnapshot
from sweeper.views.safe_text import text as safe
from sweeper.views.safe_text import visible

# Bar glyphs differ by state as well as by colour, so the bar reads on a monochrome terminal too.
BAR = {
    "done": ("█", "green"),
    "running": ("▓", "yellow"),
    "pending": ("▒", "blue"),
    "blocked": ("░", "bright_black"),
    "failed": ("×", "red"),
    "cancelled": ("-", "magenta"),
}
BAR_ORDER = ("done", "failed", "cancelled", "running", "pending", "blocked")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        h, m = divmod(round(s / 60), 60)
        return f"{h}h{m:02d}m"
    d, h = divmod(round(s / 3600), 24)
    return f"{d}d{h:02d}h"


def rate(per_hour: float) -> str:
    return f"{per_hour:,.0f}" if per_hour >= 10 else f"{per_hour:.2g}"


def segments(counts: dict[str, int], width: int) -> list[tuple[str, int]]:
    """Split `width` cells among the states in proportion (largest remainder); no state with jobs gets 0."""
    total = sum(counts.get(s, 0) for s in BAR_ORDER)
    if total == 0 or width <= 0:
        return []
    present = [s for s in BAR_ORDER if counts.get(s, 0)]
    width = max(width, len(present))
    exact = {s: counts[s] * width / total for s in present}
    cells = {s: max(1, int(exact[s])) for s in present}
    while sum(cells.values()) > width:
        biggest = max(cells, key=lambda s: cells[s])
        cells[biggest] -= 1
    for s in sorted(present, key=lambda s: exact[s] - int(exact[s]), reverse=True):
        if sum(cells.values()) >= width:
            break
        cells[s] += 1
    return [(s, cells[s]) for s in present]


def stage_bar(counts: dict[str, int], width: int) -> Any:
    from rich.text import Text

    bar = Text()
    for state, n in segments(counts, width):
        glyph, style = BAR[state]
        bar.append(glyph * n, style=style)
    return bar


def render(snap: StatusSnapshot, width: int = 80) -> Any:
    """A rich renderable of the snapshot, laid out for a terminal `width` columns wide (80 and up)."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [_header(snap)]
    if not snap.stages:
        parts.append(Text("no jobs yet: sweeper enqueue GRID.yaml", style="dim"))
        return Group(*parts)
    parts.append(_stages(snap, width))
    if snap.running:
        parts.append(_running(snap, width))
    if snap.leaderboard is not None:
        parts.append(_leaders(snap.leaderboard))
    if snap.failed:
        parts.append(_failures(snap))
    if snap.workers:
        parts.append(_workers(snap))
    return Group(*parts)


def _header(snap: StatusSnapshot) -> Any:
    from rich.text import Text

    head = Text()
    if len(snap.sweeps) == 1:
        s = snap.sweeps[0]
        head.append(f"sweep {visible(s.name)}", style="bold")
        if s.description:
            head.append(f"  {visible(s.description)}", style="italic")
    elif snap.sweeps:
        head.append(f"{len(snap.sweeps)} sweeps: ", style="bold")
        head.append(", ".join(visible(s.name) for s in snap.sweeps))
    else:
        head.append("no sweep", style="bold")
    head.append("\n")
    head.append(snap.database, style="dim")
    head.append(f"  at {time.strftime('%H:%M:%S', time.localtime(snap.time))}\n", style="dim")
    totals = snap.totals()
    n = sum(totals.values())
    head.append(f"{n} jobs: ", style="bold")
    head.append(
        ", ".join(f"{v} {k}" for k, v in totals.items() if v) or "none",
    )
    live = snap.workers_live
    head.append(f"\n{live} worker{'s' if live != 1 else ''} live")
    if snap.throughput_per_h:
        head.append(f"  ·  {rate(snap.throughput_per_h)} jobs/h")
    if any(s.remaining for s in snap.stages):
        eta = snap.eta_s
        head.append("  ·  ETA ")
        if eta is None:
            head.append("? (no job finished yet)")
        else:
            head.append(duration(eta) if snap.eta_complete else f"≥{duration(eta)}", style="bold")
    return head


def _stages(snap: StatusSnapshot, width: int) -> Any:
    from rich.table import Table
    from rich.text import Text

    multi = len({s.sweep for s in snap.stages}) > 1
    names = [visible(f"{s.sweep}/{s.stage}" if multi else s.stage) for s in snap.stages]
    name_w = min(22, max(len(n) for n in names))
    count_w = max(len(f"{s.counts.get('done', 0)}/{s.total}") for s in snap.stages)
    # name | bar | "done/total done" | "ETA 1h05m": keep the row inside `width`.
    bar_w = max(10, width - name_w - count_w - 5 - 16)

    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, overflow="ellipsis", max_width=name_w)
    table.add_column()
    for name, s in zip(names, snap.stages, strict=True):
        top = stage_bar(s.counts, bar_w)
        top.append(f" {s.counts.get('done', 0):>{len(str(s.total))}}/{s.total} done", style="bold")
        if s.remaining:
            top.append(f"  ETA {duration(s.eta_s)}" if s.eta_s is not None else "  ETA ?")
        detail = Text(style="dim")
        bits = [f"{s.counts[k]} {k}" for k in ("running", "pending", "blocked", "failed", "cancelled") if s.counts[k]]
        if s.mean_duration_s is not None:
            bits.append(f"{duration(s.mean_duration_s)}/job")
        if s.throughput_per_h:
            bits.append(f"{rate(s.throughput_per_h)}/h")
        detail.append(" · ".join(bits) if bits else visible(s.kind))
        if s.waiting_on:
            detail.append(f" · {visible(s.waiting_on)}", style="yellow")
        if s.stale:
            detail.append(f" · {s.stale} stale (upstream changed): sweeper retry --stale", style="yellow")
        table.add_row(Text(name, style="bold cyan"), top)
        table.add_row("", detail)
    legend = Text("  ".join(f"{BAR[s][0]} {s}" for s in BAR_ORDER), style="dim")
    return titled("stages", table, legend)


def titled(title: str, body: Any, footer: Any = None) -> Any:
    from rich.console import Group
    from rich.text import Text

    items = [Text(""), safe(title, "bold underline"), body]
    if footer is not None:
        items.append(footer)
    return Group(*items)


def plain_table(*columns: tuple[str, dict[str, Any]]) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    for name, opts in columns:
        t.add_column(name, **opts)
    return t


def _cell(text: Any, width: int, justify: str = "left") -> Any:
    """`text` cut or padded to exactly `width` cells."""
    from rich.text import Text

    t = text.copy() if isinstance(text, Text) else safe(text)
    if t.cell_len > width:
        t.truncate(width, overflow="ellipsis")
    pad = width - t.cell_len
    if justify == "right":
        return Text(" " * pad) + t
    t.append(" " * pad)
    return t


def _epoch_text(r: RunningRow) -> str:
    if r.epoch is None:
        return r.message or "-"
    return f"{r.epoch}/{r.epochs}" if r.epochs else str(r.epoch)


def _running(snap: StatusSnapshot, width: int) -> Any:
    """One line per running job with aligned columns, and its params on a dim line below.

    Hand-laid rather than a rich Table: the params line spans the row, which a table cell cannot.
    """
    from rich.text import Text

    stage_w = min(14, max(5, *(len(visible(r.stage)) for r in snap.running)))
    cols = [("job", 12, "left"), ("stage", stage_w, "left"), ("progress", 13, "left"), ("epoch", 10, "left")]
    cols += [("beat", 4, "right"), ("try", 3, "right")]
    used = sum(w for _, w, _ in cols) + 2 * len(cols)
    worker_w = max(6, width - used)
    lines = []
    head = Text(style="bold")
    for name, w, justify in cols:
        head += _cell(name, w, justify) + Text("  ")
    head += _cell("worker", worker_w)
    lines.append(head)
    for r in snap.running:
        prog = Text()
        if r.progress is not None:
            p = min(1.0, max(0.0, r.progress))
            filled = round(p * 8)
            prog.append("█" * filled, style="yellow")
            prog.append("░" * (8 - filled), style="bright_black")
            prog.append(f" {100 * p:3.0f}%")
        else:
            prog.append("-")
        epoch = _epoch_text(r)
        beat = Text(duration(r.heartbeat_age_s), style="red" if (r.heartbeat_age_s or 0) > 60 else "")
        cells = [r.id, safe(r.stage, "cyan"), prog, epoch, beat, str(r.attempt)]
        line = Text()
        for value, (_, w, justify) in zip(cells, cols, strict=True):
            line += _cell(value, w, justify) + Text("  ")
        line += _cell(r.worker or "-", worker_w)
        lines.append(line)
        if r.label:
            lines.append(_cell(safe(" " * 14 + r.label, "dim"), width))
    return titled(f"running ({len(snap.running)})", Text("\n").join(lines))


def _leaders(board: Leaderboard) -> Any:

    title = f"top {board.k} by {board.metric} ({'higher' if board.mode == 'max' else 'lower'} is better)"
    if not board.rows:
        hint = f"no finished job reports {board.metric} yet"
        if board.available:
            # ranked by similarity to the metric asked for (ranking.rank_metrics)
            hint += f"; results have {', '.join(board.available[:8])} (try --by {board.available[0]})"
        return titled(title, safe(hint, "dim"))
    t = plain_table(
        ("#", {"justify": "right", "no_wrap": True}),
        ("job", {"no_wrap": True, "min_width": 12}),
        ("stage", {"no_wrap": True, "overflow": "ellipsis", "max_width": 14}),
        (visible(board.metric), {"justify": "right", "no_wrap": True}),
        ("params", {"overflow": "fold", "ratio": 1}),
    )
    for r in board.rows:
        t.add_row(str(r.rank), safe(r.id), safe(r.stage), f"{r.value:.4g}", safe(r.label or "-"))
    return titled(title, t)


def _failures(snap: StatusSnapshot) -> Any:

    more = f", {snap.failed_total - len(snap.failed)} more" if snap.failed_total > len(snap.failed) else ""
    t = plain_table(
        ("job", {"no_wrap": True, "min_width": 12}),
        ("stage", {"no_wrap": True, "overflow": "ellipsis", "max_width": 14}),
        ("error", {"overflow": "fold", "ratio": 1}),
    )
    for f in snap.failed:
        error = f.error if len(f.error) <= 160 else f.error[:157] + "..."
        t.add_row(safe(f.id), safe(f.stage), safe(error, "red"))
    return titled(f"failed ({snap.failed_total}{more}; sweeper show JOB for the traceback)", t)


def _workers(snap: StatusSnapshot) -> Any:

    t = plain_table(
        ("host", {"no_wrap": True, "overflow": "ellipsis", "max_width": 20}),
        ("pid", {"justify": "right", "no_wrap": True}),
        ("status", {"no_wrap": True}),
        ("heartbeat", {"justify": "right", "no_wrap": True}),
        ("job", {"no_wrap": True}),
    )
    styles = {"running": "green", "lost": "red", "stopped": "dim"}
    for w in snap.workers:
        t.add_row(
            safe(w.host),
            str(w.pid),
            safe(w.status, styles.get(w.status, "")),
            f"{duration(w.heartbeat_age_s)} ago",
            safe(w.current_job or "-"),
        )
    more = f", {snap.workers_hidden} older not shown" if snap.workers_hidden else ""
    return titled(f"workers ({snap.workers_live} live{more})", t)


# ---------------------------------------------------------------------------------------------
# Live


def watch(
    read: Callable[[], StatusSnapshot],
    console: Any,
    *,
    interval: float = 2.0,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Redraw the status every `interval` seconds until Ctrl-C (or `stop()` says so).

    A failed read (database restarting, network blip) keeps the last picture on screen with the
    error under it, and the next tick tries again.
    """
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    last: Any = Text("reading the queue ...", style="dim")
    with Live(last, console=console, auto_refresh=False, vertical_overflow="ellipsis", transient=False) as live:
        try:
            while True:
                try:
                    snap = read()
                    last = render(snap, console.width)
                    view = Group(last, Text(f"\nrefreshing every {interval:g}s; Ctrl-C to quit", style="dim"))
                except Exception as exc:  # show it and keep watching: the next read may work
                    msg = str(getattr(exc, "message", None) or exc).splitlines()[0][:200]
                    view = Group(last, Text(f"\ncannot read the queue: {visible(msg)}; retrying", style="red"))
                live.update(view, refresh=True)
                if stop is not None and stop():
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return
