"""The two definitions of `sweeper.status/1` agree field by field.

dashboard.py builds the status from plain dataclasses (the status command must not pay for
pydantic); status_schema.py is the documented contract that scripts validate against. A field
added, renamed, reordered or retyped on one side only fails here, before a script sees it.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from sweeper.store.db import STATUSES
from sweeper.views import dashboard, status_schema
from sweeper.views.dashboard import StatusSnapshot, to_json

# dataclass -> the model it is serialized as (dataclasses.asdict in dashboard.to_json)
PAIRS = [
    (dashboard.SweepRow, status_schema.Sweep),
    (dashboard.StageRow, status_schema.Stage),
    (dashboard.RunningRow, status_schema.Running),
    (dashboard.LeaderRow, status_schema.Leader),
    (dashboard.Leaderboard, status_schema.Leaderboard),
    (dashboard.FailedRow, status_schema.Failed),
    (dashboard.WorkerRow, status_schema.Worker),
]
AS_DATACLASS: dict[Any, Any] = {model: cls for cls, model in PAIRS}
AS_DATACLASS[status_schema.Counts] = dict[str, int]  # counts are a plain dict of every state


def plain(tp: Any) -> Any:
    """A schema annotation in dataclass terms: models -> their dataclass, Literal[str, ...] -> str."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(tp)}
        assert len(kinds) == 1, tp
        return kinds.pop()
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(plain(a) for a in typing.get_args(tp))]  # noqa: UP007
    if origin is not None:
        return origin[tuple(plain(a) for a in typing.get_args(tp))]
    return AS_DATACLASS.get(tp, tp)


def normal(tp: Any) -> Any:
    """`X | None` and `Optional[X]` compare equal."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.Union[tuple(normal(a) for a in typing.get_args(tp))]  # noqa: UP007
    if typing.get_origin(tp) is not None:
        return typing.get_origin(tp)[tuple(normal(a) for a in typing.get_args(tp))]
    return tp


@pytest.mark.parametrize("cls, model", PAIRS, ids=[m.__name__ for _, m in PAIRS])
def test_each_status_row_dataclass_matches_its_schema_model_field_by_field(cls, model: type[BaseModel]):
    hints = typing.get_type_hints(cls)
    ours = [(f.name, normal(hints[f.name])) for f in fields(cls)]
    theirs = [(info.alias or name, normal(plain(info.annotation))) for name, info in model.model_fields.items()]
    assert ours == theirs


def test_status_document_has_exactly_the_schema_keys_in_order():
    doc = to_json(StatusSnapshot(database="sqlite:///q.db", time=0.0, sweep=None))
    keys = [info.alias or name for name, info in status_schema.Status.model_fields.items()]
    # `mirror` is added by the CLI, and only when the state directory is mirrored.
    assert list(doc) == [k for k in keys if k != "mirror"]
    status_schema.Status.model_validate(doc, strict=True)


def test_counts_name_every_job_state():
    assert list(status_schema.Counts.model_fields) == list(STATUSES)
    assert set(typing.get_args(status_schema.State)) == set(STATUSES)
