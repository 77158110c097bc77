"""Promote stages and the `halving:` shorthand in grid files: expansion, and what `enqueue` refuses.

Every refusal names the file, the stage and the key (exit 2 from the CLI, no traceback); the
expanded rungs show in `enqueue --dry-run` like any stage.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.errors import SpecError
from sweeper.grid import handoff
from sweeper.grid.spec import parse_spec

from .conftest import run_cli

NINE = """\
sweep: h9
defaults: {dataset: synthetic, train_subset: 512}
stages:
  rung0:
    kind: train
    params: {max_epochs: 1, val_subset: 256}
    grid: {lr: [0.003, 0.01, 0.03], momentum: [0.0, 0.5, 0.9]}
  rung1:
    promote: {stage: rung0, top: 3, by: val_accuracy, mode: max, max_epochs: 3}
  rung2:
    promote: {stage: rung1, top: 1, by: val_accuracy, mode: max, max_epochs: 6}
"""


def test_promote_stages_expand_to_ranked_jobs_that_continue_their_upstream() -> None:
    spec = parse_spec(NINE, "h9.yaml")
    counts = {s.name: sum(j.stage == s.name for j in spec.jobs) for s in spec.stages}
    assert counts == {"rung0": 9, "rung1": 3, "rung2": 1}
    rung1 = [j for j in spec.jobs if j.stage == "rung1"]
    assert [j.params for j in rung1] == [
        {
            "rank_of": {
                "stage": "rung0",
                "by": "val_accuracy",
                "mode": "max",
                "rank": rank,
                "over_seeds": "none",
                "continue": True,
            },
            "max_epochs": 3,
        }
        for rank in (1, 2, 3)
    ]
    stages = {s.name: s for s in spec.stages}
    assert stages["rung1"].kind == "train" and stages["rung1"].needs == ("rung0",)
    assert stages["rung2"].needs == ("rung1",)
    assert stages["rung2"].promote is not None and stages["rung2"].promote.max_epochs == 6
    # The stage config survives the database round trip that settle and status read it through.
    again = type(stages["rung1"]).from_json("rung1", stages["rung1"].to_json())
    assert again == stages["rung1"]


def test_a_resolved_promote_job_takes_the_ranked_params_and_names_the_job_it_continues() -> None:
    spec = parse_spec(NINE, "h9.yaml")
    rung0 = [j for j in spec.jobs if j.stage == "rung0"]
    scores = [0.5, 0.7, 0.7, 0.2, 0.9, 0.1, 0.3, 0.4, 0.6]  # ranks: #5, then #2 and #3 tied (queue order)
    outcomes = [
        handoff.Outcome(j.id, "rung0", "done", j.params, {"val_accuracy": v}, {}, i)
        for i, (j, v) in enumerate(zip(rung0, scores, strict=True))
    ]
    promoted = [j for j in spec.jobs if j.stage == "rung1"]
    resolved = [handoff.resolve_params(j.params, None, outcomes)[0] for j in promoted]
    assert [r["continue_from"] for r in resolved] == [rung0[4].id, rung0[1].id, rung0[2].id]
    assert all(r["max_epochs"] == 3 and r["val_subset"] == 256 for r in resolved)
    assert resolved[0]["lr"] == rung0[4].params["lr"] and resolved[0]["momentum"] == rung0[4].params["momentum"]


def test_the_halving_shorthand_writes_the_same_rungs() -> None:
    text = textwrap.dedent("""\
        sweep: h72
        defaults: {dataset: synthetic}
        stages:
          search:
            kind: train
            params: {val_subset: 500}
            grid: {conv1.channels: [8, 16, 32], conv2.channels: [8, 16, 32], dense: [64, 100], lr: [0.01, 0.001], batch_size: [32, 64]}
            halving: {by: val_accuracy, mode: max, eta: 3, epochs: [1, 3, 9]}
        """)
    spec = parse_spec(text, "h72.yaml")
    counts = {s.name: sum(j.stage == s.name for j in spec.jobs) for s in spec.stages}
    assert counts == {"search": 72, "search_rung1": 24, "search_rung2": 8}
    assert {j.params["max_epochs"] for j in spec.jobs if j.stage == "search"} == {1}
    stages = {s.name: s for s in spec.stages}
    assert stages["search_rung2"].promote is not None
    assert stages["search_rung2"].promote.to_json() == {
        "stage": "search_rung1",
        "by": "val_accuracy",
        "mode": "max",
        "max_epochs": 9,
        "eta": 3,
        "over_seeds": "none",
    }


def _bad(edit: tuple[str, str], *needles: str) -> None:
    text = NINE.replace(*edit)
    assert text != NINE, edit
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "h9.yaml")
    message = f"{caught.value.message} (hint: {caught.value.hint})"
    assert "h9.yaml:" in message and "stage 'rung" in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    "edit, needles",
    [
        (("{stage: rung0, top: 3", "{stage: rungO, top: 3"), ("key 'promote.stage'", "unknown stage 'rungO'", "rung0")),
        (("top: 3, by: val_accuracy", "top: 3, by: val_acc"), ("key 'promote.by'", "does not report", "val_acc")),
        (("top: 3,", "top: 10,"), ("key 'promote.top'", "'top' is 10", "9 job(s)")),
        (
            ("max_epochs: 3}", "max_epochs: 1}"),
            (
                "key 'promote.max_epochs'",
                "not above the 1 epochs",
            ),
        ),
        (("max_epochs: 6}", "max_epochs: 3}"), ("stage 'rung2'", "not above the 3 epochs")),
        (("val_subset: 256", "test_subset: 256"), ("key 'promote.by'", "sets no val_subset")),
        (("mode: max, max_epochs: 3", "mode: most, max_epochs: 3"), ("key 'promote.mode'",)),
        (("top: 3, by", "eta: 1, by"), ("key 'promote.eta'",)),
    ],
)
def test_enqueue_refuses_a_bad_promote_naming_file_stage_and_key(edit, needles) -> None:
    _bad(edit, *needles)


def test_the_cli_exits_2_on_a_bad_promote_and_dry_run_shows_the_rungs(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(NINE)
    bad.write_text(NINE.replace("top: 3,", "top: 10,"))
    proc = run_cli("enqueue", str(bad), "--dry-run", "--state", str(tmp_path / "state"))
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert "bad.yaml:" in text and "stage 'rung1'" in text and "key 'promote.top'" in text, text
    result = CliRunner().invoke(app, ["enqueue", str(good), "--dry-run", "--state", str(tmp_path / "state")])
    assert result.exit_code == 0, result.output
    assert "rung0 9, rung1 3, rung2 1" in result.output
    assert "rung0#1 -> 3 epochs" in result.output and "rung1#1 -> 6 epochs" in result.output


def test_over_seeds_mean_promotes_configurations_by_their_mean_and_continues_the_earliest_seed() -> None:
    text = NINE.replace(
        "grid: {lr: [0.003, 0.01, 0.03], momentum: [0.0, 0.5, 0.9]}", "grid: {lr: [1, 2, 3], seed: [0, 1]}"
    )
    text = text.replace(
        "top: 3, by: val_accuracy, mode: max,", "top: 2, by: val_accuracy, mode: max, over_seeds: mean,"
    )
    spec = parse_spec(text, "h.yaml")
    rung0 = [j for j in spec.jobs if j.stage == "rung0"]
    # lr 1: 0.9 and 0.1 (mean 0.5, the best single run); lr 2: 0.6, 0.6; lr 3: 0.7, 0.5 (mean 0.6, tied with lr 2)
    score = {(1, 0): 0.9, (1, 1): 0.1, (2, 0): 0.6, (2, 1): 0.6, (3, 0): 0.7, (3, 1): 0.5}
    outcomes = [
        handoff.Outcome(
            j.id, "rung0", "done", j.params, {"val_accuracy": score[(j.params["lr"], j.params["seed"])]}, {}, i
        )
        for i, j in enumerate(rung0)
    ]
    resolved = [handoff.resolve_params(j.params, None, outcomes)[0] for j in spec.jobs if j.stage == "rung1"]
    first_seed = {j.params["lr"]: j.id for j in reversed(rung0)}  # the earliest job of each lr
    assert [(r["lr"], r["seed"], r["continue_from"]) for r in resolved] == [
        (2, 0, first_seed[2]),
        (3, 0, first_seed[3]),
    ]
