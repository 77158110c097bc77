"""What a worker shows of its running job, where the user looks: its own terminal or notebook cell.

Jobs report `ctx.progress(fraction, message)` ("epoch 2/15 batch 300/1875 loss 0.41 acc 0.871
2310 img/s"). The heartbeat publishes the newest one to the database for `sweeper status`; the
worker also hands every call to a view from here:

    BarView    a rich progress bar (percentage, message, ETA), on an interactive terminal with one
               worker process; the worker's log lines scroll above it
    LineView   a plain line at most every `every_s` seconds per job, prefixed by the worker's log
               prefix (time, worker pid) and the job: a notebook cell (Colab's `!sweeper work`
               is a pipe) shows it as it comes, and a log file stays readable

The ETA is the rate of this attempt (fraction done since the job was claimed, over the time
since), so a resumed job does not count the work of the attempt before it as instant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sweeper.views.safe_text import visible

DEFAULT_EVERY_S = 15.0


class ProgressView(Protocol):
    def updater(self, job: Any) -> Callable[[float | None, str | None], None]: ...

    def remove(self, job: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class Rate:
    """Fraction done per second within one attempt; an ETA from it."""

    t0: float
    f0: float | None = None
    last: float | None = None
    now: float = 0.0

    def observe(self, fraction: float | None, now: float) -> None:
        if fraction is None:
            return
        if self.f0 is None:
            self.f0, self.t0 = fraction, now
        self.last = fraction
        self.now = now

    def eta_s(self) -> float | None:
        if self.f0 is None or self.last is None or self.last <= self.f0:
            return None
        return (1.0 - self.last) * (self.now - self.t0) / (self.last - self.f0)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA ?"
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"ETA {h}h{m:02d}m" if h else f"ETA {m}m{s:02d}s" if m else f"ETA {s}s"


class LineView:
    """One plain line per job at most every `every_s` seconds (the first after `every_s` too)."""

    def __init__(
        self, emit: Callable[[str], None], every_s: float = DEFAULT_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.emit = emit
        self.every_s = every_s
        self.clock = clock

    def updater(self, job: Any) -> Callable[[float | None, str | None], None]:
        started = self.clock()
        rate = Rate(started)
        last_line = started

        def update(fraction: float | None, message: str | None) -> None:
            nonlocal last_line
            now = self.clock()
            rate.observe(fraction, now)
            if now - last_line < self.every_s:
                return
            last_line = now
            parts = [f"job {job.id} [{job.stage}]", f"{fraction:.0%}" if fraction is not None else "", message or ""]
            parts = [visible(p) for p in parts]  # the job's words, shown as text (safe_text.py)
            self.emit(" ".join(p for p in [*parts, format_eta(rate.eta_s())] if p))

        return update

    def remove(self, job: Any) -> None:
        pass

    def close(self) -> None:
        pass


class BarView:
    """A rich progress bar per running job on stderr; started with the first job, stopped by close()."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}

    def _start(self) -> Any:
        if self.bars is None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            # markup=False: a stage name "[x]" or a message with "[/]" is text, not Rich markup.
            self.bars = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TextColumn("{task.fields[message]}", markup=False),
                TextColumn("{task.fields[eta]}", markup=False),
                console=self.console,
                redirect_stderr=True,  # the worker's log lines print above the bar
            )
            self.bars.start()
        return self.bars

    def updater(self, job: Any) -> Callable[[float | None, str | None], None]:
        rate = Rate(time.monotonic())

        def update(fraction: float | None, message: str | None) -> None:
            rate.observe(fraction, time.monotonic())
            bars = self._start()
            fields = {"message": visible(message or ""), "eta": format_eta(rate.eta_s())}
            task = self.tasks.get(job.id)
            if task is None:
                # created at the first report, at its fraction: a resumed job starts part-way
                self.tasks[job.id] = bars.add_task(
                    visible(f"{job.id} [{job.stage}]"), total=1.0, completed=fraction or 0, **fields
                )
            else:
                bars.update(task, completed=fraction, **fields)

        return update

    def remove(self, job: Any) -> None:
        task = self.tasks.pop(job.id, None)
        if task is not None and self.bars is not None:
            self.bars.remove_task(task)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


def make_view(emit: Callable[[str], None], *, bar: bool, every_s: float | None = None) -> ProgressView:
    """A bar when `bar` is allowed (one worker process) and stderr is an interactive terminal, else lines."""
    if bar:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal and not console.is_jupyter and not console.is_dumb_terminal:
            return BarView(console)
    return LineView(emit, every_s or DEFAULT_EVERY_S)
