"""Packed VGG cells as one batched network: K VGGs folded into the channels of one grouped network, no vmap.

    step = StackedVGG(template, noisy, lf, channels_last=False)
    loss, acc = step(params, buffers, xs, ys, noise)   # (K,) each; one autograd graph over the stack

`params` and `buffers` are `pack.Stack`'s: the VGG's own state-dict names, each tensor with a leading
member dimension (K, ...). Activations are (N, K*C, H, W): member k's channels are k*C to k*C + C - 1, so
a conv layer is one grouped convolution (`groups=K`, the members' (K, C_out, C_in, 3, 3) weights as
(K*C_out, C_in, 3, 3)), and every per-channel operation (BatchNorm, l_p, ReLU, max-pool) is the unpacked
one on K times the channels: BatchNorm's and l_p's statistics per channel over (N, H, W) are per member
and channel. The linear head is one `torch.baddbmm` over the stack. Running statistics are views of the
stacked buffers, updated in place by the same kernel (BatchNorm) or layer (l_p's own forward pass) as unpacked.

`channels_last` (the cells' `performance: {channels_last: true}`) keeps the activations in (N, H, W, K*C)
memory order, where oneDNN's grouped convolution, BatchNorm and max-pool are faster on CPU (README, Packed
cells); the values are those of the (N, C, H, W) layout up to the order of a reduction's terms. In float64
one step equals each member's own module in either layout to 1e-10 relative (tests/test_vgg_pack.py), and
a pack equals its unpacked cells over 50 steps (tests/test_pack.py); in float32 they differ by rounding,
which training amplifies (README, Packed cells, gives the measured sizes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from bnsweep.dln_pack import norm_kind
from bnsweep.norms import NoNorm


class StackedVGG:
    """The training step's forward pass and loss for a pack of VGG members, from the net's layer plan.

    `template`: the VGG (meta device is fine; only its structure and options are read), with a linear head
    (`supports`); `noisy`: the noisy norms' module names in call order, whose (s, m) come stacked in `noise`
    (K, N, C, H, W) each; `lf`: the unpacked loss (`train.loss_fn`, cross-entropy).
    """

    def __init__(self, template: nn.Module, noisy: list[str], lf, channels_last: bool = False):
        if not self.supports(template):
            raise ValueError("StackedVGG packs a VGG with a linear head")
        self.lf, self.noisy, self.channels_last = lf, noisy, channels_last
        self.plan: list[tuple[str, str, nn.Module]] = []  # (kind, state-dict prefix, module), in call order
        for name, m in template.features.named_children():
            name = f"features.{name}"
            kind = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.MaxPool2d: "pool"}.get(type(m)) or norm_kind(name, m, noisy)
            if kind is not None:
                self.plan.append((kind, name, m))
            elif not isinstance(m, NoNorm):
                raise ValueError(f"StackedVGG has no rule for {type(m).__name__}")

    @staticmethod
    def supports(template: nn.Module) -> bool:
        return isinstance(getattr(template, "head", None), nn.Linear) and isinstance(getattr(template, "features", None), nn.Sequential)

    def _fold(self, t: torch.Tensor) -> torch.Tensor:
        """(K, N, C, H, W) -> (N, K*C, H, W) in the activations' memory order."""
        k, n, c = t.shape[:3]
        folded = t.transpose(0, 1).reshape(n, k * c, *t.shape[3:])
        return folded.contiguous(memory_format=torch.channels_last) if self.channels_last else folded

    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                noise: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(K, N, C, H, W) inputs -> (K, N, classes) logits, updating the stacked running statistics."""
        given = dict(zip(self.noisy, noise))
        k, n = x.shape[:2]
        h = self._fold(x)
        for kind, name, m in self.plan:
            if kind == "conv":
                w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             m.stride, m.padding, m.dilation, groups=k)
            elif kind == "relu":
                h = F.relu(h)
            elif kind == "pool":
                h = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
            elif kind == "lp":  # the layer's own forward pass on K times the channels; running statistics in place
                h = functional_call(m, {"weight": params[f"{name}.weight"].reshape(-1), "bias": params[f"{name}.bias"].reshape(-1),
                                        "running_mean": buffers[f"{name}.running_mean"].view(-1),
                                        "running_scale": buffers[f"{name}.running_scale"].view(-1)}, (h,))
            else:
                buffers[f"{name}.num_batches_tracked"].add_(1)
                h = F.batch_norm(h, buffers[f"{name}.running_mean"].view(-1), buffers[f"{name}.running_var"].view(-1),
                                 params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1),
                                 True, m.momentum, m.eps)
                if kind == "noisy":
                    s, mm = given[name]
                    h = self._fold(s) * h + self._fold(mm)
        c = h.shape[1] // k
        feats = h.reshape(n, k, c, *h.shape[2:]).flatten(2)  # each member's `flatten(1)` of (N, C, H, W)
        w, b = params["head.weight"], params.get("head.bias")
        feats = feats.transpose(0, 1)  # (K, N, F)
        return torch.bmm(feats, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), feats, w.transpose(1, 2))

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, noise: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's training loss (mean cross-entropy over its batch) and accuracy: (K,), (K,)."""
        out = self.forward(params, buffers, x, noise)
        k, n = out.shape[:2]
        loss = self.lf(out.reshape(k * n, -1), y.reshape(-1), reduction="none").view(k, n).mean(1)
        return loss, (out.argmax(2) == y).float().mean(1)
