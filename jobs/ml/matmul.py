"""The CNN re-implemented with matrix multiplication only (no nn.Conv2d, nn.Linear, F.conv2d, F.linear).

Layout: activations are kept *channel-major*, (C, N, H, W): "CNHW". Then

* a conv's output, computed as W (f, ·) @ patches (·, N·H'·W'), is (f, N·H'·W'): already the
  next layer's CNHW input, with no permute or copy between layers;
* every patch row (one input channel, one kernel offset, all images) is a strided view of the
  input whose innermost run is a whole image row, so gathering patches copies long runs. We
  measured channels-last (N, H, W, C) too: its patch rows are runs of only k·C floats, and for
  the narrow layers of pruned models that gather was 2-3x slower (BENCHMARKS.md).

Each conv uses one of three strategies, all from strided views made by `as_strided`/slicing:

* "im2col": per block of images, one strided patch view (C, k, k, m, H', W') of the input,
  reshaped to (C·k·k, m·H'·W') (the one copy), then a GEMM with the bias folded in
  (`torch.addmm`) into that block's output columns. The block is sized (BLOCK_BYTES) so that its
  patch matrix stays in L2: on the 5×5 16/32 net, the whole batch's matrix for conv2 is 20 MB,
  and blocking took that net from 2.5x to 1.7x the nn modules' time (BENCHMARKS.md).
* "rows": per block of images, patches over (channel, kernel row) only, at full width, then k
  GEMMs over the kernel's column shifts: a k times smaller copy, but k accumulating GEMMs of
  depth C·k and H'×W work instead of H'×W'. Slower than blocked im2col in our measurements; kept
  as an option (`MatmulCNN(model, "rows")`) and tested.
* "shifted": no patch copy at all. Flattened to (C, N·H·W), the input shifted by i·W + j columns
  is a plain strided matrix, and out = Σ_ij W[:, :, i, j] @ X_shifted(i, j): k·k GEMMs
  accumulating into one output over the full H×W grid, of which the valid H'×W' corner is kept
  (positions past the edge read the next row or image and are cropped away).

"auto" (the default) takes "shifted" for 3×3-or-smaller kernels on layers with at least 4 input
channels, where skipping the copy paid off in our measurements, and blocked "im2col" otherwise.
fc layers are one GEMM each (`addmm` against the pre-transposed weight). Inference only.
"""

from __future__ import annotations

import torch

from jobs.ml.model import CNN

STRATEGIES = ("auto", "im2col", "rows", "shifted")

# The patch matrix of one block of images is built, multiplied and dropped before the next block,
# so the GEMM reads patches that were just written instead of fetching a whole batch's matrix
# (20 MB for the 5x5 16/32 net's conv2 at batch 32) back from memory. 1 MiB, about a core's L2
# (512 KiB on the reference machine, 1-2 MiB on newer ones): with 256 KiB, conv1 of the 3×3 nets
# (780 KB for a whole batch) was cut into 4 blocks and the 8/8/100 net went from 0.87x to 1.17x
# the nn modules' time; at 1 MiB only layers far beyond L2 are blocked (5x5 conv2: one image each).
BLOCK_BYTES = 1024 * 1024


def choose(strategy: str, in_channels: int, kernel: int) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    return "shifted" if kernel <= 3 and in_channels >= 4 else "im2col"


def images_per_block(rows: int, cols_per_image: int, block_bytes: int) -> int:
    """How many images' patch matrices (rows × cols_per_image floats each) fit in block_bytes; at least 1."""
    return max(1, block_bytes // (4 * rows * cols_per_image))


def _bias(layer: torch.nn.Conv2d) -> torch.Tensor:
    assert layer.bias is not None, "every conv layer of CNN has a bias"
    return layer.bias


class ConvGemm:
    """One conv layer (+ bias, ReLU, optional 2×2 max-pool) on CNHW activations.

    Returns CNHW, possibly a strided view (the "rows" strategy crops its full-width output lazily:
    the next layer's patch gather or the final flatten copies it anyway).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        padding: int,
        pool: bool,
        strategy: str,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        f, c, k, _ = weight.shape
        self.k, self.padding, self.pool, self.block_bytes = k, padding, pool, block_bytes
        self.strategy = choose(strategy, c, k)
        weight = weight.detach()
        if self.strategy == "im2col":
            self.w = weight.reshape(f, c * k * k).contiguous()  # columns in (c, i, j) order, as the patch rows
        elif self.strategy == "rows":
            # one (f, C·k) matrix per kernel column j, its columns in (c, i) order, as the patch rows
            self.taps = [weight[:, :, :, j].reshape(f, c * k).contiguous() for j in range(k)]
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
        if self.strategy == "im2col":
            out = self._im2col(x)
        elif self.strategy == "rows":
            out = self._rows(x)
        else:
            out = self._shifted(x)
        if self.pool:
            out = max_pool2(out)
        return out

    def _im2col(self, x: torch.Tensor) -> torch.Tensor:
        """Per block of images: a (C·k·k, m·H'·W') patch copy, then one GEMM into the block's output columns."""
        c, n, h, w = x.shape
        k = self.k
        oh, ow = h - k + 1, w - k + 1
        sc, sn, sh, sw = x.stride()
        out = torch.empty(self.b.shape[0], n * oh * ow, dtype=x.dtype, device=x.device)
        m = n if x.device.type != "cpu" else images_per_block(c * k * k, oh * ow, self.block_bytes)
        for s in range(0, n, m):
            e = min(n, s + m)
            xs = x[:, s:e]
            patches = xs.as_strided((c, k, k, e - s, oh, ow), (sc, sh, sw, sn, sh, sw), xs.storage_offset())
            torch.addmm(self.b, self.w, patches.reshape(c * k * k, -1), out=out[:, s * oh * ow : e * oh * ow])
        return out.clamp_min_(0).view(-1, n, oh, ow)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Patches over (channel, kernel row) only, k GEMMs over the kernel's column shifts.

        Per block of images: P (C·k, m·H'·W) holds, for each channel c and kernel row i, the H' input
        rows starting at row i, at full width W: whole rows, so the gather copies runs of H'·W
        floats and the matrix is k times smaller than im2col's (5x for 5×5). Shifted by j columns,
        P is the patch matrix of kernel column j over the full width; out = Σ_j W[:, :, :, j] @
        P[:, j:], computed over H'×W and cropped to H'×W' (positions past a row's end are garbage).
        """
        c, n, h, w = x.shape
        k = self.k
        oh, ow = h - k + 1, w - k + 1
        sc, sn, sh, sw = x.stride()
        per_image = oh * w
        full = torch.empty(self.b.shape[0], n * per_image, dtype=x.dtype, device=x.device)
        m = n if x.device.type != "cpu" else images_per_block(c * k, per_image, self.block_bytes)
        for s in range(0, n, m):
            e = min(n, s + m)
            xs = x[:, s:e]
            patches = xs.as_strided((c, k, e - s, oh, w), (sc, sh, sn, sh, sw), xs.storage_offset())
            patches = patches.reshape(c * k, -1)  # the copy
            cols = (e - s) * per_image - (k - 1)  # the last shift still stays inside the block
            acc = full[:, s * per_image : s * per_image + cols]
            torch.addmm(self.b, self.taps[0], patches[:, :cols], out=acc)
            for j in range(1, k):
                acc.addmm_(self.taps[j], patches[:, j : j + cols])
        return full.view(-1, n, oh, w)[:, :, :, :ow].clamp_min_(0)

    def _shifted(self, x: torch.Tensor) -> torch.Tensor:
        c, n, h, w = x.shape
        k = self.k
        oh, ow = h - k + 1, w - k + 1
        flat = x.reshape(c, n * h * w)
        cols = n * h * w - (k - 1) * w - (k - 1)  # the last shift still stays inside the input
        full = torch.empty(self.b.shape[0], n * h * w, dtype=x.dtype, device=x.device)
        acc = full[:, :cols]
        acc.copy_(self.b.expand(-1, cols))
        for t, tap in enumerate(self.taps):
            shift = (t // k) * w + t % k
            acc.addmm_(tap, flat[:, shift : shift + cols])
        return full.view(-1, n, h, w)[:, :, :oh, :ow].clamp_min(0)  # a contiguous copy of the valid corner


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max-pool, stride 2, floor mode, on (C, N, H, W)."""
    c, n, h, w = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, :, : 2 * h2, : 2 * w2].reshape(c, n, h2, 2, w2, 2).amax(dim=(3, 5))


class MatmulCNN:
    """Loaded from a trained `CNN`; `model(x)` with x of shape (N, C, H, W) returns the logits."""

    def __init__(self, model: CNN, strategy: str = "auto", block_bytes: int = BLOCK_BYTES) -> None:
        arch = model.arch
        self.arch = arch
        convs = (model.conv1, model.conv2)
        self.conv1, self.conv2 = (
            ConvGemm(m.weight, _bias(m), arch.padding, arch.pool, strategy, block_bytes) for m in convs
        )
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
        x = x.transpose(0, 1)  # NCHW -> CNHW: a free view for one input channel (any strides work below)
        x = self.conv2(self.conv1(x))
        n = x.shape[1]
        x = x.transpose(0, 1).reshape(n, -1)  # back to (N, C·H·W) for fc1: one small copy
        x = torch.addmm(self.b3, x, self.w3).clamp_min_(0)
        return torch.addmm(self.b4, x, self.w4)
