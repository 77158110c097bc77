"""Structured pruning by surgery: remove whole channels or neurons and build a smaller network.

Zeroing a channel (the assignment's "emulate pruning") saves no time: the multiply-adds still
happen. Here a unit is cut out of its layer and its inputs are cut out of the next layer, so
the result is a plain `CNN` of a smaller `Arch` that runs faster and saves smaller:

    conv1 channel c  ->  conv1.weight[c], conv1.bias[c]   and  conv2.weight[:, c]
    conv2 channel c  ->  conv2.weight[c], conv2.bias[c]   and  fc1.weight[:, c*H*W:(c+1)*H*W]
    fc1 neuron j     ->  fc1.weight[j], fc1.bias[j]       and  fc2.weight[:, j]

(fc1's inputs are conv2's output flattened channel-major, so each conv2 channel owns a block of
H*W consecutive columns.) Because ReLU(0) = 0 and max-pool of zeros is zero, the smaller network
computes exactly what the original computes with that unit's weights and bias set to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from jobs.ml.model import CNN, Arch, Conv

LAYERS = ("conv1", "conv2", "fc1")
NEXT = {"conv1": "conv2", "conv2": "fc1", "fc1": "fc2"}


def _check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise ValueError(f"cannot prune layer '{layer}': structured pruning works on {', '.join(LAYERS)}")


def unit_count(arch: Arch, layer: str) -> int:
    """Channels of a conv layer, neurons of fc1."""
    _check_layer(layer)
    return {"conv1": arch.conv1.channels, "conv2": arch.conv2.channels, "fc1": arch.dense}[layer]


def importance(model: CNN, layer: str) -> torch.Tensor:
    """Per unit: squared L2 norm of its weights plus its squared bias (the seed's heuristic)."""
    _check_layer(layer)
    module = getattr(model, layer)
    with torch.no_grad():
        w = module.weight.detach().flatten(1)
        score = (w * w).sum(dim=1, dtype=torch.float64)
        if module.bias is not None:
            score += module.bias.detach().double() ** 2
    return score


def least_important(model: CNN, layer: str) -> int:
    """The unit with the lowest importance; ties go to the lowest index (deterministic)."""
    return int(torch.argmin(importance(model, layer)).item())


def _keep(n: int, drop: Sequence[int], layer: str) -> torch.Tensor:
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise ValueError(f"{layer} has {n} units; cannot remove {bad}")
    keep = [i for i in range(n) if i not in set(drop)]
    if not keep:
        raise ValueError(f"removing {len(set(drop))} of {n} units would leave {layer} empty")
    return torch.tensor(keep, dtype=torch.long)


def smaller_arch(arch: Arch, layer: str, units: int) -> Arch:
    _check_layer(layer)
    if layer == "conv1":
        return replace(arch, conv1=Conv(units, arch.conv1.kernel))
    if layer == "conv2":
        return replace(arch, conv2=Conv(units, arch.conv2.kernel))
    return replace(arch, dense=units)


def remove_units(model: CNN, layer: str, drop: Sequence[int]) -> CNN:
    """A new, smaller CNN without units `drop` of `layer`; `model` is left as it was."""
    _check_layer(layer)
    arch = model.arch
    keep = _keep(unit_count(arch, layer), drop, layer)
    new = CNN(smaller_arch(arch, layer, len(keep)))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    nxt = NEXT[layer]
    state[f"{layer}.weight"] = state[f"{layer}.weight"][keep].clone()
    state[f"{layer}.bias"] = state[f"{layer}.bias"][keep].clone()
    if layer == "conv2":
        block = arch.conv2_out * arch.conv2_out  # fc1 columns per conv2 channel, after the flatten
        cols = (keep[:, None] * block + torch.arange(block)[None, :]).flatten()
        state[f"{nxt}.weight"] = state[f"{nxt}.weight"][:, cols].clone()
    else:
        state[f"{nxt}.weight"] = state[f"{nxt}.weight"][:, keep].clone()
    new.load_state_dict(state)
    return new


def zero_units(model: CNN, layer: str, units: Sequence[int]) -> CNN:
    """A copy of `model` with the weights and bias of `units` set to zero (pruning by emulation)."""
    _check_layer(layer)
    copy = CNN(model.arch)
    copy.load_state_dict(model.state_dict())
    module = getattr(copy, layer)
    with torch.no_grad():
        for i in units:
            module.weight[i].zero_()
            module.bias[i].zero_()
    return copy
