"""Hand-offs resolved from upstream outcomes (sweeper/grid/handoff.py): pure, no database.

Every expected job below is worked out by hand from the outcomes in the test, not by the code
under test; positions are queue order, so ties must go to the lower position.
"""

from __future__ import annotations

from typing import Any

import pytest

from sweeper.grid import handoff
from sweeper.grid.handoff import HandOffError, Inherit, Outcome, RankOf, Ref


def job(
    job_id: str, position: int, stage: str = "a", status: str = "done", seed: int | None = None, **result: Any
) -> Outcome:
    params: dict[str, Any] = {"lr": result.pop("lr", 0.1), "conv1": {"channels": result.pop("channels", 8)}}
    if seed is not None:
        params["seed"] = seed
    return Outcome(job_id, stage, status, params, result or None, {"model": {"sha256": job_id}}, position)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, "best_of", [1, 2], None, {"lr": 0.1}, {"metric": "m"}])
def test_a_plain_value_is_not_a_reference(value: Any) -> None:
    assert handoff.parse_ref(value) is None


def test_best_of_parses_its_stages_metric_mode_and_seed_options() -> None:
    ref = handoff.parse_ref({"best_of": ["a", "b"], "metric": "t", "mode": "min", "over_seeds": "mean", "min_seeds": 3})
    assert ref == Ref("best_of", ("a", "b"), "t", "min", "mean", 3)


def test_result_of_and_all_of_default_to_max_and_no_seed_ranking() -> None:
    assert handoff.parse_ref({"result_of": "p"}) == Ref("result_of", ("p",), None, "max", "none", 1)
    assert handoff.parse_ref({"all_of": ["p", "q"]}) == Ref("all_of", ("p", "q"), None, "max", "none", 1)


@pytest.mark.parametrize(
    "value, needle",
    [
        ({"best_of": "a", "result_of": "b", "metric": "m"}, "not best_of and result_of"),
        ({"best_of": "a"}, "best_of needs a metric"),
        ({"best_of": "a", "metric": "m", "mode": "up"}, "mode must be 'max' or 'min'"),
        ({"result_of": ["a", "b"]}, "names exactly one stage"),
        ({"result_of": ""}, "must name a stage"),
        ({"all_of": []}, "must name a stage"),
        ({"result_of": "a", "over_seeds": "mean"}, "unexpected key(s) ['over_seeds']"),
        ({"best_of": "a", "metric": "m", "over_seeds": "median"}, "over_seeds must be 'mean' or 'none'"),
        ({"best_of": "a", "metric": "m", "over_seeds": "mean", "min_seeds": 0}, "min_seeds must be an integer"),
        ({"best_of": "a", "metric": "m", "over_seeds": "mean", "min_seeds": True}, "min_seeds must be an integer"),
        ({"best_of": "a", "metric": "m", "min_seeds": 2}, "it needs over_seeds: mean"),
    ],
)
def test_a_malformed_reference_says_what_is_wrong(value: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as caught:
        handoff.parse_ref(value)
    assert needle in str(caught.value)


def test_find_refs_walks_nested_params_and_names_dotted_paths() -> None:
    params = {"lr": 0.1, "model": {"result_of": "p"}, "deep": {"x": {"all_of": ["q"]}, "y": 2}}
    assert sorted(path for path, _ in handoff.find_refs(params)) == ["deep.x", "model"]


def test_inherit_accepts_best_as_a_synonym_of_metric_and_a_list_of_stages() -> None:
    inherit = handoff.parse_inherit({"from": ["a", "b"], "best": "t", "mode": "min", "keys": ["lr"]})
    assert inherit == Inherit(("a", "b"), ("lr",), "t", "min")
    assert inherit.from_stage == "a, b"
    assert inherit.to_json() == {"from": ["a", "b"], "keys": ["lr"], "metric": "t", "mode": "min"}


def test_inherit_to_json_keeps_seed_options_only_when_they_rank_over_seeds() -> None:
    plain = handoff.parse_inherit({"from": "a", "metric": "t", "keys": ["lr"]})
    assert plain.to_json() == {"from": "a", "keys": ["lr"], "metric": "t", "mode": "max"}
    seeded = handoff.parse_inherit({"from": "a", "metric": "t", "keys": ["lr"], "over_seeds": "mean", "min_seeds": 2})
    assert seeded.to_json()["over_seeds"] == "mean" and seeded.to_json()["min_seeds"] == 2


@pytest.mark.parametrize(
    "value, needle",
    [
        ("a", "inherit takes a mapping"),
        ({"from": "a", "metric": "t", "keys": ["lr"], "colour": 1}, "unexpected key(s) ['colour']"),
        ({"metric": "t", "keys": ["lr"]}, "inherit needs 'from: STAGE'"),
        ({"from": "a", "keys": ["lr"]}, "inherit needs 'metric: NAME'"),
        ({"from": "a", "metric": "t", "keys": []}, "a non-empty list of param names"),
        ({"from": "a", "metric": "t", "keys": "lr"}, "a non-empty list of param names"),
        ({"from": [], "metric": "t", "keys": ["lr"]}, "must name a stage or a list of stages"),
        ({"from": "a", "metric": "t", "keys": ["lr"], "mode": "best"}, "mode must be 'max' or 'min'"),
    ],
)
def test_a_malformed_inherit_says_what_is_wrong(value: Any, needle: str) -> None:
    with pytest.raises(ValueError) as caught:
        handoff.parse_inherit(value)
    assert needle in str(caught.value)


def test_rank_of_is_read_from_a_repeat_jobs_params_and_nothing_else() -> None:
    assert handoff.parse_rank_of({"rank_of": {"stage": "a", "by": "t", "rank": 2}, "seed": 1}) == RankOf(
        "a", "t", "max", 2
    )
    assert handoff.parse_rank_of({"rank_of": {"stage": "a", "by": "t"}}) is None  # no rank
    assert handoff.parse_rank_of({"rank_of": {"stage": "a", "by": "t", "rank": "two"}}) is None
    assert handoff.parse_rank_of({"seed": 1}) is None


# --- choosing one job -------------------------------------------------------------------------


def test_best_picks_the_highest_metric_for_max_and_the_lowest_for_min() -> None:
    outcomes = [job("j1", 1, t=0.5), job("j2", 2, t=0.9), job("j3", 3, t=0.7)]
    assert handoff.best(outcomes, "a", "t", "max").job_id == "j2"
    assert handoff.best(outcomes, "a", "t", "min").job_id == "j1"


def test_a_tie_goes_to_the_job_earlier_in_the_queue_whatever_the_list_order() -> None:
    outcomes = [job("late", 7, t=0.9), job("early", 3, t=0.9), job("low", 1, t=0.1)]
    assert handoff.best(outcomes, "a", "t", "max").job_id == "early"
    assert handoff.best(list(reversed(outcomes)), "a", "t", "max").job_id == "early"


def test_failed_jobs_other_stages_and_non_numbers_are_not_candidates() -> None:
    outcomes = [
        job("failed", 1, status="failed", t=1.0),
        job("other", 2, stage="b", t=0.99),
        job("nan", 3, t=float("nan")),
        job("bool", 4, t=True),
        job("text", 5, t="0.98"),
        job("ok", 6, t=0.2),
    ]
    assert handoff.best(outcomes, "a", "t", "max").job_id == "ok"


def test_no_finished_job_or_no_metric_is_a_hand_off_error_naming_the_stage() -> None:
    with pytest.raises(HandOffError, match="no job of stage 'a' finished successfully"):
        handoff.best([job("f", 1, status="failed", t=1.0)], "a", "t", "max")
    with pytest.raises(HandOffError, match="no finished job of stage 'a' reported metric 't'"):
        handoff.best([job("j", 1, u=1.0)], "a", "t", "max")


# --- ranking over seeds -----------------------------------------------------------------------


def seeds_of_two_configs() -> list[Outcome]:
    # config lr=0.1: seeds 0.90, 0.70 -> mean 0.80;  config lr=0.2: seeds 0.85, 0.83 -> mean 0.84
    return [
        job("a0", 1, seed=0, lr=0.1, t=0.90),
        job("b0", 2, seed=0, lr=0.2, t=0.85),
        job("a1", 3, seed=1, lr=0.1, t=0.70),
        job("b1", 4, seed=1, lr=0.2, t=0.83),
    ]


def test_ranking_over_seeds_orders_configurations_by_their_mean() -> None:
    configs = handoff.ranked_configs(seeds_of_two_configs(), ("a",), "t", "max")
    assert [[m.job_id for m in c.members] for c in configs] == [["b0", "b1"], ["a0", "a1"]]
    assert configs[0].mean == pytest.approx(0.84)
    assert configs[1].mean == pytest.approx(0.80)


def test_the_best_single_job_can_lose_to_a_better_mean() -> None:
    outcomes = seeds_of_two_configs()
    assert handoff.best(outcomes, "a", "t", "max").job_id == "a0"  # one lucky seed
    chosen, config = handoff.best_config(outcomes, ("a",), "t", "max", 1)
    assert chosen.job_id == "b0" and [m.job_id for m in config.members] == ["b0", "b1"]


def test_config_summary_has_mean_sample_std_seeds_values_and_jobs() -> None:
    config = handoff.ranked_configs(seeds_of_two_configs(), ("a",), "t", "max")[1]
    summary = config.summary("t")
    assert summary["n"] == 2 and summary["seeds"] == [0, 1] and summary["jobs"] == ["a0", "a1"]
    assert summary["values"] == [0.90, 0.70]
    assert summary["mean"] == pytest.approx(0.80)
    assert summary["std"] == pytest.approx(0.1414213562, rel=1e-6)  # sqrt(((0.1)^2 + (0.1)^2) / 1)


def test_a_single_seed_has_no_std() -> None:
    config = handoff.ranked_configs([job("j", 1, seed=0, t=0.5)], ("a",), "t", "max")[0]
    assert config.summary("t")["std"] is None


def test_min_seeds_leaves_out_configurations_with_fewer_seeds() -> None:
    outcomes = [*seeds_of_two_configs(), job("c0", 5, seed=0, lr=0.3, t=0.99)]
    assert handoff.ranked_configs(outcomes, ("a",), "t", "max")[0].members[0].job_id == "c0"
    ranked = handoff.ranked_configs(outcomes, ("a",), "t", "max", min_seeds=2)
    assert [c.members[0].job_id for c in ranked] == ["b0", "a0"]
    with pytest.raises(HandOffError, match="with at least 3 seeds"):
        handoff.ranked_configs(outcomes, ("a",), "t", "max", min_seeds=3)


def test_a_seed_that_ran_in_two_stages_counts_once_as_its_earliest_job() -> None:
    outcomes = [job("first", 1, stage="a", seed=0, t=0.5), job("again", 2, stage="b", seed=0, t=0.9)]
    (config,) = handoff.ranked_configs(outcomes, ("a", "b"), "t", "max")
    assert [m.job_id for m in config.members] == ["first"] and config.mean == 0.5


def test_a_configuration_with_a_seed_that_reported_nothing_ranks_after_complete_ones() -> None:
    # lr=0.1 is faster on the seed that reached the target, but its other seed never did.
    outcomes = [
        job("x0", 1, seed=0, lr=0.1, t=1.0),
        job("x1", 2, seed=1, lr=0.1),
        job("y0", 3, seed=0, lr=0.2, t=5.0),
        job("y1", 4, seed=1, lr=0.2, t=6.0),
    ]
    ranked = handoff.ranked_configs(outcomes, ("a",), "t", "min")
    assert [c.members[0].job_id for c in ranked] == ["y0", "x0"]


def test_config_key_ignores_the_seed_and_key_order() -> None:
    assert handoff.config_key({"seed": 1, "lr": 0.1, "b": 2}) == handoff.config_key({"b": 2, "lr": 0.1, "seed": 9})
    assert handoff.config_key({"lr": 0.1}) != handoff.config_key({"lr": 0.2})


# --- resolving params -------------------------------------------------------------------------


def test_inherit_copies_the_keys_of_the_best_job_and_records_where_they_came_from() -> None:
    outcomes = [job("j1", 1, channels=4, lr=0.5, t=0.5), job("j2", 2, channels=16, lr=0.01, t=0.9)]
    inherit = handoff.parse_inherit({"from": "a", "metric": "t", "keys": ["conv1"]})
    params, provenance = handoff.resolve_params({"lr": 0.3}, inherit, outcomes)
    assert params == {"lr": 0.3, "conv1": {"channels": 16}}
    assert provenance == {"conv1": "j2"}


def test_inherited_values_are_copies_not_the_upstream_objects() -> None:
    outcomes = [job("j1", 1, t=0.5)]
    inherit = handoff.parse_inherit({"from": "a", "metric": "t", "keys": ["conv1"]})
    params, _ = handoff.resolve_params({}, inherit, outcomes)
    params["conv1"]["channels"] = 999
    assert outcomes[0].params["conv1"] == {"channels": 8}


def test_inheriting_a_key_the_upstream_job_lacks_is_an_error_naming_job_and_key() -> None:
    inherit = handoff.parse_inherit({"from": "a", "metric": "t", "keys": ["dense"]})
    with pytest.raises(HandOffError, match="upstream job j1 has no param 'dense'"):
        handoff.resolve_params({}, inherit, [job("j1", 1, t=0.5)])


def test_references_resolve_to_outcome_values_in_place() -> None:
    outcomes = [
        job("p1", 1, stage="p", t=0.2),
        job("q2", 3, stage="q", t=0.3),
        job("q1", 2, stage="q", t=0.9),
        job("qf", 4, stage="q", status="failed"),
    ]
    params = {"model": {"result_of": "p"}, "all": {"x": {"all_of": ["q", "p"]}}, "top": {"best_of": "q", "metric": "t"}}
    resolved, provenance = handoff.resolve_params(params, None, outcomes)
    assert resolved["model"] == {
        "job": "p1",
        "stage": "p",
        "params": outcomes[0].params,
        "metrics": {"t": 0.2},
        "artifacts": {"model": {"sha256": "p1"}},
    }
    assert [v["job"] for v in resolved["all"]["x"]] == ["p1", "q1", "q2"]  # queue order, done only
    assert resolved["top"]["job"] == "q1"
    assert provenance == {"model": "p1", "all.x": "p1,q1,q2", "top": "q1"}
    assert params["model"] == {"result_of": "p"}  # the params as written are left alone


def test_best_of_over_seeds_adds_the_configurations_summary() -> None:
    ref = {"best_of": "a", "metric": "t", "over_seeds": "mean"}
    resolved, _ = handoff.resolve_params({"model": ref}, None, seeds_of_two_configs())
    assert resolved["model"]["job"] == "b0"
    assert resolved["model"]["over_seeds"]["jobs"] == ["b0", "b1"]
    assert resolved["model"]["over_seeds"]["mean"] == pytest.approx(0.84)


def test_result_of_a_stage_whose_job_failed_is_a_hand_off_error() -> None:
    with pytest.raises(HandOffError, match="the job of stage 'p' did not finish successfully"):
        handoff.resolve_params({"m": {"result_of": "p"}}, None, [job("p1", 1, stage="p", status="failed")])
    with pytest.raises(HandOffError, match="no job of p finished successfully"):
        handoff.resolve_params({"m": {"all_of": "p"}}, None, [])


def test_a_repeat_takes_the_params_of_the_ranked_configuration_with_its_own_seed() -> None:
    outcomes = seeds_of_two_configs()
    params = {"rank_of": {"stage": "a", "by": "t", "mode": "max", "rank": 2}, "seed": 7}
    resolved, provenance = handoff.resolve_params(params, None, outcomes)
    assert resolved == {"lr": 0.1, "conv1": {"channels": 8}, "seed": 7}  # config lr=0.1 ranks second
    assert provenance == {"rank_of": "a0"}


def test_a_repeat_of_a_rank_that_does_not_exist_says_how_many_there_are() -> None:
    params = {"rank_of": {"stage": "a", "by": "t", "rank": 3}, "seed": 1}
    with pytest.raises(HandOffError, match="has 2 configuration"):
        handoff.resolve_params(params, None, seeds_of_two_configs())
