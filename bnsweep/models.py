"""Networks: VGG from a list spec, and the deep linear network (docs/protocol.md section 2).

Every model takes a `norm_layer(num_features)` callable and places it after each weight layer
but the last, before the non-linearity (conv -> norm -> ReLU) [P]. Weights are Glorot-uniform,
biases zero [P]. "Layer #k" is the k-th weight layer from the input: `weight_layers(model)[k-1]`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from bnsweep.errors import UserError
from bnsweep.limits import MAX_DEPTH, MAX_VGG_WIDTH, MAX_WIDTH
from bnsweep.norms import NORM_TYPES, NormLayer
from bnsweep.options import Options

if TYPE_CHECKING:
    from bnsweep.data import DatasetInfo

# CIFAR VGG conv stacks: channels, "M" = 2x2 max-pool. vgg_mini fits 8x8 inputs (digits).
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "vgg_mini": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


class VggOptions(Options):
    width: float = Field(
        1.0, gt=0, le=MAX_VGG_WIDTH, description="Channel multiplier applied to every conv layer (1 = the paper's VGG-16 widths)."
    )
    head: Literal["linear", "mlp"] = Field(
        "linear", description="Classifier: one Linear(C, classes) [I], or Linear-norm-ReLU twice then Linear [U]."
    )
    mlp_hidden: int = Field(512, gt=0, le=MAX_WIDTH, description="Hidden units of the `mlp` head, before the width multiplier.")


class DlnOptions(Options):
    depth: int = Field(25, ge=2, le=MAX_DEPTH, description="Number of linear layers (25 in the paper) [P].")
    width: int = Field(
        10, gt=0, le=MAX_WIDTH, description="Hidden width; input and output widths follow the data (10x10 layers in the paper) [P]."
    )
    bias: bool = Field(False, description="Add biases. The paper's DLN is W_1 ... W_25 x, without biases [P].")
    norm_last: bool = Field(False, description="Also normalise the last layer's output (not done by default [I]; unstated in the paper).")
    init: Literal["glorot_uniform", "glorot_normal"] = Field("glorot_uniform", description="Glorot init [P], uniform [I] or normal.")

    late_fields: ClassVar[Mapping[str, Any]] = {"norm_last": False, "init": "glorot_uniform"}


def glorot_(model: nn.Module, normal: bool = False) -> nn.Module:
    """Glorot-uniform (or -normal) weights and zero biases for every conv and linear layer [P; uniform is I]."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            (nn.init.xavier_normal_ if normal else nn.init.xavier_uniform_)(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Conv and linear layers in forward order; layer #k of the paper is element k-1."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The normalisation layers in forward order (empty for norm `none`)."""
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]


class VGG(nn.Module):
    """VGG: [conv3x3 -> norm -> ReLU | max-pool]* -> flatten -> head."""

    family: ClassVar[str] = "vgg"
    Options: ClassVar[type[Options]] = VggOptions

    def __init__(self, cfg: list[int | str], norm_layer: NormLayer, in_shape: tuple[int, ...], classes: int, o: VggOptions):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, hw = in_shape[0], in_shape[1]
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                hw //= 2
            else:
                c_out = max(1, round(int(v) * o.width))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), norm_layer(c_out), nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        flat = c_in * hw * hw
        if o.head == "linear":
            self.head = nn.Linear(flat, classes)
        else:
            h = max(1, round(o.mlp_hidden * o.width))
            self.head = nn.Sequential(
                nn.Linear(flat, h), norm_layer(h), nn.ReLU(), nn.Linear(h, h), norm_layer(h), nn.ReLU(), nn.Linear(h, classes)
            )
        glorot_(self)

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.head(self.features(x).flatten(1))

    @staticmethod
    def protocol(info: DatasetInfo) -> dict[str, int]:
        """Training defaults for a spec that leaves them unset: 15,000 steps of batch 128 [P]."""
        return {"steps": 15000, "batch_size": 128}

    @classmethod
    def build(cls, arch: str, options: VggOptions, norm_layer: NormLayer, info: DatasetInfo) -> VGG:
        return cls(VGG_CFGS[arch], norm_layer, info.input_shape, info.out_dim, options)

    @staticmethod
    def check(arch: str, info: DatasetInfo) -> None:
        pools = VGG_CFGS[arch].count("M")
        if len(info.input_shape) != 3 or info.task != "classification":
            raise UserError(
                f"arch {arch!r} needs image classification data, but dataset {info.name!r} is "
                f"{info.task} on inputs of shape {info.input_shape}"
            )
        h, w = info.input_shape[1:]
        if h != w or h % 2**pools:
            raise UserError(
                f"arch {arch!r} has {pools} max-pools and needs square inputs with a side divisible by {2**pools}; "
                f"dataset {info.name!r} gives {h}x{w} (use vgg_mini for 8x8 data)"
            )


class DLN(nn.Module):
    """Deep linear network: x -> W_depth ... W_2 W_1 x, a norm after every layer but the last [I] (or every layer)."""

    family: ClassVar[str] = "dln"
    Options: ClassVar[type[Options]] = DlnOptions

    def __init__(self, norm_layer: NormLayer, in_shape: tuple[int, ...], out_dim: int, o: DlnOptions):
        super().__init__()
        widths = [in_shape[0]] + [o.width] * (o.depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b, bias=o.bias))
            if i < o.depth - 1 or o.norm_last:
                layers.append(norm_layer(b))
        self.body = nn.Sequential(*layers)
        glorot_(self, normal=o.init == "glorot_normal")

    def forward(self, x):  # (B, D) -> (B, out_dim)
        return self.body(x)

    @staticmethod
    def protocol(info: DatasetInfo) -> dict[str, int]:
        """Training defaults for a spec that leaves them unset: 10,000 steps of full-batch gradient descent [P]."""
        return {"steps": 10000, "batch_size": info.train_size}

    @classmethod
    def build(cls, arch: str, options: DlnOptions, norm_layer: NormLayer, info: DatasetInfo) -> DLN:
        return cls(norm_layer, info.input_shape, info.out_dim, options)

    @staticmethod
    def check(arch: str, info: DatasetInfo) -> None:
        if len(info.input_shape) != 1:
            raise UserError(
                f"arch {arch!r} needs vector inputs, but dataset {info.name!r} gives shape {info.input_shape} (use gaussian_regression)"
            )


MODELS: dict[str, type[nn.Module]] = {
    "vgg11": VGG,
    "vgg13": VGG,
    "vgg16": VGG,
    "vgg19": VGG,
    "vgg_mini": VGG,
    "dln": DLN,
}

# option sections of a spec's `model:` block, one per family
MODEL_FAMILIES: dict[str, type[Options]] = {cls.family: cls.Options for cls in MODELS.values()}


def build_model(arch: str, options: Options, norm_layer: NormLayer, info: DatasetInfo) -> nn.Module:
    """The network `arch` for data described by `info`, with `norm_layer` after each hidden layer."""
    cls = MODELS[arch]
    cls.check(arch, info)
    return cls.build(arch, options, norm_layer, info)


def layer_outputs(model: nn.Module) -> list[nn.Module]:
    """For each weight layer #k, the module whose output is that layer's pre-activation: the norm
    layer after it (after noise, before the ReLU), or the weight layer itself when none follows."""
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.append(m)
        elif isinstance(m, NORM_TYPES) and out:
            out[-1] = m
    return out


@functools.lru_cache(maxsize=64)
def model_size(arch: str, options: Options, info: DatasetInfo) -> tuple[int, int]:
    """(weight layers, parameters) of `arch` on this data, without allocating it (meta device)."""
    with torch.device("meta"):
        model = build_model(arch, options, norm_layer_none, info)
    return len(weight_layers(model)), sum(p.numel() for p in model.parameters())


def norm_layer_none(num_features: int) -> nn.Module:
    return nn.Identity()
