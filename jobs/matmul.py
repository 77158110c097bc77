"""The CNN re-implemented with matrix multiplication only (no nn.Conv2d, nn.Linear, F.conv2d, F.linear).

Layout: activations are kept *channel-major*, (C, N, H, W): "CNHW". Then

* a conv's output, computed as W (f, ·) @ patches (·, N·H'·W'), is (f, N·H'·W'): already the
  next layer's CNHW input, with no permute or copy between layers;
* every patch row (one input channel, one kernel offset, all images) is a strided view of the
  input whose innermost run is a whole image row, so gathering patches copies long runs. We
  measured channels-last (N, H, W, C) too: its patch rows are runs of only k·C floats, and for
  the narrow layers of pruned models that gather was 2-3x slower (BENCHMARKS.md).

Each conv uses one of two strategies, both from strided views made by `as_strided`/slicing:

* "im2col": one strided patch view (C, k, k, N, H', W') of the input, reshaped to (C·k·k,
  N·H'·W') (the one copy), then a single GEMM with the bias folded in (`torch.addmm`).
* "shifted": no patch copy at all. Flattened to (C, N·H·W), the input shifted by i·W + j columns
  is a plain strided matrix, and out = Σ_ij W[:, :, i, j] @ X_shifted(i, j): k·k GEMMs
  accumulating into one output over the full H×W grid, of which the valid H'×W' corner is kept
  (positions past the edge read the next row or image and are cropped away).

"auto" (the default) takes "shifted" for 3×3-or-smaller kernels on layers with at least 4 input
channels, where skipping the copy paid off in our measurements, and "im2col" otherwise.
fc layers are one GEMM each (`addmm` against the pre-transposed weight). Inference only.
"""

from __future__ import annotations

import torch

from .model import CNN

STRATEGIES = ("auto", "im2col", "shifted")


def choose(strategy: str, in_channels: int, kernel: int) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    return "shifted" if kernel <= 3 and in_channels >= 4 else "im2col"


class ConvGemm:
    """One conv layer (+ bias, ReLU, optional 2×2 max-pool) on CNHW activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, padding: int, pool: bool, strategy: str) -> None:
        f, c, k, _ = weight.shape
        self.k, self.padding, self.pool = k, padding, pool
        self.strategy = choose(strategy, c, k)
        weight = weight.detach()
        if self.strategy == "im2col":
            self.w = weight.reshape(f, c * k * k).contiguous()  # columns in (c, i, j) order, as the patch rows
        else:
            self.taps = [weight[:, :, i, j].contiguous() for i in range(k) for j in range(k)]  # each (f, C)
        self.b = bias.detach().reshape(f, 1).clone()

    def to(self, device: torch.device | str) -> ConvGemm:
        if self.strategy == "im2col":
            self.w = self.w.to(device)
        else:
            self.taps = [t.to(device) for t in self.taps]
        self.b = self.b.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            p = self.padding
            x = torch.nn.functional.pad(x, (p, p, p, p))  # zeros around H and W
        c, n, h, w = x.shape
        k = self.k
        oh, ow = h - k + 1, w - k + 1
        if self.strategy == "im2col":
            sc, sn, sh, sw = x.stride()
            patches = x.as_strided((c, k, k, n, oh, ow), (sc, sh, sw, sn, sh, sw)).reshape(c * k * k, n * oh * ow)
            out = torch.addmm(self.b, self.w, patches).clamp_min_(0).view(-1, n, oh, ow)
        else:
            flat = x.reshape(c, n * h * w)
            cols = n * h * w - (k - 1) * w - (k - 1)  # the last shift still stays inside the input
            full = torch.empty(self.b.shape[0], n * h * w, dtype=x.dtype, device=x.device)
            acc = full[:, :cols]
            acc.copy_(self.b.expand(-1, cols))
            for t, tap in enumerate(self.taps):
                shift = (t // k) * w + t % k
                acc.addmm_(tap, flat[:, shift : shift + cols])
            out = full.view(-1, n, h, w)[:, :, :oh, :ow].clamp_min(0)  # a contiguous copy of the valid corner
        if self.pool:
            out = max_pool2(out)
        return out


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max-pool, stride 2, floor mode, on (C, N, H, W)."""
    c, n, h, w = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, :, : 2 * h2, : 2 * w2].reshape(c, n, h2, 2, w2, 2).amax(dim=(3, 5))


class MatmulCNN:
    """Loaded from a trained `CNN`; `model(x)` with x of shape (N, C, H, W) returns the logits."""

    def __init__(self, model: CNN, strategy: str = "auto") -> None:
        arch = model.arch
        self.arch = arch
        self.conv1 = ConvGemm(model.conv1.weight, model.conv1.bias, arch.padding, arch.pool, strategy)
        self.conv2 = ConvGemm(model.conv2.weight, model.conv2.bias, arch.padding, arch.pool, strategy)
        self.w3 = model.fc1.weight.detach().t().contiguous()  # (C·H·W, dense): PyTorch's (c, h, w) flatten order
        self.b3 = model.fc1.bias.detach().clone()
        self.w4 = model.fc2.weight.detach().t().contiguous()
        self.b4 = model.fc2.bias.detach().clone()

    @property
    def strategies(self) -> tuple[str, str]:
        return self.conv1.strategy, self.conv2.strategy

    def to(self, device: torch.device | str) -> MatmulCNN:
        self.conv1.to(device)
        self.conv2.to(device)
        for name in ("w3", "b3", "w4", "b4"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)  # NCHW -> CNHW: a free view for one input channel
        if not x.is_contiguous():
            x = x.contiguous()
        x = self.conv2(self.conv1(x))
        n = x.shape[1]
        x = x.transpose(0, 1).reshape(n, -1)  # back to (N, C·H·W) for fc1: one small copy
        x = torch.addmm(self.b3, x, self.w3).clamp_min_(0)
        return torch.addmm(self.b4, x, self.w4)
