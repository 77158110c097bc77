"""The benchmark's selection rules and model listing, and the param checks enqueue makes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from jobs.kinds.benchmark import BenchmarkState, list_models, pareto_front, select
from jobs.kinds.params import PruneParams
from sweeper.errors import SpecError
from sweeper.grid.spec import parse_spec
from tests.conftest import cli_env


def rec(name: str, flops: int, acc: float) -> dict:
    return {"name": name, "flops": flops, "test_accuracy": acc}


def test_pareto_front_keeps_only_models_nothing_beats_on_both_flops_and_accuracy():
    records = [
        rec("big", 1000, 0.90),
        rec("mid", 500, 0.89),
        rec("worse_mid", 600, 0.88),  # more FLOPs and less accurate than mid
        rec("tiny", 100, 0.70),
        rec("tiny_twin", 100, 0.70),  # equal on both: neither dominates the other
        rec("same_flops_worse", 500, 0.85),
    ]
    assert pareto_front(records) == ["big", "mid", "tiny", "tiny_twin"]


def test_selection_is_the_fewest_flops_strictly_above_the_floor_ties_to_the_more_accurate():
    records = [rec("a", 900, 0.91), rec("b", 300, 0.87), rec("c", 400, 0.875), rec("d", 400, 0.88), rec("e", 50, 0.5)]
    assert select(records, 0.87)["name"] == "d", "0.87 is not above 0.87; c and d tie on FLOPs, d is more accurate"
    assert select(records, 0.95) is None
    assert select(records, 0.0)["name"] == "e"


def outcome(job: str, stage: str, files: dict[str, str], models: list | None = None) -> dict:
    metrics = {"models": models} if models is not None else {}
    return {
        "job": job,
        "stage": stage,
        "params": {},
        "metrics": metrics,
        "artifacts": {name: {"sha256": digest} for name, digest in files.items()},
    }


def test_models_of_chained_prune_jobs_are_listed_once_each_by_sha256():
    steps = lambda *names: [{"name": n, "step": int(n[5:-3])} for n in names]  # noqa: E731
    p1 = outcome(
        "j1", "prune_conv1", {"step-0.pt": "A", "step-1.pt": "B", "model.pt": "B"}, steps("step-0.pt", "step-1.pt")
    )
    # prune_conv2 starts from prune_conv1's result: its step-0 is the same file as prune_conv1's step-1
    p2 = outcome(
        "j2", "prune_conv2", {"step-0.pt": "B", "step-1.pt": "C", "model.pt": "B"}, steps("step-0.pt", "step-1.pt")
    )
    train = outcome("t1", "train_search", {"model.pt": "A"})  # already listed as prune_conv1/step-0
    other = outcome("t2", "baseline", {"model.pt": "D"})
    listed = list_models([p1, p2, train, other])
    assert [(m["name"], m["sha256"]) for m in listed] == [
        ("prune_conv1/step-0", "A"),
        ("prune_conv1/step-1", "B"),
        ("prune_conv2/step-1", "C"),
        ("baseline", "D"),
    ]


def test_two_jobs_of_one_stage_are_told_apart_by_job_id():
    listed = list_models([outcome("x1", "train", {"model.pt": "A"}), outcome("x2", "train", {"model.pt": "B"})])
    assert [m["name"] for m in listed] == ["train:x1", "train:x2"]


GRID = """
sweep: s
stages:
  train: {kind: train, params: {dataset: synthetic}}
  prune: {kind: prune, needs: [train], params: %s}
"""


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{model: {result_of: train}, layer: fc2}", "structured pruning needs layer: conv1, conv2 or fc1"),
        ("{model: {result_of: train}}", "structured pruning needs layer"),
        ("{model: {result_of: train}, method: magnitude, amounts: [0.5, 1.5]}", "between 0 and 1"),
        ("{model: {result_of: train}, layer: conv1, finetune_epoch: 2}", "did you mean 'finetune_epochs'"),
        ("{model: {result_of: train}, layer: conv1, max_step_drop: -0.1}", "max_step_drop"),
    ],
)
def test_bad_prune_params_are_refused_at_enqueue_with_the_reason(params, message):
    with pytest.raises(SpecError) as err:
        parse_spec(textwrap.dedent(GRID % params), "grid.yaml")
    text = str(err.value) + " " + (err.value.hint or "")
    assert message in text
    assert "prune" in text


def test_magnitude_pruning_needs_no_layer_and_then_prunes_every_layer():
    spec = parse_spec(textwrap.dedent(GRID % "{model: {result_of: train}, method: magnitude}"), "grid.yaml")
    params = {k: v for k, v in spec.jobs[-1].params.items() if k != "model"}
    assert PruneParams.model_validate(params).layer == "all"
    assert PruneParams.model_validate(params).amounts == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


NO_CUDA = "No CUDA runtime is found"


def stderr_of_import(module: str, cuda_home: str) -> str:
    """stderr of a fresh interpreter that imports `module` on a CPU-only view of this machine."""
    # a CUDA toolkit without a usable GPU is what makes torch warn (Colab's CPU runtime has one)
    env = cli_env(CUDA_HOME=cuda_home, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.skipif(not torch.version.cuda, reason="a CPU-only torch build never looks for CUDA_HOME")
def test_the_benchmark_job_imports_without_torchs_no_cuda_runtime_warning(tmp_path):
    # the control: torch itself still warns here, so the check below can fail
    assert NO_CUDA in stderr_of_import("torch.utils.benchmark", str(tmp_path))
    assert NO_CUDA not in stderr_of_import("jobs.kinds.benchmark", str(tmp_path))


@pytest.mark.parametrize("original", [None, {"name": "baseline", "test_accuracy": 0.9}])
def test_a_benchmark_checkpoint_keeps_its_keys_through_the_named_state(original):
    """The dict that the benchmark wrote before BenchmarkState ({version, records, timing[, original]})."""
    old = {"version": 1, "records": [{"name": "m", "sha256": "ab", "flops": 3}], "timing": {"summary": {"n": 1}}}
    if original is not None:
        old["original"] = original
    state = BenchmarkState.from_checkpoint(old)
    assert (state.records, state.timing, state.original) == (old["records"], old["timing"], original)
    assert state.to_checkpoint() == old
    assert BenchmarkState().to_checkpoint() == {"version": 1, "records": [], "timing": None}
