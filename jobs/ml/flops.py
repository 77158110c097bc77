"""Analytic FLOPs and MACs of one forward pass of one image, per layer.

The report's formulas (seed 000, step 4), with n input channels (or features), k the kernel
size, f output channels, H'×W' the output size and m output features:

    conv:   FLOPs = (2·n·k² − 1 + a) · f · H' · W'      MACs = n·k² · f · H' · W'
    dense:  FLOPs = m · (2n − 1 + a)                     MACs = m · n

Each output value needs n·k² multiplications and n·k² − 1 additions to sum them. The term `a`
counts the extra operations per output value:

    a = 1 for the bias add (every layer here has a bias)
      + 1 for the ReLU, only when `count_activation=True` (fc2 has no ReLU)

The default (bias only, ReLU not counted) makes FLOPs exactly 2 × MACs, which is the convention
of torch.utils.flop_counter.FlopCounterMode, and the tests hold the two equal. Max-pooling
(when the architecture has it) is comparisons, not arithmetic, and is not counted; neither
does FlopCounterMode count it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jobs.ml.model import Arch


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str  # conv | dense
    inputs: int  # n: input channels (conv) or input features (dense)
    outputs: int  # f or m
    kernel: int  # k (1 for dense)
    out_h: int
    out_w: int
    a: int
    macs: int
    flops: int
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv_cost(name: str, n: int, f: int, k: int, out_h: int, out_w: int, a: int) -> LayerCost:
    flops = (2 * n * k * k - 1 + a) * f * out_h * out_w
    macs = n * k * k * f * out_h * out_w
    return LayerCost(name, "conv", n, f, k, out_h, out_w, a, macs, flops, f * n * k * k + f)


def dense_cost(name: str, n: int, m: int, a: int) -> LayerCost:
    return LayerCost(name, "dense", n, m, 1, 1, 1, a, m * n, m * (2 * n - 1 + a), m * n + m)


def layer_costs(arch: Arch, *, count_activation: bool = False) -> list[LayerCost]:
    """FLOPs and MACs of each weight layer of `arch` for one image."""
    relu = 1 if count_activation else 0
    # Output size before pooling: pooling comes after the ReLU and is not counted.
    size1 = arch.image_size + 2 * arch.padding - arch.conv1.kernel + 1
    size2 = arch.conv1_out + 2 * arch.padding - arch.conv2.kernel + 1
    return [
        conv_cost("conv1", arch.in_channels, arch.conv1.channels, arch.conv1.kernel, size1, size1, 1 + relu),
        conv_cost("conv2", arch.conv1.channels, arch.conv2.channels, arch.conv2.kernel, size2, size2, 1 + relu),
        dense_cost("fc1", arch.flat_features, arch.dense, 1 + relu),
        dense_cost("fc2", arch.dense, arch.classes, 1),
    ]


@dataclass(frozen=True)
class ModelCost:
    flops: int
    macs: int
    params: int
    layers: list[LayerCost]

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "macs": self.macs,
            "params": self.params,
            "layers": {c.name: c.to_dict() for c in self.layers},
        }


def model_cost(arch: Arch, *, count_activation: bool = False) -> ModelCost:
    layers = layer_costs(arch, count_activation=count_activation)
    return ModelCost(
        flops=sum(c.flops for c in layers),
        macs=sum(c.macs for c in layers),
        params=sum(c.params for c in layers),
        layers=layers,
    )
