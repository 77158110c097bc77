"""What a grader checks first in a finished assignment report, computed from the files handed in.

    python -m jobs.report.checks docs/assignment-report          # exit 1 and one line per failed check

The report directory must hold what `sweeper report --out DIR --mlflow-screenshot --pdf` and
`sweeper export --csv DIR/jobs.csv` write. Each check reads those files only (not the queue), so it
judges exactly what is committed:

    step3_starts_from_step2_best   the first prune job's input is the Step 2 run with the highest test accuracy
                                   (item 13: "the trained model which has the highest test accuracy in Step 2")
    no_cumulative_limit            no prune job ran with max_total_drop (the assignment has no such limit)
    stopped_by_the_rule            every layer stopped by the 1 % step rule, none by a cumulative or step limit
    pdf_with_figures               report.pdf is a PDF with images inside
    mlflow_screenshots             mlflow-*.png of the model grid, the training grid and a pruning stage
    noise_verdicts_tested          every "within / beyond noise" verdict on a gap names Welch's t and its degrees of freedom
    q12b_every_hyperparameter      12b speaks of every hyper-parameter the grids vary (jobs.csv's params)
    q12d_one_change_each           each of 12d's five cases changes one thing against its reference
    no_machine_paths               no absolute path of the machine in report.md, stages.md or jobs.csv
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The assignment grid's stage names (jobs/grids/assignment.yaml); another sweep passes its own.
STEP2 = ("model_search", "model_repeats", "train_search", "train_repeats")
GRIDS = ("model_search", "train_search")
MACHINE_PATH = re.compile(r"(?<![\w.)\]])/(?:tmp|home|usr|work|root|var|mnt|content|Users)/|[A-Za-z]:\\\\|sqlite:////")
VERDICT = re.compile(r"(beyond|within) noise")
# How the report names a param: its last dotted part, or these words.
WORDS = {
    "channels": ("channels", "filters"),
    "kernel": ("kernel", "filter size"),
    "dense": ("dense", "hidden"),
    "batch_size": ("batch",),
    "lr": ("learning rate", "lr"),
}
# What one change is in 12d: one setting, or the network's size (its layer widths and kernels together).
ONE_THING = [re.compile(r"^(conv\d\.(channels|kernel)|dense)$"), re.compile(r"^lr$"), re.compile(r"^momentum$"),
             re.compile(r"^batch_size$")]  # fmt: skip


@dataclass
class Check:
    name: str
    ok: bool
    why: str


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "jobs.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _section(md: str, heading: str) -> str:
    """The text under the first heading that starts with `heading`, up to the next heading as high or higher."""
    m = re.search(rf"^(#+) {re.escape(heading)}.*$", md, re.M)
    if m is None:
        return ""
    rest = md[m.end() :]
    end = re.search(rf"^#{{1,{len(m.group(1))}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def step3_start(rows: list[dict[str, str]], step2: tuple[str, ...]) -> Check:
    prunes = [r for r in rows if r["kind"] == "prune" and r["status"] == "done"]
    first = next((r for r in prunes if r.get("metrics.input_stage") in step2), None)
    runs = [(acc, r["id"]) for r in rows if r["stage"] in step2 and r["status"] == "done"
            if (acc := _number(r.get("metrics.test_accuracy"))) is not None]  # fmt: skip
    if first is None or not runs:
        return Check("step3_starts_from_step2_best", False, "no finished prune job starts from a Step 2 run")
    best_acc, best_id = max(runs)
    got = first.get("metrics.input_job", "")
    ok = (
        got == best_id
        or _number(next((r.get("metrics.test_accuracy") for r in rows if r["id"] == got), None)) == best_acc
    )
    return Check(
        "step3_starts_from_step2_best",
        ok,
        f"{first['stage']} starts from {got}; the most accurate of {len(runs)} Step 2 runs is {best_id} "
        f"({100 * best_acc:.2f} %)",
    )


def limits(rows: list[dict[str, str]]) -> list[Check]:
    prunes = [r for r in rows if r["kind"] == "prune"]
    capped = [r["stage"] for r in prunes if r.get("params.max_total_drop") not in (None, "")]
    reasons = {r["stage"]: r.get("metrics.stop_reason", "") for r in prunes if r["status"] == "done"}
    other = {s: why for s, why in reasons.items() if re.search(r"max_total_drop|max_steps|cumulative|step limit", why)}
    unruled = {s: why for s, why in reasons.items() if "max_step_drop" not in why}
    return [
        Check("no_cumulative_limit", bool(prunes) and not capped,
              f"max_total_drop set on {', '.join(capped)}" if capped else f"none of {len(prunes)} prune jobs"),
        Check("stopped_by_the_rule", bool(reasons) and not other and not unruled,
              "; ".join(f"{s}: {w}" for s, w in (other or unruled).items()) or f"{len(reasons)} layers by the 1 % rule"),
    ]  # fmt: skip


def pdf(out: Path) -> Check:
    path = out / "report.pdf"
    if not path.exists():
        return Check("pdf_with_figures", False, "no report.pdf (sweeper report --pdf)")
    data = path.read_bytes()
    images = len(re.findall(rb"/Subtype\s*/Image", data))
    ok = data.startswith(b"%PDF") and images > 0
    return Check("pdf_with_figures", ok, f"{len(data):,} bytes, {images} images")


def screenshots(out: Path, grids: tuple[str, ...]) -> Check:
    names = sorted(p.name for p in out.glob("mlflow*.png") if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n")
    missing = [g for g in grids if f"mlflow-{g}.png" not in names]
    if not any(n.startswith("mlflow-prune") for n in names):
        missing.append("a prune stage")
    return Check("mlflow_screenshots", len(names) >= 3 and not missing,
                 f"{len(names)} PNGs" + (f"; missing: {', '.join(missing)}" if missing else ""))  # fmt: skip


def noise_verdicts(md: str) -> Check:
    gaps = [line for line in md.splitlines() if VERDICT.search(line) and re.search(r"\d points", line)]
    bare = [line for line in gaps if "Welch's t" not in line or not re.search(r"degrees of freedom|normal curve", line)]
    return Check("noise_verdicts_tested", bool(gaps) and not bare,
                 f"{len(gaps)} verdicts on a gap" + (f"; without Welch and df: {bare[0][:120]}" if bare else ""))  # fmt: skip


def varying(rows: list[dict[str, str]], grids: tuple[str, ...]) -> list[str]:
    """The params that take more than one value within the grid stages' finished runs (seed aside; a run
    not yet started has no effective params, and its empty cells would count as values)."""
    runs = [r for r in rows if r["stage"] in grids and r["status"] == "done"]
    keys = [k for k in (runs[0] if runs else {}) if k.startswith("params.") and k != "params.seed"]
    return [k.removeprefix("params.") for k in keys if len({r[k] for r in runs}) > 1]


def q12b(md: str, rows: list[dict[str, str]], grids: tuple[str, ...]) -> Check:
    text = _section(md, "12b.").lower()
    keys = varying(rows, grids)
    missing = [k for k in keys if not any(w in text for w in WORDS.get(k.rsplit(".", 1)[-1], (k.rsplit(".", 1)[-1],)))]
    return Check("q12b_every_hyperparameter", bool(text) and bool(keys) and not missing,
                 f"missing: {', '.join(missing)}" if missing else f"all {len(keys)} that the grids vary")  # fmt: skip


def q12d(md: str) -> Check:
    cases = ["i.", "ii.", "iii.", "iv.", "v."]
    problems = []
    for case in cases:
        text = _section(md, case)
        changed = re.findall(r"Changed against its reference: (.*)\.", text)
        if not changed:
            problems.append(f"{case} has no matched reference")
            continue
        keys = re.findall(r"([\w.]+) [^,()]+ \(reference", changed[0])
        if not keys or not any(all(g.match(k) for k in keys) for g in ONE_THING):
            problems.append(f"{case} changes {', '.join(keys) or changed[0]}")
    return Check("q12d_one_change_each", not problems, "; ".join(problems) or "5 cases, one change each")


def machine_paths(out: Path) -> Check:
    found = []
    for name in ("report.md", "stages.md", "jobs.csv"):
        path = out / name
        if path.exists() and (m := MACHINE_PATH.search(path.read_text(encoding="utf-8"))):
            found.append(f"{name}: {m.group(0)}")
    return Check("no_machine_paths", not found, "; ".join(found) or "none")


def run_checks(out: Path, step2: tuple[str, ...] = STEP2, grids: tuple[str, ...] = GRIDS) -> list[Check]:
    rows = _rows(out)
    md = (out / "report.md").read_text(encoding="utf-8")
    checks: list[Callable[[], Check | list[Check]]] = [
        lambda: step3_start(rows, step2),
        lambda: limits(rows),
        lambda: pdf(out),
        lambda: screenshots(out, grids),
        lambda: noise_verdicts(md),
        lambda: q12b(md, rows, grids),
        lambda: q12d(md),
        lambda: machine_paths(out),
    ]
    found: list[Check] = []
    for check in checks:
        made = check()
        found += made if isinstance(made, list) else [made]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the report directory (report.md, report.pdf, jobs.csv, mlflow-*.png)")
    ap.add_argument("--step2", default=",".join(STEP2), help="the Step 2 stages, comma-separated")
    ap.add_argument("--grids", default=",".join(GRIDS), help="the grid stages that need an MLflow screenshot")
    args = ap.parse_args(argv)
    for name in ("report.md", "jobs.csv"):
        if not (args.out / name).exists():
            print(f"error: {args.out / name} not found: run `sweeper report --out {args.out}` and "
                  f"`sweeper export --csv {args.out}/jobs.csv` first", file=sys.stderr)  # fmt: skip
            return 2
    checks = run_checks(args.out, tuple(args.step2.split(",")), tuple(args.grids.split(",")))
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.why}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
