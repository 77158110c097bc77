"""The CNN re-implemented with matrix multiplication only (no nn.Conv2d, nn.Linear, F.conv2d, F.linear).

Each layer is one GEMM (`torch.addmm`, which adds the bias in the same call):

* Activations stay channels-last (N, H, W, C) from input to flatten. A conv's patches are then a
  strided view of its input, shape (N, H', W', k, k, C), made by `as_strided` without copying;
  reshaping that view to (N·H'·W', k·k·C) is the single gather the GEMM needs (the seed used
  `unfold` on NCHW, which copies into a (N, C·k², L) tensor that then has to be transposed).
* The GEMM's output (N·H'·W', f) already *is* the next layer's channels-last input: no
  permute, no copy between layers.
* fc1's columns are permuted once, at load time, from the (c, h, w) order of PyTorch's NCHW
  flatten to the (h, w, c) order of our channels-last flatten, so the flatten is a free view.
* Weights are stored pre-transposed and contiguous, as the right-hand side of the GEMM.

Inference only (nothing here is differentiated).
"""

from __future__ import annotations

import torch

from .model import CNN


def _conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """(f, C, k, k) -> (k·k·C, f), rows in the (kh, kw, c) order of a channels-last patch."""
    f = weight.shape[0]
    return weight.detach().permute(2, 3, 1, 0).reshape(-1, f).contiguous()


def patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, H, W, C) channels-last contiguous -> (N·H'·W', k·k·C) rows of k×k×C patches."""
    n, h, w, c = x.shape
    oh, ow = h - k + 1, w - k + 1
    sn, sh, sw, sc = x.stride()
    view = x.as_strided((n, oh, ow, k, k, c), (sn, sh, sw, sh, sw, sc))
    return view.reshape(n * oh * ow, k * k * c)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max-pool, stride 2, floor mode, on (N, H, W, C)."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(n, h2, 2, w2, 2, c).amax(dim=(2, 4))


class MatmulCNN:
    """Loaded from a trained `CNN`; `model(x)` with x of shape (N, C, H, W) returns the logits."""

    def __init__(self, model: CNN) -> None:
        arch = model.arch
        self.arch = arch
        self.k1, self.k2 = arch.conv1.kernel, arch.conv2.kernel
        self.w1 = _conv_weight(model.conv1.weight)
        self.b1 = model.conv1.bias.detach().clone()
        self.w2 = _conv_weight(model.conv2.weight)
        self.b2 = model.conv2.bias.detach().clone()
        c, s = arch.conv2.channels, arch.conv2_out
        # fc1 reads the channels-last flatten (h, w, c); PyTorch's flatten was (c, h, w).
        fc1 = model.fc1.weight.detach().reshape(arch.dense, c, s, s).permute(0, 2, 3, 1).reshape(arch.dense, -1)
        self.w3 = fc1.t().contiguous()
        self.b3 = model.fc1.bias.detach().clone()
        self.w4 = model.fc2.weight.detach().t().contiguous()
        self.b4 = model.fc2.bias.detach().clone()

    def to(self, device: torch.device | str) -> MatmulCNN:
        for name in ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        pad = self.arch.padding
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))  # zero border on H and W
        n, h, wd, _ = x.shape
        out = torch.addmm(b, patches(x, k), w).clamp_min_(0)
        out = out.view(n, h - k + 1, wd - k + 1, w.shape[1])
        return max_pool2(out) if self.arch.pool else out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC; a free view for one input channel
        if not x.is_contiguous():
            x = x.contiguous()
        x = self._conv(x, self.w1, self.b1, self.k1)
        x = self._conv(x, self.w2, self.b2, self.k2)
        x = torch.addmm(self.b3, x.reshape(x.shape[0], -1), self.w3).clamp_min_(0)
        return torch.addmm(self.b4, x, self.w4)
