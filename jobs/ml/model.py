"""The assignment's network, parametric: conv -> ReLU -> conv -> ReLU -> dense -> ReLU -> dense.

No padding or pooling unless asked. The architecture travels as a plain dict (`Arch.to_dict()`)
next to the weights, so a saved model loads with torch.load(weights_only=True) and rebuilds
itself, whatever pruning did to its widths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper.outcome import JobFailed
from sweeper.store.encoding import load_plain

INITS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int


@dataclass(frozen=True)
class Arch:
    conv1: Conv
    conv2: Conv
    dense: int
    classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    padding: int = 0
    pool: bool = False  # 2x2 max-pool after each conv, when asked

    @property
    def conv1_out(self) -> int:
        size = self.image_size + 2 * self.padding - self.conv1.kernel + 1
        return size // 2 if self.pool else size

    @property
    def conv2_out(self) -> int:
        size = self.conv1_out + 2 * self.padding - self.conv2.kernel + 1
        return size // 2 if self.pool else size

    @property
    def flat_features(self) -> int:
        return self.conv2.channels * self.conv2_out * self.conv2_out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        d = dict(d)
        return cls(conv1=Conv(**d.pop("conv1")), conv2=Conv(**d.pop("conv2")), **d)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Arch:
        def conv(name: str) -> Conv:
            value = params.get(name) or {}
            return Conv(int(value.get("channels", 16)), int(value.get("kernel", 3)))

        return cls(
            conv1=conv("conv1"),
            conv2=conv("conv2"),
            dense=int(params.get("dense", 100)),
            padding=int(params.get("padding", 0)),
            pool=bool(params.get("pool", False)),
        )

    def describe(self) -> str:
        return (
            f"conv {self.conv1.kernel}x{self.conv1.kernel}x{self.conv1.channels}, "
            f"conv {self.conv2.kernel}x{self.conv2.kernel}x{self.conv2.channels}, dense {self.dense}"
        )

    def validate(self) -> None:
        """Fail the job at once (no retries) for an architecture that cannot work."""
        for name, conv in (("conv1", self.conv1), ("conv2", self.conv2)):
            if conv.channels < 1:
                raise JobFailed(f"{name}.channels must be >= 1, got {conv.channels}")
            if conv.kernel < 1:
                raise JobFailed(f"{name}.kernel must be >= 1, got {conv.kernel}")
        if self.dense < 1:
            raise JobFailed(f"dense must be >= 1, got {self.dense}")
        size1 = self.image_size + 2 * self.padding - self.conv1.kernel + 1
        if size1 < 1:
            raise JobFailed(
                f"conv1.kernel {self.conv1.kernel} is too large for a {self.image_size}x{self.image_size} "
                f"input (padding {self.padding})"
            )
        size2 = self.conv1_out + 2 * self.padding - self.conv2.kernel + 1
        if size2 < 1:
            raise JobFailed(
                f"conv2.kernel {self.conv2.kernel} is too large for conv1's {self.conv1_out}x{self.conv1_out} output"
            )


class CNN(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(arch.in_channels, arch.conv1.channels, arch.conv1.kernel, padding=arch.padding)
        self.conv2 = nn.Conv2d(arch.conv1.channels, arch.conv2.channels, arch.conv2.kernel, padding=arch.padding)
        self.fc1 = nn.Linear(arch.flat_features, arch.dense)
        self.fc2 = nn.Linear(arch.dense, arch.classes)
        self.pool = nn.MaxPool2d(2) if arch.pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def init_weights(model: nn.Module, init: str) -> None:
    """Weights by the named scheme, biases zero (the assignment's convention)."""
    if init not in INITS:
        raise JobFailed(f"unknown init '{init}'; use one of {', '.join(INITS)}")
    fn = {
        "xavier_uniform": nn.init.xavier_uniform_,
        "xavier_normal": nn.init.xavier_normal_,
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    }[init]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fn(module.weight)
            if module.bias is not None:  # every layer of CNN has one
                nn.init.zeros_(module.bias)


def build(arch: Arch, init: str, seed: int) -> CNN:
    arch.validate()
    torch.manual_seed(seed)
    model = CNN(arch)
    init_weights(model, init)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(path: Path, model: CNN) -> Path:
    """torch.save of plain data: {'arch': dict, 'state_dict': CPU tensors}. Loads with weights_only=True
    on any machine, whatever device the model trained on."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"arch": model.arch.to_dict(), "state_dict": state}, path)
    return path


def load_model(path: Path) -> CNN:
    """A model written by save_model. Loaded as a checkpoint is (sweeper.store.encoding.load_plain): a file
    that is not a torch.save file of tensors and plain values (a crafted pickle that would run code,
    in any pickle protocol) is refused without running it, and the job fails at once, since
    fetching the same file again cannot help. The model comes back on the CPU; move it with .to(device)."""
    blob = load_plain(path)
    model = CNN(Arch.from_dict(blob["arch"]))
    model.load_state_dict(blob["state_dict"])
    return model
