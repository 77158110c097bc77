"""The report's "Successive halving" section: survivors per rung, curves across rungs, compute.

A sweep has a halving when some stage's jobs were written as promote jobs (`rank_of` with
`continue: true`, see sweeper/grid/promote.py). Each chain root -> rung1 -> rung2 ... gets:

* the rungs: how many jobs each trained, to how many epochs, chosen by which metric;
* the survivors: every configuration that was promoted at least once, with its metric at each
  rung it reached and its final figures;
* the curves: the ranking metric per epoch of every configuration, each promoted one drawn from
  its deepest job (whose history continues its upstream's), so one line runs across the rungs;
  drawn when the jobs left a `history.json` with per-epoch records (kind: train does);
* compute: job time per rung, against the full grid at the top rung's epochs, estimated from
  rung 0's job time per epoch (what every configuration would have cost trained all the way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sweeper.grid.handoff import CONTINUE_KEY, RANK_KEY
from sweeper.store.results import JobRecord, SweepView
from sweeper.views.markdown import Section, md_table

# Per-epoch keys of a train job's history.json for the metrics a promote ranks by.
EPOCH_KEYS = {"val_accuracy": "val_acc", "test_accuracy": "test_acc", "val_loss": "val_loss", "test_loss": "test_loss"}


@dataclass
class Rung:
    stage: str
    jobs: list[JobRecord]
    epochs: int | None
    by: str | None = None  # None for the root stage
    source: str | None = None


@dataclass
class Chain:
    rungs: list[Rung] = field(default_factory=list)

    @property
    def by(self) -> str:
        return next((r.by for r in self.rungs if r.by), "val_accuracy")


def _promote_of(job: JobRecord) -> Mapping[str, Any] | None:
    value = job.params_written.get(RANK_KEY)
    return value if isinstance(value, Mapping) and value.get("continue") else None


def find_chains(view: SweepView) -> list[Chain]:
    jobs = view.jobs(None, status=None)
    by_stage: dict[str, list[JobRecord]] = {}
    for j in jobs:
        by_stage.setdefault(j.stage, []).append(j)
    source_of: dict[str, tuple[str, str, int]] = {}
    for stage, recs in by_stage.items():
        promote = _promote_of(recs[0])
        if promote is not None:
            source_of[stage] = (
                str(promote["stage"]),
                str(promote["by"]),
                int(recs[0].params_written.get("max_epochs", 0)),
            )
    chains = []
    sources: set[str] = {src for src, _, _ in source_of.values() if src not in source_of}
    roots = sorted(sources, key=lambda name: by_stage[name][0].position if name in by_stage else 0)
    for root in roots:
        recs = by_stage.get(root, [])
        epochs = {j.params.get("max_epochs") for j in recs}
        first = next(iter(epochs)) if len(epochs) == 1 else None
        chain = Chain([Rung(root, recs, first if isinstance(first, int) else None)])
        current = root
        while True:
            nxt = [name for name, (src, _, _) in source_of.items() if src == current]
            if not nxt:
                break
            current = nxt[0]
            src, by, max_epochs = source_of[current]
            chain.rungs.append(Rung(current, by_stage[current], max_epochs, by, src))
        chains.append(chain)
    return chains


def _varying(jobs: list[JobRecord]) -> list[str]:
    flats = [j.flat_params() for j in jobs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1 and k not in (CONTINUE_KEY, "max_epochs")]


def _config(job: JobRecord, keys: list[str]) -> str:
    flat = job.flat_params()
    return " ".join(f"{k}={flat.get(k)}" for k in keys) or job.label


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def sections(view: SweepView) -> list[Any]:
    out = []
    for n, chain in enumerate(find_chains(view), start=1):
        root = chain.rungs[0]
        keys = _varying(root.jobs)
        by = chain.by
        body: list[str] = []
        shape = " -> ".join(f"`{r.stage}` {len(r.jobs)} x {r.epochs or '?'} epochs" for r in chain.rungs)
        body.append(
            f"{shape}. Each rung keeps the best of the one before by `{by}` (chosen once, when that rung had "
            "finished, from the queue; ties go to the job earlier in the queue) and trains them on from their "
            "last checkpoint."
        )
        # survivors: the reach of every configuration, through the `continue_from` links
        reach: dict[str, list[JobRecord]] = {j.id: [j] for j in root.jobs}
        origin: dict[str, str] = {j.id: j.id for j in root.jobs}
        for rung in chain.rungs[1:]:
            for j in rung.jobs:
                up = j.params.get(CONTINUE_KEY)
                if isinstance(up, str) and up in origin:
                    origin[j.id] = origin[up]
                    reach[origin[up]].append(j)
        promoted = [jobs for jobs in reach.values() if len(jobs) > 1]
        promoted.sort(key=lambda js: (-len(js), -(js[-1].metric(by) or float("-inf"))))
        header = ["configuration", *(f"{by} `{r.stage}`" for r in chain.rungs), "final test_accuracy"]
        rows = []
        for js in promoted:
            values = [_fmt(js[i].metric(by)) if i < len(js) else "-" for i in range(len(chain.rungs))]
            rows.append([_config(js[0], keys), *values, _fmt(js[-1].metric("test_accuracy"))])
        body.append("**Survivors per rung**\n\n" + md_table(header, rows, ["l", *"r" * (len(header) - 1)]))
        # compute
        spent = {r.stage: sum(j.duration_s or 0.0 for j in r.jobs) for r in chain.rungs}
        total = sum(spent.values())
        top = chain.rungs[-1].epochs
        lines = [f"- `{s}`: {_duration(t)} of job time" for s, t in spent.items()]
        if root.epochs and top:
            full = sum(j.duration_s or 0.0 for j in root.jobs) * top / root.epochs
            if full > 0:
                lines.append(
                    f"- halving in all: {_duration(total)}; the full grid ({len(root.jobs)} configurations x {top} "
                    f"epochs), estimated from `{root.stage}`'s job time per epoch: {_duration(full)}. "
                    f"Halving spent **{100 * total / full:.0f} %** of it."
                )
        body.append("**Compute**\n\n" + "\n".join(lines))
        figure = _curves(view, chain, reach, by, f"halving_{n}_curves.png")
        figures = []
        if figure:
            body.append(f"**Curves across rungs**\n\n![{by} per epoch across the rungs]({figure})")
            figures.append(figure)
        out.append(Section(title=f"Successive halving: `{root.stage}`", body="\n\n".join(body), figures=figures))
    return out


def _curves(view: SweepView, chain: Chain, reach: dict[str, list[JobRecord]], by: str, name: str) -> str | None:
    key = EPOCH_KEYS.get(by, by)
    lines = []
    for jobs in reach.values():
        last = jobs[-1]
        if last.status != "done" or "history.json" not in view.artifact_names(last.id):
            continue
        try:
            history = view.read_json(last.id, "history.json")
            epochs = [(float(e["epoch"]), float(e[key])) for e in history.get("epochs", []) if key in e]
        except Exception:  # a damaged history costs its curve, not the report
            continue
        if epochs:
            lines.append((len(jobs), epochs))
    if not lines:
        return None
    from sweeper.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = ["#bbbbbb", "#6baed6", "#fd8d3c", "#d62728", "#2ca02c"]
    labelled: set[int] = set()
    for depth, points in sorted(lines, key=lambda lp: lp[0]):
        xs, ys = zip(*points, strict=True)
        color = colors[min(depth - 1, len(colors) - 1)]
        style = {"marker": "o", "markersize": 3, "linewidth": 1.2 if depth > 1 else 0.6, "color": color}
        label = None if depth in labelled else f"stopped at {chain.rungs[depth - 1].stage}"
        labelled.add(depth)
        ax.plot(xs, ys, label=label, **style)
    for rung in chain.rungs:
        if rung.epochs:
            ax.axvline(rung.epochs, color="#888888", linestyle=":", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title("every configuration, up to the rung it reached")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(view.figure_path(name), dpi=110)
    plt.close(fig)
    return name
