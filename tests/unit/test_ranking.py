"""Ranking by a metric (sweeper/grid/ranking.py): direction, parsing, suggestions, SQL on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from sweeper.errors import UsageError
from sweeper.grid import ranking
from sweeper.grid.ranking import Metric


@pytest.mark.parametrize(
    "name, mode",
    [
        ("test_accuracy", "max"),
        ("train_acc", "max"),
        ("images_per_s", "max"),  # a rate, although it ends in _s
        ("time_to_target_s", "min"),
        ("total_train_s", "min"),
        ("val_loss", "min"),
        ("error_rate", "min"),
        ("flops", "min"),
        ("model_size_bytes", "min"),
        ("latency_ms", "min"),
        ("Images_To_Target", "min"),  # case does not matter
        ("f1", "max"),
    ],
)
def test_the_default_direction_minimises_costs_and_maximises_the_rest(name: str, mode: str) -> None:
    assert ranking.default_mode(name) == mode


@pytest.mark.parametrize("name, seconds", [("wall_s", True), ("images_per_s", False), ("accuracy", False)])
def test_is_seconds_tells_durations_from_rates(name: str, seconds: bool) -> None:
    assert ranking.is_seconds(name) is seconds


def test_an_explicit_direction_overrides_the_default() -> None:
    assert ranking.parse_metric("time_to_target_s:max") == Metric("time_to_target_s", "max")
    assert ranking.parse_metric(" test_accuracy ") == Metric("test_accuracy", "max")
    assert ranking.parse_metric("loss") == Metric("loss", "min")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "a metric is the name of a key"),
        ("1abc", "a metric is the name"),
        ("acc:best", "is max or min, not 'best'"),
    ],
)
def test_a_bad_metric_is_a_usage_error_naming_the_option(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as caught:
        ranking.parse_metric(text, option="--metric")
    assert needle in caught.value.message and "--metric" in caught.value.message


def test_sort_key_puts_the_best_value_first() -> None:
    values = [0.3, 0.9, 0.5]
    assert sorted(values, key=Metric("a", "max").sort_key) == [0.9, 0.5, 0.3]
    assert sorted(values, key=Metric("a", "min").sort_key) == [0.3, 0.5, 0.9]
    assert Metric("a", "min").better == "lower" and str(Metric("a")) == "a:max"


def test_rank_metrics_lists_the_likeliest_first_then_the_commonest() -> None:
    counts = {"min_test_accuracy": 1, "train_accuracy": 3, "test_accuracy": 3, "images_per_s": 5}
    ranked = ranking.rank_metrics("accuracy", counts)
    assert ranked.index("test_accuracy") < ranked.index("train_accuracy") < ranked.index("min_test_accuracy")
    assert ranking.rank_metrics("zzzz", {"a": 1, "b": 9})[0] == "b"


def test_an_unknown_metric_suggests_the_closest_one_and_lists_the_rest() -> None:
    error = ranking.unknown_metric(Metric("test_acc"), {"test_accuracy": 2, "loss": 1}, option="--by", scope="")
    assert error.message == "--by test_acc: no finished job reports a metric 'test_acc'"
    assert error.hint is not None and error.hint.startswith("did you mean --by test_accuracy?")
    assert "test_accuracy (2), loss (1)" in error.hint
    far = ranking.unknown_metric(Metric("qqq"), {"loss": 1}, option="--by", scope=" in stage 'a'")
    assert "did you mean" not in (far.hint or "") and "in stage 'a'" in far.message


def test_a_long_list_of_metrics_is_cut_at_ten() -> None:
    counts = {f"m{i:02d}": 1 for i in range(12)}
    hint = ranking.unknown_metric(Metric("x"), counts, option="--by", scope="").hint or ""
    assert hint.count("(1)") == 10 and hint.endswith(", ...")


def test_metric_value_reads_numbers_and_gives_null_for_anything_else_on_sqlite(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    table = sa.Table("jobs", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("result", sa.JSON))
    table.metadata.create_all(engine)
    rows = [{"acc": 0.5}, {"acc": 2}, {"acc": "0.9"}, {"other": 1.0}, None, {"acc": None}]
    with engine.begin() as conn:
        for i, row in enumerate(rows):
            conn.execute(table.insert().values(id=i, result=row))
        conn.execute(sa.text("INSERT INTO jobs (id, result) VALUES (99, 'not json {')"))
        value = ranking.metric_value(table.c.result, "acc", "sqlite")
        got = dict(conn.execute(sa.select(table.c.id, value).order_by(table.c.id)).all())
    engine.dispose()
    assert got == {0: 0.5, 1: 2.0, 2: None, 3: None, 4: None, 5: None, 99: None}
    assert json.dumps(got)  # plain floats and None, nothing exotic
