"""Unstructured magnitude pruning (seed 004): zero the smallest weights of a layer, keep its shape.

For each chosen layer, the `round(amount · numel)` weights of smallest absolute value become zero
(ties broken by position, so the result is deterministic); biases are kept. The model keeps its
architecture, so its dense FLOPs do not change: what shrinks is the count of non-zero weights and
the MACs a sparse kernel would need (`effective_macs`: each layer's dense MACs times the fraction
of its weights left, as seed 004 counts them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jobs.ml.flops import layer_costs
from jobs.ml.model import CNN

WEIGHT_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def layers_of(layer: str) -> tuple[str, ...]:
    if layer == "all":
        return WEIGHT_LAYERS
    if layer not in WEIGHT_LAYERS:
        raise ValueError(f"unknown layer '{layer}': use one of {', '.join(WEIGHT_LAYERS)} or all")
    return (layer,)


def masks(model: CNN, layers: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
    """Per layer, a 0/1 mask of its weight with the smallest `amount` fraction set to 0."""
    out = {}
    for name in layers:
        w = getattr(model, name).weight.detach()
        flat = w.abs().flatten()
        n = round(amount * flat.numel())
        keep = torch.ones_like(flat)
        if n:
            keep[torch.argsort(flat, stable=True)[:n]] = 0.0
        out[name] = keep.view_as(w)
    return out


def apply_masks(model: CNN, layer_masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, mask in layer_masks.items():
            getattr(model, name).weight.mul_(mask)


def prune(model: CNN, layers: Sequence[str], amount: float) -> tuple[CNN, dict[str, torch.Tensor]]:
    """A pruned copy of `model` and the masks that made it (re-apply them after each fine-tuning step)."""
    copy = CNN(model.arch)
    copy.load_state_dict(model.state_dict())
    layer_masks = masks(copy, layers, amount)
    apply_masks(copy, layer_masks)
    return copy, layer_masks


def density(model: CNN) -> dict[str, float]:
    """Fraction of non-zero weights per weight layer (biases not counted)."""
    out = {}
    for name in WEIGHT_LAYERS:
        w = getattr(model, name).weight.detach()
        out[name] = float((w != 0).sum()) / w.numel()
    return out


def nonzero_params(model: CNN) -> int:
    return int(sum(int((p.detach() != 0).sum()) for p in model.parameters()))


def effective_macs(model: CNN) -> int:
    """Dense MACs of each layer scaled by the fraction of its weights that are non-zero."""
    dens = density(model)
    return round(sum(c.macs * dens[c.name] for c in layer_costs(model.arch)))
