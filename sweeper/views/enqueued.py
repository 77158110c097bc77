"""What `sweeper enqueue` (and `work GRID`) prints: the jobs a grid file adds, changes and leaves.

Reads nothing: the EnqueueDiff comes from Queue.enqueue() or admin.preview_enqueue().
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from sweeper.store.queue import EnqueueDiff
from sweeper.views import safe_text

LIMIT = 30  # rows listed after a real enqueue; --dry-run lists them all


def print_diff(console: Console, diff: EnqueueDiff, display_db: str, *, listing: bool) -> None:
    """The summary line, new jobs per stage, and a table of the rows (`listing`: unchanged ones too)."""
    verb = "would add" if diff.dry_run else "added"
    console.print(
        f"sweep [bold]{diff.sweep}[/]: {verb} {len(diff.new)} new job(s), {len(diff.unchanged)} unchanged, "
        f"{len(diff.gone)} no longer in the file (left alone)  [dim]{display_db}[/]"
    )
    if diff.new:
        per_stage = Counter(j.stage for j in diff.new)  # in file order: Counter keeps first-seen order
        console.print("new jobs by stage: " + ", ".join(f"{stage} {n}" for stage, n in per_stage.items()))
    if diff.reprioritized:
        verb = "would change" if diff.dry_run else "changed"
        console.print(f"{verb} the priority of {len(diff.reprioritized)} job(s) not started yet")
    rows = [("new", j.id, j.stage, j.label) for j in diff.new]
    rows += [(f"priority {old} -> {j.priority}", j.id, j.stage, j.label) for j, old in diff.reprioritized]
    if listing:
        rows += [("unchanged", j.id, j.stage, j.label) for j in diff.unchanged]
    rows += [(f"not in file ({status})", jid, stage, label) for jid, stage, label, status in diff.gone]
    if not rows:
        return
    limit = None if listing else LIMIT
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col in ("", "job", "stage", "params"):
        table.add_column(col)
    for row in rows[:limit]:
        table.add_row(*(safe_text.text(cell) for cell in row))  # labels hold values: text, not markup
    console.print(table)
    if limit is not None and len(rows) > limit:
        console.print(f"... and {len(rows) - limit} more (use --dry-run to list them all)")
