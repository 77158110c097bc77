"""Fuzzing `sweeper enqueue` with random and mutated grid files (hypothesis).

The promise: whatever the file holds, enqueue either adds valid jobs (exactly those the grid
describes) or prints one clear error and exits with code 2, never a traceback, and then the
queue is exactly as it was (no partial write). The CLI runs in-process through sweeper.cli.main
with sys.argv, as the console script does (clirun.py).
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from sweeper.errors import SweeperError
from sweeper.grid.spec import parse_spec

from .clirun import sweeper

BASE_DOCS: list[dict[str, Any]] = [
    {
        "sweep": "fuzz",
        "defaults": {"seed": 0},
        "stages": {
            "a": {"kind": "noop", "params": {"steps": 2}, "grid": {"value": [1, 2, 3], "step_s": [0.0, 0.01]}},
            "b": {"kind": "noop", "needs": ["a"], "configs": [{"value": 1}, {"value": 2, "fail_times": 1}]},
        },
    },
    {
        "sweep": "fuzz-train",
        "stages": {
            "t": {
                "kind": "train",
                "params": {"dataset": "synthetic", "max_epochs": 1, "lr": 0.001, "momentum": 0.9},
                "grid": {
                    "conv1.kernel": [3, 5],
                    "optim": [{"lr": 0.01, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.0}],
                },
            },
            "p": {
                "kind": "noop",
                "needs": ["t"],
                "max_failures": 2,
                "params": {"upstream": {"best_of": "t", "metric": "test_accuracy", "mode": "max"}},
            },
        },
    },
    {"sweep": "tiny", "stages": {"only": {"kind": "tests.kinds:echo", "grid": {"x": [1, "two", None, True]}}}},
    {  # defaults shared by kinds that take different params: each key reaches only its kinds
        "sweep": "fuzz-defaults",
        "defaults": {"max_epochs": 1, "lr": 0.05, "steps": 3, "seed": 1, "conv1": {"channels": 8}},
        "stages": {
            "t": {"kind": "train", "params": {"dataset": "synthetic"}, "grid": {"dense": [16, 32]}},
            "n": {"kind": "noop", "needs": ["t"], "grid": {"value": [1, 2]}},
        },
    },
]
BASE_TEXTS = [yaml.safe_dump(d, sort_keys=False) for d in BASE_DOCS]

# Values YAML can hold, including the awkward ones: NaN, huge ints, empty containers, odd strings.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["noop", "train", "a", "b", "t", "sweep", "grid", "", "tests.kinds:echo", "no_such_mod:run"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | scalars, inner, max_size=4),
    max_leaves=10,
)
STAGE_KEYS = ["kind", "params", "grid", "configs", "needs", "require_all", "inherit", "priority", "max_failures"]
# Real param names of the kinds above, and near misses of them: what a typo in `defaults:` looks like.
PARAM_NAMES = ["max_epochs", "lr", "steps", "seed", "momentum", "dense", "conv1", "value", "batch_size", "fail_times"]
NEAR_MISSES = ["max_epoch", "learning_rate", "stpes", "sed", "momentun", "dens", "conv_1", "values", "batchsize"]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_docs(draw: st.DrawFn) -> str:
    """A valid grid with 1-4 structural edits: delete, replace, add, rename, wrap, empty."""
    doc = copy.deepcopy(draw(st.sampled_from(BASE_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "add", "rename", "wrap", "empty", "stage_key", "default"]))
        if op == "default" and isinstance(doc, dict):  # a real param, a typo of one, or any key
            defaults = doc.get("defaults")
            if not isinstance(defaults, dict):
                defaults = doc["defaults"] = {}
            key = draw(st.sampled_from(PARAM_NAMES + NEAR_MISSES) | st.text(max_size=8))
            defaults[key] = draw(st.sampled_from([1, 0.1, 3]) | values)
            continue
        if not path:
            if op == "replace":
                doc = draw(values)
            continue
        parent, last = _get(doc, path[:-1]), path[-1]
        if not isinstance(parent, (dict, list)):
            continue
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(values)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8) | st.sampled_from(STAGE_KEYS))] = draw(values)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = parent.pop(last)
        elif op == "wrap":
            parent[last] = [parent[last]]
        elif op == "empty":
            parent[last] = draw(st.sampled_from([[], {}, "", None]))
        elif op == "stage_key" and isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from(STAGE_KEYS))] = draw(values)
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=draw(st.booleans()))
    except yaml.YAMLError:
        return "sweep: x\n"


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    """A valid grid file with characters inserted, deleted, swapped or lines duplicated, cut short."""
    text = draw(st.sampled_from(BASE_TEXTS))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "dup_line", "truncate", "indent"]))
        if op == "insert":
            text = text[:at] + draw(st.text(alphabet=":-[]{}&*!#|>'\"\n \t%@`,?0a.", max_size=4)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        elif op == "dup_line":
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
                text = "".join(lines)
        elif op == "truncate":
            text = text[:at]
        elif op == "indent":
            text = text[:at] + "  " + text[at:]
    return text


hostile = st.sampled_from(
    [
        "sweep: x\nstages:\n  a: !!python/object/apply:os.system [touch /tmp/sweeper-fuzz-pwned]\n",
        "sweep: x\nstages: !!python/name:os.system\n",
        "sweep: !!python/object/new:builtins.dict {}\nstages: {a: {kind: noop}}\n",
        "sweep: x\nstages: {a: {kind: noop, params: !!binary aGVsbG8=}}\n",
        "sweep: x\nstages: {a: {kind: noop, params: !custom {steps: 1}}}\n",
        "%YAML 1.1\n---\nsweep: x\n---\nsweep: y\n",
        "sweep: x\nstages: {a: {kind: noop, grid: {value: [1, 2]}}}\n" + "\t\x00\x01",
        "",
        "   \n# only a comment\n",
        "sweep: [x]\nstages: {}\n",
        "? [a, b]\n: c\n",
        "sweep: x\nstages: {a: {kind: noop, grid: {"
        + ", ".join(f"v{i}.x: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" for i in range(12))
        + "}}}\n",
    ]
)

grids = st.one_of(mutated_docs(), mutated_texts(), st.text(max_size=200), hostile)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One queue for every example, holding a valid sweep, so that 'unchanged' means something."""
    path = tmp_path_factory.mktemp("fuzz") / "state"
    code, _, err = cli("enqueue", _write(path.parent / "seed.yaml", BASE_TEXTS[0]), "--state", str(path))
    assert code == 0, err
    return path


def _write(path: Path, text: str | bytes) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return str(path)


def cli(*args: str) -> tuple[int, str, str]:
    """Run `sweeper ARGS` in this process: (exit code, stdout, stderr)."""
    run = sweeper(*args, COLUMNS="1000")  # one error per line, however long the path
    return run.code, run.stdout, run.stderr


def dump(state: Path) -> list:
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    try:
        with engine.connect() as conn:
            return [
                (t, [tuple(r) for r in conn.execute(sa.text(f"select * from {t} order by 1, 2"))])
                for t in ("sweeps", "stages", "jobs", "events")
            ]
    finally:
        engine.dispose()


def job_ids(state: Path, sweep: str) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("select id from jobs where sweep = :s"), {"s": sweep}).scalars())
    finally:
        engine.dispose()


def described_jobs(text: str) -> dict[str, int]:
    """Jobs per stage that a grid file describes, counted from its YAML alone, not by parse_spec:
    the product of the grid axes' lengths times the number of configs (one without configs)."""
    doc = yaml.safe_load(text)
    counts: dict[str, int] = {}
    for name, stage in doc["stages"].items():
        configs = stage.get("configs") or [None]
        counts[str(name)] = math.prod(len(values) for values in (stage.get("grid") or {}).values()) * len(configs)
    return counts


def jobs_per_stage(state: Path, sweep: str) -> dict[str, int]:
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("select stage, count(*) from jobs where sweep = :s group by stage"), {"s": sweep}
            )
            return {stage: n for stage, n in rows}
    finally:
        engine.dispose()


ADDED = re.compile(r"added (\d+) new job\(s\), (\d+) unchanged")


def check_added_exactly(text: str, grid: Path, state: Path, out: str, before: list, tmp_path: Path) -> None:
    """`enqueue` of `text` succeeded: the queue gained exactly the jobs the file describes."""
    doc = yaml.safe_load(text)
    expected = described_jobs(text)
    sweep = str(doc["sweep"])
    assert sweep in out
    # A fresh queue holds exactly the jobs the file describes, stage by stage.
    fresh = Path(tempfile.mkdtemp(dir=tmp_path)) / "state"
    code_fresh, _, err_fresh = cli("enqueue", str(grid), "--state", str(fresh))
    assert code_fresh == 0, err_fresh
    assert jobs_per_stage(fresh, sweep) == {k: v for k, v in expected.items() if v}, (expected, text)
    # The shared queue: new + unchanged is the whole grid, and exactly the new jobs were added.
    added = ADDED.search(" ".join(out.split()))
    assert added is not None, out
    new, unchanged = int(added[1]), int(added[2])
    assert new + unchanged == sum(expected.values()), (out, expected)
    jobs_before = next(rows for table, rows in before if table == "jobs")
    jobs_after = next(rows for table, rows in dump(state) if table == "jobs")
    ids_before, ids_after = {row[0] for row in jobs_before}, {row[0] for row in jobs_after}
    assert ids_before <= ids_after and len(ids_after - ids_before) == new
    # No default is dropped without a word: each one reaches at least one job.
    spec = parse_spec(text, str(grid))
    for key in doc.get("defaults") or {}:
        assert any(key in j.params for j in spec.jobs), (key, text)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(text=grids)
def test_enqueue_adds_exactly_the_grids_jobs_or_fails_with_one_clear_error_and_changes_nothing(
    text: str, state: Path, tmp_path: Path
) -> None:
    assume("\ud800" not in text)  # lone surrogates cannot be written as UTF-8 by anyone
    grid = tmp_path / "grid.yaml"
    _write(grid, text)
    before = dump(state)
    code, out, err = cli("enqueue", str(grid), "--state", str(state))
    assert "Traceback" not in out + err
    if code == 0:
        # A `repeat:` stage's jobs come from another stage's ranking (tests/test_repeats.py), not from a count.
        assume(not any(isinstance(s, dict) and "repeat" in s for s in yaml.safe_load(text)["stages"].values()))
        event("enqueued")
        check_added_exactly(text, grid, state, out, before, tmp_path)
    else:
        assert code == 2, (code, out, err)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(grid) in errors[0], err
        assert dump(state) == before  # no partial write
    assert not Path("/tmp/sweeper-fuzz-pwned").exists()


@pytest.mark.parametrize("index", range(len(BASE_TEXTS)))
def test_each_base_grid_adds_exactly_the_jobs_it_describes(index: int, state: Path, tmp_path: Path) -> None:
    """The fuzzer's success branch on known-good files, so that it runs whatever hypothesis draws."""
    grid = tmp_path / "grid.yaml"
    _write(grid, BASE_TEXTS[index])
    before = dump(state)
    code, out, err = cli("enqueue", str(grid), "--state", str(state))
    assert code == 0, err
    check_added_exactly(BASE_TEXTS[index], grid, state, out, before, tmp_path)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "sweep: x\nstages:\n  a: !!python/object/apply:os.system [touch /tmp/sweeper-fuzz-pwned]\n",
            "tag not allowed",
        ),
        (
            "sweep: x\nstages: {a: {kind: noop, grid: {"
            + ", ".join(f"v{i}.x: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" for i in range(12))
            + "}}}\n",
            "jobs",
        ),
    ],
)
def test_hostile_grids_fail_fast_with_a_clear_error(text: str, expected: str, state: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    before = dump(state)
    code, out, err = cli("enqueue", str(grid), "--state", str(state))
    assert code == 2 and expected in err, (code, out, err)
    assert dump(state) == before


def test_a_yaml_alias_bomb_is_refused_quickly(state: Path, tmp_path: Path) -> None:
    """A 1 KB file whose aliases expand to 9^9 values must not hang enqueue (billion laughs)."""
    lines = ["sweep: bomb", "x0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines += ["stages: {s: {kind: noop, params: {value: *a9}}}"]
    grid = tmp_path / "bomb.yaml"
    grid.write_text("\n".join(lines) + "\n")
    with pytest.raises(SweeperError, match="alias"):
        parse_spec(grid.read_text(), str(grid))
    code, _, err = cli("enqueue", str(grid), "--state", str(state))
    assert code == 2 and "alias" in err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typo=st.sampled_from(NEAR_MISSES), extra=st.dictionaries(st.sampled_from(PARAM_NAMES), st.integers(1, 3)))
def test_a_misspelled_default_exits_2_naming_it_and_changes_nothing(
    typo: str, extra: dict[str, int], state: Path, tmp_path: Path
) -> None:
    doc = copy.deepcopy(BASE_DOCS[3])
    doc["defaults"] = {**extra, typo: 1}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = dump(state)
    code, out, err = cli("enqueue", str(grid), "--state", str(state))
    assert code == 2, (code, out, err)
    assert f"key '{typo}': unknown param '{typo}' in defaults" in err and "checked kinds noop, train" in err, err
    assert "Traceback" not in out + err
    assert dump(state) == before
