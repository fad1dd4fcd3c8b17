"""Normalisation variants: the sweep's `norm` axis (docs/protocol.md section 3).

Every variant normalises per channel: over (N, H, W) after a conv, over N after a linear layer.
Each is one class with its option model, registered in `NORMS`; models receive a
`norm_layer(num_features) -> nn.Module` callable and never see which variant it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn as nn
from pydantic import Field

from bnsweep.options import NoOptions, Options

NormLayer = Callable[[int], nn.Module]


class BatchOptions(Options):
    momentum: float = Field(
        0.1, gt=0, le=1, description="Running-statistics momentum, used in eval mode only. PyTorch default [P: 'framework defaults']."
    )
    eps: float = Field(1e-5, gt=0, description="Added to the batch variance. PyTorch default.")


class NoisyBatchOptions(BatchOptions):
    n_mu: float = Field(0.5, ge=0, description="Per-step per-unit noise mean mu_t ~ U(-n_mu, n_mu). Algorithm 1 [P].")
    n_sigma: float = Field(1.25, ge=1, description="Per-step per-unit noise scale sigma_t ~ U(1, n_sigma). Algorithm 1 [P].")
    r_mu: float = Field(0.1, ge=0, description="Per-element shift m ~ U(mu_t - r_mu, mu_t + r_mu). Algorithm 1 [P].")
    r_sigma: float = Field(0.1, ge=0, description="Per-element scale s ~ N(sigma_t, r_sigma); r_sigma is a standard deviation [I].")


class LpOptions(Options):
    momentum: float = Field(0.1, gt=0, le=1, description="Running mean/scale momentum for eval mode, as BatchNorm [I].")
    eps: float = Field(1e-5, gt=0, description="Added to the l_p scale before dividing [I].")


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1) for conv activations, (1, C) for linear ones."""
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def _reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channel dimension 1: (N,) or (N, H, W)."""
    return [0, *range(2, x.dim())]


def _check_dims(x: torch.Tensor) -> None:
    if x.dim() not in (2, 4):
        raise ValueError(f"normalisation expects (N, C) or (N, C, H, W) input, got shape {tuple(x.shape)}")


class NoNorm(nn.Identity):
    """`none`: the unnormalised network."""

    Options: ClassVar[type[Options]] = NoOptions

    def __init__(self, num_features: int, options: Options = NoOptions(), generator: torch.Generator | None = None):
        super().__init__()


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """`batch`: BatchNorm (Ioffe and Szegedy 2015) with affine gamma, beta; batch statistics in training."""

    Options: ClassVar[type[Options]] = BatchOptions
    min_batch: ClassVar[int] = 2  # batch statistics of one sample: PyTorch refuses them on (N, C) input

    def __init__(self, num_features: int, options: BatchOptions = BatchOptions(), generator: torch.Generator | None = None):
        super().__init__(num_features, eps=options.eps, momentum=options.momentum)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        _check_dims(x)


def sample_noise(y: torch.Tensor, o: NoisyBatchOptions, generator: torch.Generator | None,
                 out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's noise for one step: returns (s, m), each shaped like `y`, to apply as s * y + m.

    Per unit j: mu_t[j] ~ U(-n_mu, n_mu), sigma_t[j] ~ U(1, n_sigma); per element:
    m ~ U(mu_t[j] - r_mu, mu_t[j] + r_mu), s ~ N(sigma_t[j], r_sigma).
    `out`: contiguous (s, m) of y's shape to draw into (a pack's stacked slots); the values are the same.
    The element-wise arithmetic runs in place, in the order of the formulas: m = mu + (2 u - 1) r_mu,
    s = sigma + z r_sigma.
    """
    kw = dict(generator=generator, device=y.device, dtype=y.dtype)
    c = y.shape[1]
    mu = (2 * torch.rand(c, **kw) - 1) * o.n_mu
    sigma = 1 + torch.rand(c, **kw) * (o.n_sigma - 1)
    s, m = out if out is not None else (None, None)
    m = torch.rand(y.shape, **kw, out=m).mul_(2).sub_(1).mul_(o.r_mu).add_(_per_channel(mu, y))
    s = torch.randn(y.shape, **kw, out=s).mul_(o.r_sigma).add_(_per_channel(sigma, y))
    return s, m


class NoisyBatchNorm(BatchNorm):
    """`noisy_batch`: BatchNorm followed by Algorithm 1's time-varying noise, in training mode only.

    The noise is drawn after BatchNorm's affine and before the non-linearity [I], from the
    trial's seeded generator, so the same seed gives the same noise.
    """

    Options: ClassVar[type[Options]] = NoisyBatchOptions

    def __init__(self, num_features: int, options: NoisyBatchOptions = NoisyBatchOptions(), generator: torch.Generator | None = None):
        super().__init__(num_features, options)
        self.noise = options
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.training:
            return y
        s, m = sample_noise(y, self.noise, self.generator)
        return s * y + m


class LpNorm(nn.Module):
    """l_p normalisation: x_hat = (x - mean(x)) / ((mean |x|^p)^(1/p) + eps), then BN's affine.

    The scale is taken on the uncentred x ("before shifting the mean"); max |x| for p = inf.
    Running mean and scale are kept for eval mode, as BatchNorm does.
    """

    Options: ClassVar[type[Options]] = LpOptions
    p: ClassVar[float]

    def __init__(self, num_features: int, options: LpOptions = LpOptions(), generator: torch.Generator | None = None):
        super().__init__()
        self.eps, self.momentum = options.eps, options.momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel l_p size of the uncentred x, shape (C,)."""
        dims = _reduce_dims(x)
        if math.isinf(self.p):
            return x.abs().amax(dims)
        if self.p == 1:
            return x.abs().mean(dims)
        if self.p == 2:
            return x.square().mean(dims).sqrt()
        return x.abs().pow(self.p).mean(dims).pow(1 / self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_dims(x)
        if self.training:
            mean, scale = x.mean(_reduce_dims(x)), self.scale(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_scale.lerp_(scale.detach(), self.momentum)
        else:
            mean, scale = self.running_mean, self.running_scale
        # (x - mean) / (scale + eps) * weight + bias as one multiply-add on x: per channel
        # x * g + (bias - mean * g), g = weight / (scale + eps); fewer passes over x, the same value
        g = self.weight / (scale + self.eps)
        return torch.addcmul(_per_channel(self.bias - mean * g, x), x, _per_channel(g, x))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, p={self.p}, eps={self.eps}"


class L1Norm(LpNorm):
    p = 1.0


class L2Norm(LpNorm):
    p = 2.0


class LinfNorm(LpNorm):
    p = math.inf


NORMS: dict[str, type[nn.Module]] = {
    "none": NoNorm,
    "batch": BatchNorm,
    "noisy_batch": NoisyBatchNorm,
    "l1": L1Norm,
    "l2": L2Norm,
    "linf": LinfNorm,
}

NORM_TYPES = tuple(cls for cls in NORMS.values() if cls is not NoNorm)


def norm_layer(name: str, options: Options, generator: torch.Generator | None = None) -> NormLayer:
    """The `norm_layer(num_features)` callable for variant `name`; all its layers share `generator`."""
    cls = NORMS[name]
    return lambda num_features: cls(num_features, options, generator)
