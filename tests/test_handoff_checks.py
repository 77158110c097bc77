"""Hand-offs are checked at enqueue against what the upstream kinds declare: a metric typo or an
inherited key that is not a param stops `enqueue` (exit 2, "did you mean", nothing written)
instead of failing the dependent jobs hours later, when the upstream stage has finished."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.kinds.benchmark_result import BenchmarkResult
from jobs.kinds.params import BenchmarkParams, NoopParams, PruneParams, TrainParams
from sweeper.cli import app
from sweeper.errors import SpecError, SweeperError
from sweeper.grid.spec import parse_spec

HEAD = """\
sweep: s
defaults: {dataset: synthetic}
stages:
  model_search: {kind: train, grid: {lr: [0.1, 0.01]}}
"""


def spec(stages: str):
    return parse_spec(HEAD + textwrap.indent(textwrap.dedent(stages), "  "), "grid.yaml")


@pytest.mark.parametrize(
    ("stage", "key", "message", "hint"),
    [
        (
            "prune: {kind: prune, needs: [model_search], params: {model: {best_of: model_search, metric: test_acc}, layer: conv1}}",
            "model",
            "best_of ranks by metric 'test_acc', which stage 'model_search' (kind train) does not report",
            "did you mean 'test_accuracy'?",
        ),
        (
            "prune: {kind: prune, needs: [model_search], params: {model: {result_of: model_search, metric: tst_loss, mode: min}, layer: conv1}}",
            "model",
            "result_of ranks by metric 'tst_loss'",
            "did you mean 'test_loss'?",
        ),
        (
            "tune: {kind: train, needs: [model_search], inherit: {from: model_search, metric: images_to_targt, keys: [conv2]}}",
            "inherit.metric",
            "inherit ranks by metric 'images_to_targt'",
            "did you mean 'images_to_target'?",
        ),
        (
            "tune: {kind: train, needs: [model_search], inherit: {from: model_search, metric: test_accuracy, keys: [convv2]}}",
            "inherit.keys",
            "inherit key 'convv2' is not a param of stage 'model_search' (kind train)",
            "did you mean 'conv2'?",
        ),
        (
            "again: {repeat: {stage: model_search, top: 1, by: test_accurcy, seeds: [5]}}",
            "repeat.by",
            "repeat ranks by metric 'test_accurcy'",
            "did you mean 'test_accuracy'?",
        ),
        (
            # the key exists upstream, but the dependent kind does not take it
            "pr: {kind: prune, needs: [model_search], inherit: {from: model_search, metric: test_accuracy, keys: [dense]},"
            " params: {model: {result_of: model_search, metric: test_accuracy}, layer: conv1}}",
            "inherit.keys",
            "inherit key 'dense' is not a param of kind 'prune'",
            "params it takes:",
        ),
    ],
    ids=["best_of-metric", "result_of-metric", "inherit-metric", "inherit-key", "repeat-by", "inherit-key-downstream"],
)
def test_a_hand_off_typo_is_a_spec_error_naming_stage_key_and_the_likely_name(stage, key, message, hint):
    with pytest.raises(SpecError) as caught:
        spec(stage)
    err = caught.value
    assert message in err.message and err.key == key and err.hint is not None and hint in err.hint, (err, err.hint)
    assert err.line is not None  # the error points into the file


def test_hand_offs_that_name_what_upstream_declares_enqueue():
    s = spec(
        """
        again: {repeat: {stage: model_search, top: 1, by: test_accuracy, seeds: [5]}}
        tune:
          kind: train
          needs: [model_search, again]
          inherit: {from: [model_search, again], metric: images_to_target, mode: min, keys: [conv1, conv2, dense]}
        prune: {kind: prune, needs: [tune], params: {model: {best_of: tune, metric: test_accuracy}, layer: conv1}}
        prune2: {kind: prune, needs: [prune], params: {model: {result_of: prune}, layer: conv2}}
        bench: {kind: benchmark, needs: [prune, prune2], params: {models: {all_of: [prune, prune2], metric: whatever}}}
        pick: {kind: train, needs: [prune2], params: {lr: {best_of: prune2, metric: flops, mode: min}}}
        """
    )
    assert len(s.jobs) == 2 + 1 + 1 + 1 + 1 + 1 + 1


def test_a_metric_reported_by_one_of_several_upstream_stages_is_enough():
    # resolution ranks the jobs that report the metric; over train and prune stages, flops comes from prune
    spec(
        """
        prune: {kind: prune, needs: [model_search], params: {model: {result_of: model_search, metric: test_accuracy}, layer: conv1}}
        pick: {kind: noop, needs: [model_search, prune], params: {upstream: {best_of: [model_search, prune], metric: flops}}}
        """
    )
    with pytest.raises(SpecError, match=r"stages 'model_search', 'prune' \(kind prune, train\) do not report"):
        spec(
            """
            prune: {kind: prune, needs: [model_search], params: {model: {result_of: model_search, metric: test_accuracy}, layer: conv1}}
            pick: {kind: noop, needs: [model_search, prune], params: {upstream: {best_of: [model_search, prune], metric: flop}}}
            """
        )


def test_a_kind_that_declares_no_metrics_is_checked_when_the_hand_off_resolves():
    assert NoopParams.metrics is None
    s = parse_spec(
        "sweep: s\nstages:\n  a: {kind: noop}\n"
        "  b: {kind: noop, needs: [a], params: {upstream: {best_of: a, metric: anything_at_all}}}\n"
        "  c: {kind: tests.kinds:echo, needs: [a], inherit: {from: a, metric: x, keys: [value]}}\n"
        # a kind without a param model takes any key: only its results can tell
        "  d: {kind: tests.kinds:echo, needs: [c], inherit: {from: c, metric: x, keys: [nothing_like_a_param]}}\n",
        "grid.yaml",
    )
    assert [j.stage for j in s.jobs] == ["a", "b", "c", "d"]
    # the inherited keys of a kind with a param model are checked even when it declares no metrics
    with pytest.raises(SpecError, match="inherit key 'valeu' is not a param of stage 'a' \\(kind noop\\)"):
        parse_spec(
            "sweep: s\nstages:\n  a: {kind: noop}\n"
            "  c: {kind: tests.kinds:echo, needs: [a], inherit: {from: a, metric: x, keys: [valeu]}}\n",
            "grid.yaml",
        )


def test_enqueue_of_a_hand_off_typo_is_exit_2_and_writes_nothing(tmp_path: Path):
    grid, state = tmp_path / "grid.yaml", tmp_path / "state"
    grid.write_text(HEAD)
    runner = CliRunner()
    assert runner.invoke(app, ["enqueue", str(grid), "--state", str(state)]).exit_code == 0
    before = (state / "queue.db").read_bytes()
    grid.write_text(
        HEAD + "  tune: {kind: train, needs: [model_search], inherit: {from: model_search, metric: test_accuracy, "
        "keys: [convv2]}}\n"
    )
    result = runner.invoke(app, ["enqueue", str(grid), "--state", str(state)])
    assert isinstance(result.exception, SweeperError) and result.exception.exit_code == 2, result.output
    assert "did you mean 'conv2'?" in (result.exception.hint or "")
    assert (state / "queue.db").read_bytes() == before


@pytest.mark.parametrize("model", [TrainParams, PruneParams, BenchmarkParams], ids=lambda m: m.__name__)
def test_declared_metrics_are_not_params(model):
    # `metrics` is a class attribute, not a param a grid could set
    assert model.metrics and "metrics" not in model.model_fields


def test_the_benchmark_declares_the_numbers_at_the_top_of_its_result():
    numbers = {
        name
        for name, field in BenchmarkResult.model_fields.items()
        if field.annotation in (int, float, int | None, float | None)  # not bool: hand-offs do not rank by it
    }
    assert BenchmarkParams.metrics == numbers


def test_a_worker_that_leaves_failed_jobs_says_how_many_and_how_to_see_them(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("sweep: w\nstages:\n  a: {kind: noop, max_failures: 1, grid: {fail: [true, false]}}\n")
    args = ["work", str(grid), "--state", str(tmp_path / "state"), "--workers", "1", "--no-tracking"]
    result = CliRunner().invoke(app, [*args, "--retry-backoff", "0"])
    assert result.exit_code == 0, result.output
    failed = parse_spec(grid.read_text(), "g").jobs[0].id  # fail: true
    last = " ".join(result.output.strip().splitlines()[-1].split())
    assert "no runnable job left (queue is empty)" in last, result.output
    assert f"1 job(s) failed: `sweeper status` lists them, `sweeper show {failed}` says why" in last, result.output
