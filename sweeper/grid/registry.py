"""Job kinds by name.

`kind: train` is looked up in the `sweeper.kinds` entry-point group (the `jobs` package registers
train, prune, benchmark and noop there). `kind: pkg.mod:func` names user code directly. The
orchestrator never imports `jobs` itself: it only follows these names.

A kind may also register a parameter model (a pydantic model) in the `sweeper.params` group, under
the same name. `enqueue` uses it to catch misspelled or mistyped parameters before anything is
queued, without importing the kind's heavy module (torch).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from sweeper.errors import UsageError

KINDS_GROUP = "sweeper.kinds"
PARAMS_GROUP = "sweeper.params"


@dataclass(frozen=True)
class Kind:
    name: str
    target: str  # "module:function"
    params_model: str | None = None  # "module:Class", optional


class KindError(UsageError):
    """A kind that is unknown or whose code does not import."""


@cache
def registered_kinds() -> dict[str, Kind]:
    params = {ep.name: ep.value for ep in entry_points(group=PARAMS_GROUP)}
    return {ep.name: Kind(ep.name, ep.value, params.get(ep.name)) for ep in entry_points(group=KINDS_GROUP)}


def _split_target(target: str) -> tuple[str, str]:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise KindError(f"'{target}' is not of the form module:function")
    return module, attr


def lookup(name: str) -> Kind:
    """Find a kind by registered name or as `module:function`, without importing heavy code.

    Registered kinds are only checked to exist (find_spec), because importing `jobs.kinds.train` would
    pull torch into `sweeper enqueue`. A `module:function` kind is user code: it is imported, so
    that a typo or an import error surfaces at enqueue time, not hours later on a worker.
    """
    kinds = registered_kinds()
    if name in kinds:
        kind = kinds[name]
        module, _ = _split_target(kind.target)
        if importlib.util.find_spec(module) is None:
            raise KindError(f"kind '{name}' is registered as {kind.target}, but {module} is not installed")
        return kind
    if ":" not in name:
        known = ", ".join(sorted(kinds)) or "(none registered: is the sweeper package installed?)"
        raise KindError(
            f"unknown kind '{name}'",
            hint=f"use one of {known}, or 'package.module:function' for your own code",
        )
    load_target(name)
    return Kind(name, name)


def load_target(target: str) -> Callable[..., Any]:
    module_name, attr = _split_target(target)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is the user's to see
        raise KindError(
            f"kind '{target}': module '{module_name}' does not import ({type(exc).__name__}: {exc})",
            hint="check the module path and that it is importable from the worker's working directory",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise KindError(f"kind '{target}': '{module_name}' has no callable '{attr}'")
    return fn


@cache
def load_run(name: str) -> Callable[..., Any]:
    """The job function for a kind (imports its module: call this on workers only)."""
    return load_target(lookup(name).target)


def load_params_model(name: str) -> Any | None:
    kind = lookup(name)
    if kind.params_model is None:
        return None
    return load_target(kind.params_model)


def declared_metrics(name: str) -> frozenset[str] | None:
    """The metrics a kind's results hold, as its param model declares them (`metrics` ClassVar).

    None when the kind declares none (no param model, or a model without `metrics`): its
    hand-offs are then checked only when they resolve, against the results actually recorded.
    """
    model = load_params_model(name)
    metrics = getattr(model, "metrics", None) if model is not None else None
    return frozenset(metrics) if metrics is not None else None


def param_names(name: str) -> frozenset[str] | None:
    """The top-level params a kind takes (its param model's fields), or None when it has no model."""
    model = load_params_model(name)
    return frozenset(model.model_fields) if model is not None else None
