"""The nested-dict helpers (sweeper/mappings.py)."""

from __future__ import annotations

import math

from sweeper.mappings import deep_copy, finite, flatten, summary_line


def test_flatten_joins_nested_keys_with_dots() -> None:
    assert flatten({"conv1": {"channels": 8, "kernel": 3}, "lr": 0.1}) == {
        "conv1.channels": 8,
        "conv1.kernel": 3,
        "lr": 0.1,
    }


def test_flatten_keeps_whole_what_the_caller_says_is_one_value() -> None:
    ref = {"result_of": "p"}
    flat = flatten({"model": ref, "a": {"b": {"c": 1}}}, whole=lambda v: "result_of" in v)
    assert flat == {"model": ref, "a.b.c": 1}


def test_flatten_with_a_prefix_and_an_empty_mapping() -> None:
    assert flatten({"x": 1}, "params.") == {"params.x": 1}
    assert flatten({"empty": {}}) == {}


def test_deep_copy_copies_containers_and_shares_leaves() -> None:
    leaf = object()
    original = {"a": [1, {"b": leaf}], "c": {"d": [2]}}
    copy = deep_copy(original)
    assert copy == original
    copy["a"][1]["b"] = 0
    copy["c"]["d"].append(3)
    assert original == {"a": [1, {"b": leaf}], "c": {"d": [2]}}
    assert deep_copy(original)["a"][1]["b"] is leaf


def test_finite_turns_nan_and_infinities_into_none_everywhere() -> None:
    value = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": "x", "e": 3}}
    assert finite(value) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": "x", "e": 3}}


def test_finite_maps_keys_and_leaves_but_not_floats() -> None:
    out = finite({1: 2.5, 2: "s", 3: math.nan}, key=str, leaf=lambda v: f"<{v}>")
    assert out == {"1": 2.5, "2": "<s>", "3": None}


def test_summary_line_shows_the_first_scalars_with_four_significant_digits() -> None:
    result = {"acc": 0.912345, "epochs": 3, "name": "x", "curve": [1, 2], "ok": True, "loss": 1234.5678}
    assert summary_line(result) == "acc=0.9123 epochs=3 name=x ok=True loss=1235"
    assert summary_line(result, limit=2) == "acc=0.9123 epochs=3"


def test_summary_line_of_anything_but_a_dict_is_empty() -> None:
    assert summary_line(None) == "" and summary_line([1, 2]) == ""
