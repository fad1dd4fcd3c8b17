"""Packed DLN cells as one batched network: K deep linear networks in stacked tensors, no vmap.

    step = StackedDLN(template, noisy, lf, classification)
    loss, acc = step(params, buffers, xs, ys, noise)   # (K,) each; one autograd graph over the stack

`params` and `buffers` are `pack.Stack`'s: the DLN's own state-dict names, each tensor with a leading
member dimension (K, ...): weights (K, out, in), norm gamma and beta (K, C), running statistics (K, C).
Activations are (K, B, C); a linear layer is one `torch.bmm` (or `baddbmm` with biases) over the
stack, and every norm variant takes its statistics over the batch dimension 1, per member and per
channel, as the unpacked layer takes them over dimension 0. Running statistics are updated in place,
as the unpacked layers update theirs: BatchNorm's mean and unbiased variance, l_p's `lerp_`.

For one member this is the unpacked forward pass written on a stack: the same formulas in the same
order, so in float64 a member's losses equal its unpacked run to rounding (the test standard is 1e-10
relative); in float32 a batched matmul and a batched reduction may round differently from the
unpacked kernels (README, Packed cells, gives the measured size).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep.norms import BatchNorm, LpNorm


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(K, B, in) -> (K, B, out): each member's `F.linear`."""
    wt = w.transpose(1, 2)
    return torch.bmm(h, wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, wt)


def _batch_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
                nbt: torch.Tensor, momentum: float, eps: float) -> torch.Tensor:
    """Training-mode BatchNorm of (K, B, C) per member: batch mean and biased variance over B; running
    mean and unbiased variance updated with `momentum`, as `F.batch_norm` does."""
    mean = h.mean(1, keepdim=True)
    centred = h - mean
    var = centred.square().mean(1, keepdim=True)
    with torch.no_grad():
        n = h.shape[1]
        nbt.add_(1)
        rm.mul_(1 - momentum).add_(mean.squeeze(1), alpha=momentum)
        rv.mul_(1 - momentum).add_(var.squeeze(1) * (n / (n - 1) if n > 1 else 1.0), alpha=momentum)
    return centred * torch.rsqrt(var + eps) * w.unsqueeze(1) + b.unsqueeze(1)


def _lp_scale(h: torch.Tensor, p: float) -> torch.Tensor:
    """Per member and channel, the l_p size of the uncentred (K, B, C) activations: (K, C); as `LpNorm.scale`."""
    if math.isinf(p):
        return h.abs().amax(1)
    if p == 1:
        return h.abs().mean(1)
    if p == 2:
        return h.square().mean(1).sqrt()
    return h.abs().pow(p).mean(1).pow(1 / p)


def _lp_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rs: torch.Tensor,
             p: float, momentum: float, eps: float) -> torch.Tensor:
    """Training-mode l_p normalisation of (K, B, C) per member, in `LpNorm.forward`'s arithmetic."""
    mean, scale = h.mean(1), _lp_scale(h, p)
    with torch.no_grad():
        rm.lerp_(mean.detach(), momentum)
        rs.lerp_(scale.detach(), momentum)
    g = w / (scale + eps)
    return torch.addcmul((b - mean * g).unsqueeze(1), h, g.unsqueeze(1))


class StackedDLN:
    """The training step's forward pass and loss for a pack of DLN members, from the net's layer plan.

    `template`: the DLN (any device, meta included; only its structure and options are read);
    `lf`: the unpacked loss (`train.loss_fn`); the noisy norms draw nothing here: their (s, m) come in
    `noise`, in the order of `noisy` (the noisy norms' module names in call order).
    """

    def __init__(self, template: nn.Module, noisy: list[str], lf, classification: bool):
        self.lf, self.classification = lf, classification
        self.plan: list[tuple[str, str, nn.Module]] = []  # (kind, state-dict prefix, module), in call order
        for name, m in template.named_modules():
            if isinstance(m, nn.Linear):
                self.plan.append(("linear", name, m))
            elif isinstance(m, BatchNorm):  # noisy BatchNorm: BatchNorm, then the given noise
                self.plan.append(("noisy" if name in noisy else "batch", name, m))
            elif isinstance(m, LpNorm):
                self.plan.append(("lp", name, m))
        self.noisy = noisy

    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                noise: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(K, B, D) inputs -> (K, B, out) outputs, updating the stacked running statistics."""
        given = dict(zip(self.noisy, noise))
        h = x
        for kind, name, m in self.plan:
            if kind == "linear":
                h = _linear(h, params[f"{name}.weight"], params.get(f"{name}.bias"))
            elif kind == "lp":
                h = _lp_norm(h, params[f"{name}.weight"], params[f"{name}.bias"], buffers[f"{name}.running_mean"],
                             buffers[f"{name}.running_scale"], m.p, m.momentum, m.eps)
            else:
                h = _batch_norm(h, params[f"{name}.weight"], params[f"{name}.bias"], buffers[f"{name}.running_mean"],
                                buffers[f"{name}.running_var"], buffers[f"{name}.num_batches_tracked"], m.momentum, m.eps)
                if kind == "noisy":
                    s, mm = given[name]
                    h = s * h + mm
        return h

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, noise: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's training loss and accuracy on its batch: (K,), (K,) (accuracy 0 for regression)."""
        out = self.forward(params, buffers, x, noise)
        k, b = out.shape[:2]
        if self.classification:
            ce = F.cross_entropy(out.reshape(k * b, -1), y.reshape(k * b), reduction="none").view(k, b).mean(1)
            return ce, (out.argmax(2) == y).float().mean(1)
        return self.lf.scaled((out - y).square().sum((1, 2)), b), out.new_zeros(k)
