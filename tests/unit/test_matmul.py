"""The matmul-only re-implementation: same outputs as the nn modules, and no conv or linear ops inside."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jobs.ml import surgery
from jobs.ml.data import load_dataset
from jobs.ml.matmul import MatmulCNN
from jobs.ml.model import Arch, Conv, build

ARCHS = [
    Arch(Conv(16, 3), Conv(16, 3), 100),
    Arch(Conv(1, 3), Conv(2, 3), 98),
    Arch(Conv(16, 5), Conv(32, 5), 100),
    Arch(Conv(8, 5), Conv(8, 3), 64, padding=2),
    Arch(Conv(6, 3), Conv(12, 3), 32, pool=True),
    Arch(Conv(3, 4), Conv(5, 3), 7, padding=1, pool=True),  # odd sizes: 27 -> 13 after the pool
]


class OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def with_biases(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize(
    "arch", ARCHS, ids=lambda a: a.describe() + (" pad" if a.padding else "") + (" pool" if a.pool else "")
)
@pytest.mark.parametrize("strategy", ["im2col", "rows", "shifted", "auto"])
def test_matmul_outputs_are_allclose_to_nn_outputs(arch, strategy):
    model = with_biases(build(arch, "kaiming_uniform", 1))
    x = torch.randn(70, 1, 28, 28)
    with torch.inference_mode():
        want = model(x)
    mm = MatmulCNN(model, strategy)
    assert strategy == "auto" or mm.strategies == (strategy, strategy)
    torch.testing.assert_close(mm(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["im2col", "rows", "shifted"])
def test_matmul_runs_no_convolution_or_linear_op(strategy):
    model = with_biases(build(Arch(Conv(4, 3), Conv(4, 3), 16, padding=1, pool=True), "xavier_uniform", 0))
    mm = MatmulCNN(model, strategy)
    x = torch.randn(4, 1, 28, 28)
    with OpLog() as nn_log, torch.inference_mode():
        model(x)
    with OpLog() as mm_log:
        mm(x)
    assert {"aten.conv2d", "aten.linear"} <= nn_log.ops, "the op log should see what nn.Conv2d and nn.Linear run"
    banned = [op for op in mm_log.ops if "conv" in op or "linear" in op]
    assert not banned, f"matmul version used {banned}"
    assert "aten.addmm" in mm_log.ops


def test_matmul_of_a_pruned_model_matches_on_the_whole_fashion_mnist_test_set(fmnist_dir):
    data = load_dataset("fashion-mnist", data_dir=fmnist_dir, train_subset=1)
    model = with_biases(build(Arch(Conv(8, 3), Conv(8, 3), 50), "xavier_uniform", 0))
    model = surgery.remove_units(surgery.remove_units(model, "conv1", [2]), "conv2", [5]).eval()
    mm = MatmulCNN(model)
    with torch.inference_mode():
        want = torch.cat([model(xb) for xb in data.test.x.split(1000)])
    got = torch.cat([mm(xb) for xb in data.test.x.split(1000)])
    assert got.shape == (10_000, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["im2col", "rows"])
def test_blocking_over_images_does_not_change_the_outputs(strategy):
    # one image per block, a few per block (70 = 23 blocks of 3 + a block of 1), and the whole batch at once
    model = with_biases(build(Arch(Conv(6, 5), Conv(8, 5), 20, padding=1, pool=True), "kaiming_uniform", 2))
    x = torch.randn(70, 1, 28, 28)
    with torch.inference_mode():
        want = model(x)
    # conv2: 6 channels, 13x13 padded to 15x15, 11x11 out; its patch bytes per image
    per_image = {"im2col": 6 * 25 * 11 * 11 * 4, "rows": 6 * 5 * 11 * 15 * 4}[strategy]
    for block_bytes in (1, 3 * per_image, 1 << 40):
        mm = MatmulCNN(model, strategy, block_bytes=block_bytes)
        torch.testing.assert_close(mm(x), want, rtol=1e-4, atol=1e-4)
