"""`sweeper report`: a Markdown report (report.md plus PNGs) of a finished (or running) sweep.

The generic part works for any sweep. Per stage: the jobs sorted by a primary metric (default
test_accuracy, higher is better) and by a secondary one (default time_to_target_s, lower is
better), top-3 tables of each, a Pareto plot of the two, and one scatter plot per hyperparameter
that varies within the stage.

Workload-specific sections come from plug-ins: functions registered in the `sweeper.report`
entry-point group (or named as `module:function` with --plugin). A plug-in is called as

    def sections(view: SweepView) -> Iterable[Section | dict]

with a read-only view of the sweep (see results.SweepView: jobs, results, sha256-verified
artifacts, and `view.figure_path(name)` for the figures it draws). Each section it returns is
`{"title": str, "body": markdown, "figures": [file names it saved]}` (or a Section); the body
refers to figures by file name. Sections marked `lead` open the report (a plug-in whose sections
are the report a reader came for, such as the assignment's Steps); the stage-by-stage part then
goes to its own file, stages.md, linked from report.md's appendix. A plug-in that finds nothing to say returns no sections, or a
section whose body says what is missing. One that raises becomes a section naming the error:
the rest of the report is still written.
"""

from __future__ import annotations

import datetime as dt
import functools
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sweeper.errors import UsageError, error_summary
from sweeper.grid.ranking import Metric
from sweeper.store.readmodel import code_warning
from sweeper.store.results import JobRecord, Scalar, SweepView
from sweeper.store.statefiles import atomic_write
from sweeper.views.dashview import duration
from sweeper.views.halving import sections as halving_sections
from sweeper.views.markdown import Section, fmt, md_code, md_escape, md_table, md_text, slug
from sweeper.views.safe_text import visible

PLUGIN_GROUP = "sweeper.report"
TOP = 3


@dataclass
class ReportOptions:
    primary: Metric = field(default_factory=lambda: Metric("test_accuracy", "max"))
    secondary: Metric = field(default_factory=lambda: Metric("time_to_target_s", "min"))
    top: int = TOP
    plugins: list[str] | None = None  # None: every registered plug-in; [] none; names or module:function
    plots: bool = True


@dataclass
class ReportResult:
    path: Path
    figures: list[Path]
    sections: list[str]
    notes: list[str]  # what was left out and why
    appendix: Path | None = None  # stages.md, when a plug-in's lead sections open report.md


# ---------------------------------------------------------------------------------------------
# Per-stage analysis


def varying_params(records: list[JobRecord]) -> list[str]:
    """Flattened param keys whose value differs between the stage's jobs, in first-seen order."""
    values: dict[str, set[str]] = {}
    order: list[str] = []
    flats = [j.flat_recorded() for j in records]
    for flat in flats:
        for k in flat:
            if k not in values:
                values[k] = set()
                order.append(k)
    for flat in flats:
        for k in order:
            values[k].add(repr(flat.get(k)))
    return [k for k in order if len(values[k]) > 1]


def ranked(records: list[JobRecord], m: Metric) -> list[JobRecord]:
    """Jobs with the metric, best first (ties by queue order)."""
    have = [j for j in records if j.metric(m.name) is not None]
    return sorted(have, key=lambda j: (m.sort_key(j.metric(m.name) or 0.0), j.position))


def top_table(records: list[JobRecord], keys: list[str], metrics: list[Metric]) -> str:
    """The seed's top-3 layout: one column per job (#1 #2 #3), one row per param and metric."""
    header = ["", *(f"#{i}" for i in range(1, len(records) + 1))]
    flats = [j.flat_recorded() for j in records]
    rows = [[md_text(k), *(fmt(k, f.get(k)) for f in flats)] for k in keys]
    rows += [[md_text(m.name), *(fmt(m.name, j.metric(m.name)) for j in records)] for m in metrics]
    rows.append(["job", *(f"`{j.id}`" for j in records)])
    return md_table(header, rows, ["l"] + ["r"] * len(records))


def full_table(records: list[JobRecord], keys: list[str], metrics: list[Metric], missing: list[JobRecord]) -> str:
    header = ["#", *map(md_text, keys), *(md_text(m.name) for m in metrics), "job"]
    rows = []
    for i, j in enumerate(records, 1):
        flat = j.flat_recorded()
        rows.append([str(i), *(fmt(k, flat.get(k)) for k in keys), *(fmt(m.name, j.metric(m.name)) for m in metrics)])
        rows[-1].append(f"`{j.id}`")
    for j in missing:  # no value for the sort metric (target never reached): listed last
        flat = j.flat_recorded()
        rows.append(["-", *(fmt(k, flat.get(k)) for k in keys), *(fmt(m.name, j.metric(m.name)) for m in metrics)])
        rows[-1].append(f"`{j.id}`")
    return md_table(header, rows, ["r"] + ["l"] * len(keys) + ["r"] * len(metrics) + ["l"])


def details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def stage_sections(view: SweepView, stage: str, opts: ReportOptions, log: Callable[[str], None]) -> list[Section]:
    done = view.jobs(stage)
    info = view.stage(stage)
    kind = info.kind if info else "?"
    counts = info.counts if info else {}
    out: list[Section] = []
    total = sum(counts.values())
    intro = f"`{kind}` · {len(done)} of {total} job(s) done"
    failed = view.jobs(stage, status="failed")
    if failed:
        intro += f" · {len(failed)} failed"
    if info and info.description:
        intro = f"{md_text(info.description)}\n\n{intro}"
    if info and info.code_versions:
        intro += f"\n\n**Warning:** {md_text(code_warning(stage, info.code_versions))}."
    stale = [(j, why) for j in view.jobs(stage, status=None) if (why := view.stale().get(j.id))]
    if stale:
        rows = [[f"`{j.id}`", md_text(j.label or "-"), j.status, md_text(why)] for j, why in stale]
        intro += (
            f"\n\n**Stale:** {len(stale)} job(s) ran on a hand-off whose upstream stage changed since; their "
            "results below may not be what the stage would give now (`sweeper retry --stale` runs them again).\n\n"
            + md_table(["job", "params", "status", "why"], rows)
        )
    failures = ""
    if failed:
        rows = [[f"`{j.id}`", md_text(j.label or "-"), md_text(error_summary(j.error))] for j in failed]
        failures = "**Failed jobs**\n\n" + md_table(["job", "params", "error"], rows)
    if not done:
        body = intro + "\n\n_No job of this stage finished; nothing to show._"
        out.append(Section(title=f"Stage {md_code(stage)}", body=body + (f"\n\n{failures}" if failures else "")))
        return out

    metrics = [m for m in (opts.primary, opts.secondary) if any(j.metric(m.name) is not None for j in done)]
    keys = varying_params(done)
    parts = [intro]
    figures: list[str] = []

    if len(done) == 1:
        j = done[0]
        rows = [[md_text(k), fmt(k, v)] for k, v in j.flat_recorded().items()]
        rows += [[f"**{md_text(k)}**", fmt(k, v)] for k, v in _scalars(j.result).items()]
        parts.append(f"Job `{j.id}`:\n\n" + md_table(["", "value"], rows, ["l", "r"]))
    elif not metrics:
        names = sorted({k for j in done for k in _scalars(j.result) if j.metric(k) is not None})
        parts.append(
            f"_No job reports {opts.primary.name} or {opts.secondary.name}; "
            f"their metrics: {', '.join(map(md_text, names)) or 'none'} (choose with --metric / --second)._"
        )
        rows = [[f"`{j.id}`", md_text(j.label), *(fmt(n, j.metric(n)) for n in names[:6])] for j in done]
        parts.append(md_table(["job", "params", *map(md_text, names[:6])], rows))
    else:
        for m in metrics:
            order = ranked(done, m)
            missing = [j for j in done if j.metric(m.name) is None]
            top = order[: opts.top]
            parts.append(f"**Top {len(top)} by {m.name}** ({m.better} is better)\n\n" + top_table(top, keys, metrics))
            note = f" ({len(missing)} without a value listed last)" if missing else ""
            parts.append(
                details(f"All {len(done)} jobs sorted by {m.name}{note}", full_table(order, keys, metrics, missing))
            )
        if opts.plots and len(metrics) == 2:
            figures += _stage_plots(view, stage, done, keys, opts, log)
        elif opts.plots and keys:
            figures += _strip_plots(view, stage, done, keys, metrics[0], log)
    if figures:
        parts.append("\n\n".join(f"![{f}]({f})" for f in figures))
    if failures:
        parts.append(failures)
    out.append(Section(title=f"Stage {md_code(stage)}", body="\n\n".join(parts), figures=figures))
    return out


def _scalars(result: Mapping[str, Any]) -> dict[str, Scalar]:
    return {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _stage_plots(
    view: SweepView, stage: str, done: list[JobRecord], keys: list[str], opts: ReportOptions, log: Callable[[str], None]
) -> list[str]:
    from sweeper.plots import Point, pareto_plot, scatter_by

    x, y = opts.secondary, opts.primary  # the seed's plots: accuracy up, time along
    both = [j for j in done if j.metric(x.name) is not None and j.metric(y.name) is not None]
    if len(both) < 2:
        return []
    points = [Point(j.metric(x.name) or 0.0, j.metric(y.name) or 0.0, j.label) for j in both]
    names = []
    name = f"pareto_{slug(stage)}.png"
    log(f"drawing {name}")
    pareto_plot(view.figure_path(name), points, x, y, f"{stage}: {y.name} against {x.name} ({len(both)} jobs)")
    names.append(name)
    for key in keys:
        name = f"scatter_{slug(stage)}_{slug(key)}.png"
        log(f"drawing {name}")
        values = [j.flat_recorded().get(key) for j in both]
        scatter_by(view.figure_path(name), points, values, key, x, y, f"{stage}: by {key}")
        names.append(name)
    return names


def _strip_plots(
    view: SweepView, stage: str, done: list[JobRecord], keys: list[str], m: Metric, log: Callable[[str], None]
) -> list[str]:
    from sweeper.plots import strip_by

    have = [j for j in done if j.metric(m.name) is not None]
    names = []
    for key in keys:
        name = f"scatter_{slug(stage)}_{slug(key)}.png"
        log(f"drawing {name}")
        strip_by(
            view.figure_path(name),
            [j.flat_recorded().get(key) for j in have],
            [j.metric(m.name) or 0.0 for j in have],
            key,
            m,
            f"{stage}: {m.name} by {key}",
        )
        names.append(name)
    return names


def overview(view: SweepView) -> Section:
    rows = []
    for s in view.stages:
        recs = view.jobs(s.name, status=None)
        durs = [j.duration_s for j in recs if j.status == "done" and j.duration_s is not None]
        rows.append(
            [
                md_code(s.name),
                md_text(s.kind),
                ", ".join(map(md_text, s.needs)) or "-",
                str(sum(s.counts.values())),
                str(s.counts.get("done", 0)),
                str(s.counts.get("failed", 0)),
                duration(sum(durs) / len(durs)) if durs else "-",
                duration(sum(durs)) if durs else "-",
            ]
        )
    table = md_table(
        ["stage", "kind", "needs", "jobs", "done", "failed", "mean time/job", "total job time"],
        rows,
        ["l", "l", "l", "r", "r", "r", "r", "r"],
    )
    body = table
    warnings = [code_warning(s.name, s.code_versions) for s in view.stages if s.code_versions]
    if warnings:
        body += "\n\n" + "\n".join(f"- **Warning:** {w}." for w in warnings)
    if view.mlflow_screenshot:
        body += (
            f"\n\nThe sweep's runs in the MLflow UI (`mlflow server` on its tracking store):\n\n"
            f"![The MLflow runs table]({view.mlflow_screenshot})"
        )
    return Section(title="Overview", body=body, figures=[view.mlflow_screenshot] if view.mlflow_screenshot else [])


# ---------------------------------------------------------------------------------------------
# Plug-ins


@dataclass
class Plugin:
    name: str
    target: str
    load: Callable[[], Callable[[SweepView], Iterable[Any]]]


def registered_plugins() -> list[Plugin]:
    return [Plugin(ep.name, ep.value, ep.load) for ep in entry_points(group=PLUGIN_GROUP)]


def pick_plugins(names: list[str] | None) -> list[Plugin]:
    registered = registered_plugins()
    if names is None:
        return registered
    by_name = {p.name: p for p in registered}
    picked = []
    for name in names:
        if name in by_name:
            picked.append(by_name[name])
        elif ":" in name:
            from sweeper.grid.registry import load_target

            picked.append(Plugin(name, name, functools.partial(load_target, name)))
        else:
            raise UsageError(
                f"no report plug-in named '{name}'",
                hint=f"registered: {', '.join(by_name) or 'none'}; or give module:function",
            )
    return picked


def run_plugin(plugin: Plugin, view: SweepView, log: Callable[[str], None]) -> list[Section]:
    log(f"plug-in {plugin.name} ({plugin.target})")
    try:
        fn = plugin.load()
        produced = list(fn(view) or [])
        sections = []
        for item in produced:
            sections.append(item if isinstance(item, Section) else Section.model_validate(_as_dict(item)))
        for s in sections:
            for f in s.figures:
                if not view.figure_path(f).is_file():
                    raise ValueError(f"section '{s.title}' lists figure {f!r}, which it did not save")
        return sections
    except Exception as exc:  # a plug-in's bug must not cost the rest of the report
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        log(f"plug-in {plugin.name} failed: {type(exc).__name__}: {exc}")
        return [
            Section(
                title=f"Plug-in `{plugin.name}` failed",
                body=f"`{type(exc).__name__}: {md_escape(str(exc).splitlines()[0] if str(exc) else '')}`{at}\n\n"
                "_Its sections are missing from this report; the rest is complete._",
            )
        ]


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    return {k: getattr(item, k) for k in ("title", "body", "figures", "level") if hasattr(item, k)}


# ---------------------------------------------------------------------------------------------
# The whole report


APPENDIX_FILE = "stages.md"


def _render(parts: list[Section]) -> list[str]:
    return [line for part in parts for line in (f"{'#' * max(2, part.level)} {part.title}", "", part.body.strip(), "")]


def _write_markdown(path: Path, lines: list[str]) -> None:
    # The last line of defence for what plug-ins wrote: no control character reaches the file raw.
    atomic_write(path, visible("\n".join(lines).rstrip() + "\n", lines=True).encode("utf-8"))


def source_name(url: str) -> str:
    """The queue a report was made from, without the machine path: a report is meant to be shared."""
    if url.startswith("sqlite:"):
        return f"`{Path(url.split(':///', 1)[-1]).name}` (SQLite)"
    return f"database `{url.rsplit('/', 1)[-1]}` ({url.split(':', 1)[0]})"


def write_report(
    view: SweepView, out_dir: Path, opts: ReportOptions | None = None, log: Callable[[str], None] | None = None
) -> ReportResult:
    opts = opts or ReportOptions()
    log = log or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    view.out_dir = out_dir

    first = overview(view)
    rungs = halving_sections(view)  # a sweep of promote stages: its rungs, right after the overview
    per_stage: list[Section] = []
    for s in view.stages:
        log(f"stage {s.name}")
        per_stage += stage_sections(view, s.name, opts, log)
    sections = [first, *rungs, *per_stage]
    plugin_sections: list[Section] = []
    for plugin in pick_plugins(opts.plugins):
        plugin_sections += run_plugin(plugin, view, log)

    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"# Sweep {md_code(view.sweep)}", ""]
    if view.description:
        lines += [md_text(view.description), ""]
    lines += [
        f"_Generated by `sweeper report` on {now} from {source_name(view.db.display_url)}. Metrics: "
        f"{opts.primary.name} ({opts.primary.better} is better), "
        f"{opts.secondary.name} ({opts.secondary.better} is better)._",
        "",
    ]
    leading = [s for s in plugin_sections if s.lead]
    trailing = [s for s in plugin_sections if not s.lead]
    path = out_dir / "report.md"
    appendix = out_dir / APPENDIX_FILE
    if leading:
        # A plug-in's sections are the report a reader came for; the stage-by-stage tables (every run,
        # every metric) go to their own file, linked, so the graded document stays readable.
        lines += _render([*leading, *rungs])  # what halving decided is an answer, not appendix detail
        lines += [
            "## Appendix: every stage in detail",
            "",
            f"Every stage's runs, tables and figures, stage by stage: [{APPENDIX_FILE}]({APPENDIX_FILE}), "
            "beside this file.",
            "",
        ]
        lines += _render(trailing)
        head = [
            f"# Sweep {md_code(view.sweep)}: every stage in detail",
            "",
            "The appendix of [report.md](report.md).",
            "",
        ]
        _write_markdown(appendix, head + _render([first, *per_stage]))
    else:
        lines += _render([*sections, *trailing])
        appendix.unlink(missing_ok=True)  # left by an earlier report of this sweep with a plug-in
    _write_markdown(path, lines)
    figures = [out_dir / f for s in [*sections, *plugin_sections] for f in s.figures]
    notes = [s.title for s in plugin_sections if s.title.startswith("Plug-in")]
    if view.stale():
        notes.append(f"{len(view.stale())} stale job(s): their upstream stage changed since they ran")
    titles = [s.title for s in [*sections, *plugin_sections]]
    return ReportResult(path, figures, titles, notes, appendix if leading else None)
