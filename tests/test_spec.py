"""grid.yaml -> jobs: expansion rules, identity, and one clear error per kind of mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from sweeper.errors import SpecError
from sweeper.grid.spec import job_identity, parse_spec

from .conftest import run_cli


def spec(text: str):
    return parse_spec(textwrap.dedent(text), "grid.yaml")


def test_grid_is_a_product_of_dotted_keys_nested_merges_and_tied_groups():
    s = spec(
        """
        sweep: s
        stages:
          a:
            kind: tests.kinds:echo
            params: {lr: 0.001, momentum: 0.9, conv1: {channels: 16, kernel: 3}}
            grid:
              conv1.kernel: [3, 5]
              conv1: [{channels: 8}]
              optim: [{lr: 0.01, momentum: 0.5}, {lr: 1e-3, momentum: 0.9}]
        """
    )
    params = [j.params for j in s.jobs]
    assert len(params) == 4  # 2 kernels x 1 conv1 x 2 optimizer settings
    assert params[0] == {"lr": 0.01, "momentum": 0.5, "conv1": {"channels": 8, "kernel": 3}}
    assert params[-1] == {"lr": 0.001, "momentum": 0.9, "conv1": {"channels": 8, "kernel": 5}}
    assert isinstance(params[-1]["lr"], float)  # 1e-3 is a float, not the YAML 1.1 string
    assert s.jobs[0].label == "conv1.kernel=3 conv1.channels=8 optim.lr=0.01 optim.momentum=0.5"


def test_a_tied_group_of_params_left_at_the_kinds_defaults_is_still_a_tied_group():
    # lr and momentum are set nowhere in the file: they are params of kind train, so `optim` ties them.
    s = spec(
        """
        sweep: s
        stages:
          a:
            kind: train
            grid:
              optim: [{lr: 0.01, momentum: 0.9}, {lr: 0.001, momentum: 0.5}]
        """
    )
    assert [j.params for j in s.jobs] == [{"lr": 0.01, "momentum": 0.9}, {"lr": 0.001, "momentum": 0.5}]
    assert s.jobs[0].label == "optim.lr=0.01 optim.momentum=0.9"


def test_a_mapping_axis_with_a_key_the_kind_does_not_take_is_an_unknown_param():
    with pytest.raises(SpecError, match="unknown param 'optim'"):
        spec(
            """
            sweep: s
            stages:
              a: {kind: train, grid: {optim: [{lr: 0.01, momentun: 0.9}]}}
            """
        )


def test_configs_are_an_explicit_list_and_combine_with_the_grid():
    s = spec(
        """
        sweep: s
        stages:
          diag:
            kind: tests.kinds:echo
            params: {lr: 0.001, batch_size: 32}
            configs: [{lr: 0.05}, {batch_size: 4}]
            grid: {seed: [1, 2]}
        """
    )
    got = sorted((j.params["seed"], j.params["lr"], j.params["batch_size"]) for j in s.jobs)
    assert got == [(1, 0.001, 4), (1, 0.05, 32), (2, 0.001, 4), (2, 0.05, 32)]


def test_job_identity_depends_on_params_not_on_key_order():
    a = job_identity("s", "st", "noop", {"a": 1, "b": {"x": 1, "y": 2}})
    b = job_identity("s", "st", "noop", {"b": {"y": 2, "x": 1}, "a": 1})
    assert a == b
    assert a != job_identity("s", "st", "noop", {"a": 2, "b": {"x": 1, "y": 2}})
    assert a != job_identity("s", "other", "noop", {"a": 1, "b": {"x": 1, "y": 2}})


def test_defaults_reach_only_kinds_that_take_them():
    s = spec(
        """
        sweep: s
        defaults: {steps: 2, max_epochs: 1}
        stages:
          a: {kind: noop}
          t: {kind: train}
        """
    )
    params = {j.stage: j.params for j in s.jobs}
    assert params["a"] == {"steps": 2}
    assert params["t"] == {"max_epochs": 1}


def test_a_default_that_no_kind_takes_is_an_error_naming_the_kinds_checked():
    with pytest.raises(SpecError) as info:
        spec(
            """
            sweep: s
            defaults: {steps: 2, zqxv: 1}
            stages:
              a: {kind: noop}
              t: {kind: train}
            """
        )
    err = info.value
    assert (err.line, err.key, err.stage) == (3, "zqxv", None)
    assert "no stage's kind takes it (checked kinds noop, train)" in str(err)


def test_defaults_go_to_every_stage_when_a_kind_has_no_param_model():
    s = spec("sweep: s\ndefaults: {anything: 1}\nstages:\n  a: {kind: tests.kinds:echo}\n  b: {kind: noop}\n")
    assert {j.stage: j.params for j in s.jobs} == {"a": {"anything": 1}, "b": {}}


BAD_GRIDS = {
    "not YAML": ("sweep: s\nstages: [a, b\n", "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping"),
    "unknown top key": ("sweep: s\nstagse: {}\n", "unknown top-level key 'stagse'"),
    "misspelled default": (  # used to be dropped: the jobs then trained 15 epochs at lr 0.001
        "sweep: s\ndefaults: {max_epoch: 1, lr: 0.1}\nstages:\n  t: {kind: train}\n",
        "unknown param 'max_epoch' in defaults: no stage's kind takes it (checked kind train)\n"
        "  hint: did you mean 'max_epochs'?",
    ),
    "unknown stage key": (
        "sweep: s\nstages:\n  a:\n    kind: noop\n    gird: {steps: [1]}\n",
        "did you mean 'grid'",
    ),
    "unknown param": (
        "sweep: s\nstages:\n  a:\n    kind: noop\n    grid: {stpes: [1, 2]}\n",
        "unknown param 'stpes' for kind 'noop'",
    ),
    "wrong param type": (
        "sweep: s\nstages:\n  a:\n    kind: noop\n    grid: {steps: [one]}\n",
        "param 'steps'",
    ),
    "empty value list": ("sweep: s\nstages:\n  a:\n    kind: noop\n    grid: {steps: []}\n", "empty list"),
    "duplicate stage": (
        "sweep: s\nstages:\n  a: {kind: noop}\n  a: {kind: noop}\n",
        "duplicate key 'a' (first defined on line 3)",
    ),
    "unknown needs": (
        "sweep: s\nstages:\n  a: {kind: noop}\n  b: {kind: noop, needs: [aa]}\n",
        "needs unknown stage 'aa'",
    ),
    "cycle": (
        "sweep: s\nstages:\n  a: {kind: noop, needs: [c]}\n  b: {kind: noop, needs: [a]}\n  c: {kind: noop, needs: [b]}\n",
        "dependency cycle: a -> c -> b -> a",
    ),
    "unknown kind": ("sweep: s\nstages:\n  a: {kind: trian}\n", "unknown kind 'trian'"),
    "kind does not import": (
        "sweep: s\nstages:\n  a: {kind: 'no_such_module_xyz:run'}\n",
        "module 'no_such_module_xyz' does not import",
    ),
    "reference outside needs": (
        "sweep: s\nstages:\n  a: {kind: noop}\n  b: {kind: noop, params: {upstream: {best_of: a, metric: value}}}\n",
        "best_of refers to 'a', which is not in 'needs'",
    ),
    "ambiguous result_of": (
        "sweep: s\nstages:\n  a: {kind: noop, grid: {value: [1, 2]}}\n"
        "  b: {kind: noop, needs: [a], params: {upstream: {result_of: a}}}\n",
        "result_of 'a' is ambiguous: that stage has 2 jobs",
    ),
    "limit out of range": (  # found by the fuzzer: 2**70 overflowed the INTEGER column at insert
        "sweep: s\nstages:\n  a: {kind: noop, max_failures: 1180591620717411303424}\n",
        "'max_failures' must be an integer from 1 to 1,000,000",
    ),
    "python tag": ("sweep: s\nstages:\n  a: !!python/object/apply:os.system [echo hi]\n", "tag not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_gives_clear_error(case):
    text, expected = BAD_GRIDS[case]
    with pytest.raises(SpecError) as info:
        parse_spec(text, "grid.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("grid.yaml")


def test_errors_name_file_line_stage_and_key():
    text = "sweep: s\nstages:\n  a:\n    kind: noop\n    grid:\n      steps: [1]\n      stpes: [2]\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, "grid.yaml")
    err = info.value
    assert (err.file, err.line, err.stage, err.key) == ("grid.yaml", 7, "a", "stpes")
    assert "did you mean 'steps'" in str(err)


@pytest.mark.parametrize("case", ["cycle", "unknown param", "python tag", "duplicate stage", "misspelled default"])
def test_bad_grid_via_cli_exits_2_and_leaves_the_queue_untouched(tmp_path: Path, case: str):
    state = tmp_path / "state"
    good = tmp_path / "good.yaml"
    good.write_text("sweep: s\nstages:\n  a: {kind: noop, grid: {steps: [1, 2, 3]}}\n")
    assert run_cli("enqueue", str(good), "--state", str(state)).returncode == 0
    db = state / "queue.db"
    before = _dump(db)

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_GRIDS[case][0])
    proc = run_cli("enqueue", str(bad), "--state", str(state))
    assert proc.returncode == 2
    assert BAD_GRIDS[case][1] in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _dump(db) == before


def test_missing_grid_file_is_a_clear_error(tmp_path: Path):
    proc = run_cli("enqueue", str(tmp_path / "nope.yaml"), "--state", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert "no such grid file" in proc.stderr
    assert not (tmp_path / "state" / "queue.db").exists()


def _dump(db: Path) -> list:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = {t: conn.execute(sa.text(f"select * from {t} order by 1")).all() for t in ("jobs", "events", "sweeps")}
    engine.dispose()
    return [(t, [tuple(r) for r in rs]) for t, rs in rows.items()]
