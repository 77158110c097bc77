"""Analytic FLOPs: the report's formulas, held equal to torch's FlopCounterMode (bias convention a=1)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.ml import surgery
from jobs.ml.flops import layer_costs, model_cost
from jobs.ml.model import Arch, Conv, build

ARCHS = [
    Arch(Conv(16, 3), Conv(16, 3), 100),  # the assignment's baseline
    Arch(Conv(16, 5), Conv(32, 5), 100),  # the report's best of the model grid
    Arch(Conv(1, 3), Conv(2, 3), 98),  # the report's selected pruned model
    Arch(Conv(8, 5), Conv(8, 3), 64, padding=2),
    Arch(Conv(6, 3), Conv(12, 3), 32, pool=True),
    Arch(Conv(3, 7), Conv(5, 1), 7, padding=1, pool=True),
]


def counted(model, batch: int = 1) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, 1, 28, 28))
    per_module = counter.get_flop_counts()
    return {name: int(sum(per_module.get(f"CNN.{name}", {}).values())) for name in ("conv1", "conv2", "fc1", "fc2")}


@pytest.mark.parametrize(
    "arch", ARCHS, ids=lambda a: a.describe() + (" pad" if a.padding else "") + (" pool" if a.pool else "")
)
def test_analytic_flops_equal_flop_counter_mode_per_layer(arch):
    model = build(arch, "xavier_uniform", 0)
    ours = {c.name: c.flops for c in layer_costs(arch)}
    assert ours == counted(model)
    assert model_cost(arch).flops == sum(counted(model, batch=3).values()) // 3


def test_analytic_flops_follow_pruning_surgery():
    model = build(Arch(Conv(8, 3), Conv(8, 3), 50), "xavier_uniform", 0)
    for layer in ("conv1", "conv2", "fc1", "conv1"):
        model = surgery.remove_units(model, layer, [0])
        assert {c.name: c.flops for c in layer_costs(model.arch)} == counted(model)


def test_the_reports_formulas_by_hand():
    # conv: (2·n·k² − 1 + a)·f·H'·W'; dense: m·(2n − 1 + a); a = 1 (bias add)
    costs = {c.name: c for c in layer_costs(Arch(Conv(16, 3), Conv(16, 3), 100))}
    assert costs["conv1"].flops == (2 * 1 * 9 - 1 + 1) * 16 * 26 * 26 == 194_688
    assert costs["conv2"].flops == (2 * 16 * 9 - 1 + 1) * 16 * 24 * 24 == 2_654_208
    assert costs["fc1"].flops == 100 * (2 * 16 * 24 * 24 - 1 + 1) == 1_843_200
    assert costs["fc2"].flops == 10 * (2 * 100 - 1 + 1) == 2_000
    assert costs["conv2"].macs == 16 * 9 * 16 * 24 * 24
    assert costs["conv1"].params == 16 * 9 + 16


def test_counting_activations_adds_one_flop_per_relu_output_but_not_on_the_logits():
    arch = Arch(Conv(4, 3), Conv(4, 3), 10)
    plain = {c.name: c.flops for c in layer_costs(arch)}
    with_relu = {c.name: c.flops for c in layer_costs(arch, count_activation=True)}
    assert with_relu["conv1"] - plain["conv1"] == 4 * 26 * 26
    assert with_relu["conv2"] - plain["conv2"] == 4 * 24 * 24
    assert with_relu["fc1"] - plain["fc1"] == 10
    assert with_relu["fc2"] == plain["fc2"]
    assert model_cost(arch).flops == 2 * model_cost(arch).macs
