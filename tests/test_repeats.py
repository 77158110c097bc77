"""Repeat stages (the top configurations of a stage again with more seeds) and selection over seeds.

Queue-level tests run on a real SQLite file and a real PostgreSQL database; results are a fixed
function of each job's (value, seed), so every choice below is known in advance. The CLI tests
check errors and `enqueue --dry-run`; the last test runs tiny synthetic train jobs end to end.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from sweeper.grid import handoff
from sweeper.grid.spec import parse_spec
from sweeper.store.db import open_database
from sweeper.store.queue import Queue
from tests.conftest import REPO, run_cli, run_grid

GRID = """
sweep: rep
stages:
  search:
    kind: noop
    params: {checkpoint: false, seed: 0}
    grid: {value: [1, 2, 3, 4]}
  again:
    repeat: {stage: search, top: 2, by: score, mode: max, seeds: [1, 2]}
  pick:
    kind: tests.kinds:echo
    needs: [search, again]
    inherit: {from: [search, again], metric: score, mode: max, over_seeds: mean, min_seeds: 3, keys: [value]}
  model:
    kind: tests.kinds:echo
    needs: [search, again]
    params: {m: {best_of: [search, again], metric: score, mode: max, over_seeds: mean}}
  single:
    kind: tests.kinds:echo
    needs: [search, again]
    params: {m: {best_of: [search, again], metric: score, mode: max}}
"""
# score[value][seed]. By seed 0 alone the ranking is 4, 3, 2, 1: `again` repeats values 4 and 3.
# Value 4 has the best single run (0.90) but a mean of 0.8367; value 3's mean is 0.8833; value 2
# ran once, at 0.885: the best mean of all, unless a configuration needs 3 seeds (min_seeds).
SCORE = {
    1: {0: 0.50},
    2: {0: 0.885},
    3: {0: 0.89, 1: 0.88, 2: 0.88},
    4: {0: 0.90, 1: 0.80, 2: 0.81},
}


@pytest.fixture
def queue(db_url):
    db = open_database(db_url)
    q = Queue(db, retry_backoff_s=0.0)
    yield q
    db.dispose()


def jobs_of(queue: Queue) -> dict[str, list[dict]]:
    with queue.db.read() as conn:
        rows = conn.execute(
            sa.text(
                "select id, stage, label, status, params, resolved_params, provenance, error from jobs order by position"
            )
        ).mappings()
        out: dict[str, list[dict]] = {}
        for r in rows:
            row = {
                k: json.loads(v) if isinstance(v, str) and k in ("params", "resolved_params", "provenance") else v
                for k, v in r.items()
            }
            out.setdefault(r["stage"], []).append(row)
    return out


def run(queue: Queue, stage: str, score=lambda p: SCORE[p["value"]][p["seed"]], reverse: bool = False) -> list[str]:
    """Claim every pending job of `stage` and complete it with {score: ...}; optionally finish them last-first."""
    claimed = []
    while (job := queue.claim("w", 30, stages_filter=[stage])) is not None:
        claimed.append(job)
    for job in reversed(claimed) if reverse else claimed:
        queue.complete(job.lease, {"score": score(job.params)})
    return [j.id for j in claimed]


def test_repeat_expands_to_top_times_seeds_blocked_jobs_with_stable_ids(queue):
    spec = parse_spec(textwrap.dedent(GRID), "g.yaml")
    again = [j for j in spec.jobs if j.stage == "again"]
    assert [(j.params["rank_of"]["rank"], j.params["seed"]) for j in again] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert {j.kind for j in again} == {"noop"}  # the kind of the stage it repeats
    assert [j.label for j in again] == ["search#1 seed=1", "search#1 seed=2", "search#2 seed=1", "search#2 seed=2"]
    stage = next(s for s in spec.stages if s.name == "again")
    assert stage.needs == ("search",) and stage.repeat is not None and stage.repeat.seeds == (1, 2)

    first = queue.enqueue(spec)
    assert len(first.new) == len(spec.jobs)
    assert {j["status"] for j in jobs_of(queue)["again"]} == {"blocked"}
    # enqueueing the same file again (parsed afresh) adds nothing: the ids do not depend on results
    second = queue.enqueue(parse_spec(textwrap.dedent(GRID), "g.yaml"))
    assert second.new == [] and len(second.unchanged) == len(spec.jobs)
    assert [j.id for j in again] == [j["id"] for j in jobs_of(queue)["again"]]


def test_repeat_resolves_to_the_ranked_configurations_with_the_seed_overridden(queue):
    queue.enqueue(parse_spec(textwrap.dedent(GRID), "g.yaml"))
    ids = dict(zip([1, 2, 3, 4], run(queue, "search", reverse=True), strict=True))
    again = jobs_of(queue)["again"]
    assert {j["status"] for j in again} == {"pending"}
    # rank 1 is value 4 (0.90), rank 2 is value 3 (0.89): each source job's params, seed replaced
    expected = [(4, 1), (4, 2), (3, 1), (3, 2)]
    assert [(j["resolved_params"]["value"], j["resolved_params"]["seed"]) for j in again] == expected
    assert all(j["resolved_params"]["checkpoint"] is False and "rank_of" not in j["resolved_params"] for j in again)
    assert [j["provenance"]["rank_of"] for j in again] == [ids[4], ids[4], ids[3], ids[3]]
    # what a worker is handed is the resolved params: the noop kind runs them as they are
    job = queue.claim("w", 30, stages_filter=["again"])
    assert job.params == {"value": 4, "seed": 1, "checkpoint": False}


def test_selection_over_seeds_uses_the_mean_not_the_best_single_run(queue):
    queue.enqueue(parse_spec(textwrap.dedent(GRID), "g.yaml"))
    search = dict(zip([1, 2, 3, 4], run(queue, "search"), strict=True))
    run(queue, "again", reverse=True)
    stages = jobs_of(queue)

    # inherit with min_seeds 3: value 3 (mean 0.8833) beats value 4 (one run at 0.90, mean 0.8367)
    pick = stages["pick"][0]
    assert pick["status"] == "pending" and pick["resolved_params"]["value"] == 3

    # best_of over seeds without min_seeds: value 2 ran once, at 0.885, above every repeated mean
    model = stages["model"][0]["resolved_params"]["m"]
    assert model["job"] == search[2]
    assert model["over_seeds"]["n"] == 1 and model["over_seeds"]["mean"] == pytest.approx(0.885)

    # per job (the default): the single best run, value 4 seed 0
    assert stages["single"][0]["resolved_params"]["m"]["job"] == search[4]


def test_the_chosen_job_is_the_best_seed_of_the_best_configuration_and_reports_its_seeds(queue):
    grid = textwrap.dedent(GRID).replace("over_seeds: mean}}", "over_seeds: mean, min_seeds: 3}}")
    queue.enqueue(parse_spec(grid, "g.yaml"))
    search = dict(zip([1, 2, 3, 4], run(queue, "search"), strict=True))
    run(queue, "again")
    model = jobs_of(queue)["model"][0]["resolved_params"]["m"]
    assert model["job"] == search[3]  # value 3's seeds score 0.89, 0.88, 0.88: seed 0 is its best model
    summary = model["over_seeds"]
    assert summary["seeds"] == [0, 1, 2] and summary["n"] == 3 and summary["metric"] == "score"
    assert summary["mean"] == pytest.approx((0.89 + 0.88 + 0.88) / 3)
    assert summary["std"] == pytest.approx(0.005773502691896)


def test_ties_go_to_the_configuration_earlier_in_the_queue_whatever_order_jobs_finish_in(queue):
    flat = textwrap.dedent(GRID).replace("top: 2", "top: 1")
    queue.enqueue(parse_spec(flat, "g.yaml"))
    search = run(queue, "search", score=lambda p: 0.5, reverse=True)  # all equal, finished last-first
    assert [j["resolved_params"]["value"] for j in jobs_of(queue)["again"]] == [1, 1]
    run(queue, "again", score=lambda p: 0.5, reverse=True)
    stages = jobs_of(queue)
    assert stages["pick"][0]["resolved_params"]["value"] == 1
    assert stages["model"][0]["resolved_params"]["m"]["job"] == search[0]


def test_a_repeat_rank_that_does_not_exist_fails_its_job_with_the_reason(queue):
    queue.enqueue(parse_spec(textwrap.dedent(GRID), "g.yaml"))
    # only one search job reports the metric: rank 2 has nothing to repeat
    run(queue, "search", score=lambda p: 1.0 if p["value"] == 1 else None)
    again = jobs_of(queue)["again"]
    assert [j["status"] for j in again] == ["pending", "pending", "failed", "failed"]
    assert "stage 'search' has 1 configuration(s) that reported 'score'; there is no rank 2" in again[2]["error"]


def outcome(job: str, stage: str, params: dict, score: float | None, position: int) -> handoff.Outcome:
    return handoff.Outcome(job, stage, "done", params, {"score": score}, {}, position)


def test_a_seed_run_twice_in_two_stages_counts_once_and_missing_metrics_rank_last():
    # the same params and seed in two stages (a training-grid point equal to a model-grid point)
    outcomes = [
        outcome("a0", "model", {"x": 1, "seed": 0}, 10.0, 0),
        outcome("b0", "model", {"x": 2, "seed": 0}, 1.0, 1),
        outcome("a0-again", "train", {"x": 1, "seed": 0}, 10.0, 2),
        outcome("a1", "train", {"x": 1, "seed": 1}, 20.0, 3),
        outcome("b1", "train", {"x": 2, "seed": 1}, None, 4),  # never reached the target
    ]
    configs = handoff.ranked_configs(outcomes, ("model", "train"), "score", "min")
    assert [[m.job_id for m in c.members] for c in configs] == [["a0", "a1"], ["b0", "b1"]]
    assert configs[0].mean == 15.0  # b's mean (1.0) is lower, but one of its seeds never got there


def write(tmp: Path, text: str) -> Path:
    path = tmp / "g.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("repeat", "key", "message"),
    [
        ("{stage: serch, top: 2, by: score, seeds: [1]}", "repeat.stage", "repeat names unknown stage 'serch'"),
        ("{stage: search, top: 2, by: [score], seeds: [1]}", "repeat.by", "repeat 'by' must name a metric"),
        ("{stage: search, top: 2, by: 'test accuracy', seeds: [1]}", "repeat.by", "must name a metric of search"),
        ("{stage: search, top: 9, by: score, seeds: [1]}", "repeat.top", "stage 'search' has 4 job(s)"),
        ("{stage: search, top: 2, by: score, seeds: [0, 1]}", "repeat.seeds", "already seeds of stage 'search'"),
        ("{stage: search, top: 2, by: score, seeds: [1, 1]}", "repeat.seeds", "distinct non-negative integers"),
        ("{stage: search, top: 2, by: score, seeds: [1], seed: 3}", "seed", "unknown repeat key 'seed'"),
    ],
)
def test_a_bad_repeat_is_a_one_line_error_naming_the_stage_and_key(tmp_path, repeat, key, message):
    grid = GRID.replace("{stage: search, top: 2, by: score, mode: max, seeds: [1, 2]}", repeat)
    write(tmp_path, grid)
    db = tmp_path / "state" / "queue.db"
    proc = run_cli("enqueue", "g.yaml", "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "stage 'again'" in proc.stderr and f"key '{key}'" in proc.stderr and message in proc.stderr
    assert not db.exists()  # nothing written


def test_a_repeat_stage_takes_no_kind_or_grid_of_its_own(tmp_path):
    write(tmp_path, GRID.replace("  again:\n", "  again:\n    kind: noop\n"))
    proc = run_cli("enqueue", "g.yaml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "a repeat stage takes its kind and params from the stage it repeats; remove 'kind'" in proc.stderr


def test_dry_run_of_the_assignment_lists_the_repeat_stages_and_job_counts(tmp_path):
    proc = run_cli(
        "enqueue", str(REPO / "jobs/grids/assignment.yaml"), "--dry-run", "--db", f"sqlite:///{tmp_path / 'q.db'}"
    )
    assert proc.returncode == 0, proc.stderr
    counts = next(line for line in proc.stdout.splitlines() if line.startswith("new jobs by stage:"))
    for part in (
        "baseline 1",
        "baseline_10_epochs 1",
        "model_search 72",
        "model_repeats 10",
        "train_search 48",
        "train_repeats 10",
    ):
        assert part in counts, counts
    assert "model_search#5 seed=2" in proc.stdout and "train_search#1 seed=1" in proc.stdout

    spec = parse_spec((REPO / "jobs/grids/assignment.yaml").read_text(), "assignment.yaml")
    stages = {s.name: s for s in spec.stages}
    assert stages["train_search"].inherit.from_stages == ("model_search", "model_repeats")
    assert stages["train_search"].inherit.over_seeds == "mean" and stages["train_search"].inherit.min_seeds == 3
    (prune,) = [j for j in spec.jobs if j.stage == "prune_conv1"]
    assert prune.params["model"]["best_of"] == ["model_search", "model_repeats", "train_search", "train_repeats"]
    # item 13: "the trained model which has the highest test accuracy in Step 2", a single model,
    # not the best configuration's mean over seeds
    assert "over_seeds" not in prune.params["model"] and prune.params["model"]["metric"] == "test_accuracy"
    # items 14-16: the assignment's per-step rule on the raw drop, no cumulative limit, no step cap
    prunes = [j for j in spec.jobs if j.params.get("layer")]
    assert sorted(j.params["layer"] for j in prunes) == ["conv1", "conv2", "fc1"]
    for job in prunes:
        assert job.params.get("drop", "raw") == "raw", job.stage
        assert "max_total_drop" not in job.params and "max_steps" not in job.params, job.stage
    (baseline,) = [j for j in spec.jobs if j.stage == "baseline"]
    assert baseline.params["stop_at_target"] is True


E2E = """
sweep: seeds-e2e
defaults: {dataset: synthetic, train_subset: 1000, test_subset: 200, seed: 0, lr: 0.05, momentum: 0.9,
           batch_size: 32, max_epochs: 3, target_train_acc: 0.5, target_window: 640, stop_at_target: true,
           eval_train: false, conv1: {channels: 8, kernel: 3}, conv2: {channels: 8, kernel: 3}, dense: 32}
stages:
  model_search:
    kind: train
    grid: {conv1.channels: [6, 8, 10]}
  model_repeats:
    repeat: {stage: model_search, top: 2, by: test_accuracy, mode: max, seeds: [1, 2]}
  fastest:
    kind: train
    needs: [model_search, model_repeats]
    inherit: {from: [model_search, model_repeats], metric: images_to_target, mode: min, over_seeds: mean,
              min_seeds: 3, keys: [conv1]}
"""


def test_repeats_and_images_to_target_end_to_end_with_real_train_jobs(tmp_path):
    from jobs.kinds.train import images_seen

    db = run_grid(tmp_path, textwrap.dedent(E2E))
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.text("select * from jobs order by position")).mappings()]
    engine.dispose()
    for r in rows:
        for key in ("params", "resolved_params", "result"):
            r[key] = json.loads(r[key]) if isinstance(r[key], str) else r[key]
    assert {r["status"] for r in rows} == {"done"}, [(r["stage"], r["error"]) for r in rows]
    search = [r for r in rows if r["stage"] == "model_search"]
    for r in rows:
        res = r["result"]
        assert res["reached"], r
        # 32 batches an epoch, the last one of 8 images
        assert res["images_to_target"] == images_seen(res["target_step"], 32, 1000, 32)
    ranked = sorted(search, key=lambda r: (-r["result"]["test_accuracy"], r["position"]))[:2]
    repeats = [r for r in rows if r["stage"] == "model_repeats"]
    arch = lambda p: p["conv1"]["channels"]  # noqa: E731
    assert [(arch(r["resolved_params"]), r["resolved_params"]["seed"]) for r in repeats] == [
        (arch(ranked[0]["params"]), 1),
        (arch(ranked[0]["params"]), 2),
        (arch(ranked[1]["params"]), 1),
        (arch(ranked[1]["params"]), 2),
    ]

    def mean_images(source: dict) -> float:
        runs = [source] + [r for r in repeats if arch(r["resolved_params"]) == arch(source["params"])]
        return sum(r["result"]["images_to_target"] for r in runs) / 3

    winner = min(ranked, key=lambda r: (mean_images(r), r["position"]))
    (fastest,) = [r for r in rows if r["stage"] == "fastest"]
    assert arch(fastest["resolved_params"]) == arch(winner["params"])


def test_images_seen_counts_each_epochs_short_last_batch():
    from jobs.kinds.train import images_seen

    # 1000 images at batch 32: 31 full batches and one of 8
    assert images_seen(1, 32, 1000, 32) == 32
    assert images_seen(31, 32, 1000, 32) == 992
    assert images_seen(32, 32, 1000, 32) == 1000
    assert images_seen(33, 32, 1000, 32) == 1032
    assert images_seen(64, 32, 1000, 32) == 2000


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("over_seeds: mean, min_seeds: 3", "over_seeds: median", "inherit", "over_seeds must be 'mean' or 'none'"),
        ("over_seeds: mean, min_seeds: 3", "min_seeds: 3", "inherit", "min_seeds counts the seeds"),
        ("from: [search, again]", "from: [search, agian]", "inherit", "inherits from 'agian', which is not in 'needs'"),
        (
            "best_of: [search, again], metric: score, mode: max, over_seeds: mean}",
            "best_of: [search, again], metric: score, over_seeds: mean, min_seeds: 0}",
            "params",
            "min_seeds must be an integer from 1",
        ),
    ],
)
def test_bad_seed_options_are_spec_errors_naming_the_stage_and_key(old, new, key, message):
    from sweeper.errors import SpecError

    assert old in GRID
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(GRID.replace(old, new, 1)), "g.yaml")
    text = str(info.value)
    assert message in text and f"key '{key}'" in text, text
