"""Pruning is real: surgery makes smaller networks that compute what the zeroed original computes."""

from __future__ import annotations

import pytest
import torch

from jobs.ml import magnitude, surgery
from jobs.ml.model import CNN, Arch, Conv, build

ARCHS = [
    Arch(Conv(8, 3), Conv(16, 3), 64),
    Arch(Conv(16, 5), Conv(8, 5), 100),
    Arch(Conv(4, 3), Conv(6, 3), 20, padding=1, pool=True),
]


def trained_like(arch: Arch, seed: int = 0) -> CNN:
    """Random weights and non-zero biases (the zero biases of a fresh model would hide mistakes)."""
    model = build(arch, "kaiming_uniform", seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.describe())
@pytest.mark.parametrize("layer", surgery.LAYERS)
def test_pruned_model_equals_the_original_with_those_units_zeroed(arch, layer):
    model = trained_like(arch)
    n = surgery.unit_count(arch, layer)
    drop = [0, n // 2, n - 1]
    smaller = surgery.remove_units(model, layer, drop)
    zeroed = surgery.zero_units(model, layer, drop)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        want, got, full = zeroed(x), smaller(x), model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, want, atol=1e-3), "zeroing those units should change the outputs"


@pytest.mark.parametrize("layer", surgery.LAYERS)
def test_pruned_shapes_shrink_in_the_layer_and_in_the_next_layers_inputs(layer):
    arch = Arch(Conv(8, 3), Conv(16, 3), 64)
    model = trained_like(arch)
    smaller = surgery.remove_units(model, layer, [3])
    shapes = {k: tuple(v.shape) for k, v in smaller.state_dict().items()}
    conv1, conv2, dense = 8 - (layer == "conv1"), 16 - (layer == "conv2"), 64 - (layer == "fc1")
    assert shapes["conv1.weight"] == (conv1, 1, 3, 3)
    assert shapes["conv2.weight"] == (conv2, conv1, 3, 3)
    assert shapes["fc1.weight"] == (dense, conv2 * 24 * 24)
    assert shapes["fc2.weight"] == (10, dense)
    assert smaller.arch == surgery.smaller_arch(arch, layer, surgery.unit_count(arch, layer) - 1)
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in model.parameters())
    assert tuple(model.conv1.weight.shape) == (8, 1, 3, 3), "the input model is left as it was"


def test_conv2_channel_takes_its_block_of_fc1_columns_through_the_flatten():
    arch = Arch(Conv(2, 3), Conv(3, 3), 5)
    model = trained_like(arch)
    smaller = surgery.remove_units(model, "conv2", [1])
    block = 24 * 24
    want = torch.cat([model.fc1.weight[:, :block], model.fc1.weight[:, 2 * block :]], dim=1)
    assert torch.equal(smaller.fc1.weight, want)


def test_importance_is_squared_weight_norm_plus_squared_bias_and_the_lowest_goes():
    model = trained_like(Arch(Conv(3, 3), Conv(4, 3), 8))
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0].fill_(1.0)  # 9 * 1 = 9
        model.conv1.weight[1].fill_(0.5)  # 9 * 0.25 = 2.25
        model.conv1.weight[2].fill_(0.1)  # 0.09 ...
        model.conv1.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))  # ... + 4 = 4.09
    scores = surgery.importance(model, "conv1")
    torch.testing.assert_close(scores, torch.tensor([9.0, 3.25, 4.09], dtype=torch.float64))
    assert surgery.least_important(model, "conv1") == 1


def test_the_last_unit_cannot_be_removed():
    model = trained_like(Arch(Conv(1, 3), Conv(2, 3), 4))
    with pytest.raises(ValueError, match="empty"):
        surgery.remove_units(model, "conv1", [0])
    with pytest.raises(ValueError, match="cannot prune layer 'fc2'"):
        surgery.remove_units(model, "fc2", [0])


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.9, 1.0])
def test_magnitude_pruning_zeroes_exactly_the_smallest_fraction_of_each_layer(amount):
    model = trained_like(Arch(Conv(8, 3), Conv(8, 3), 32))
    pruned, masks = magnitude.prune(model, magnitude.layers_of("all"), amount)
    for name in magnitude.WEIGHT_LAYERS:
        w, pw = getattr(model, name).weight, getattr(pruned, name).weight
        zeroed = pw == 0
        assert int(zeroed.sum()) == round(amount * w.numel())
        assert torch.equal(masks[name] == 0, zeroed) or amount == 0.0
        if 0 < amount < 1:
            assert w[zeroed].abs().max() <= w[~zeroed].abs().min(), "only the smallest weights go"
        assert torch.equal(pw[~zeroed], w[~zeroed])
        assert torch.equal(getattr(pruned, name).bias, getattr(model, name).bias), "biases are kept"
    assert magnitude.density(pruned)["conv1"] == pytest.approx(1 - round(amount * 72) / 72)
    assert magnitude.nonzero_params(pruned) <= magnitude.nonzero_params(model)
