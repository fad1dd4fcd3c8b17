"""Packed DLN cells as one batched network: K deep linear networks in stacked tensors, no vmap.

    step = StackedDLN(template, noisy, lf, classification)
    loss, acc = step(params, buffers, xs, ys, noise)   # (K,) each; one autograd graph over the stack

`params` and `buffers` are `pack.Stack`'s: the DLN's own state-dict names, each tensor with a leading
member dimension (K, ...): weights (K, out, in), norm gamma and beta (K, C), running statistics (K, C).
Activations are (K, C, B), samples last (a (C, C) x (C, B) product per member is some 10x faster on
CPU than (B, C) x (C, C) for the DLN's 10-wide layers); a linear layer is one `torch.bmm` (or
`baddbmm` with biases) over the stack, and every norm variant takes its statistics over the samples, per member and per
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
    """(K, in, B) -> (K, out, B): each member's `F.linear`, as W h (+ b) on samples-last activations."""
    return torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)


class _BatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of (K, C, B), per member and channel over the samples, with BatchNorm's
    closed-form backward (a handful of passes over the activations instead of autograd's dozen)."""

    @staticmethod
    def forward(ctx, h, w, b, eps):
        mean = h.mean(2, keepdim=True)
        centred = h - mean
        var = centred.square().mean(2, keepdim=True)  # two passes: torch.var_mean is some 100x slower on (K, C, B)
        invstd = torch.rsqrt(var + eps)
        scale = invstd * w.unsqueeze(2)
        ctx.save_for_backward(centred, invstd, scale)
        ctx.mark_non_differentiable(mean, var)
        return torch.addcmul(b.unsqueeze(2), centred, scale), mean, var

    @staticmethod
    def backward(ctx, g, _gm, _gv):
        centred, invstd, scale = ctx.saved_tensors
        n = centred.shape[2]
        xhat = centred * invstd
        gb = g.sum(2, keepdim=True)
        gw = (g * xhat).sum(2, keepdim=True)
        gh = torch.addcmul(g - gb / n, xhat, gw / -n) * scale
        return gh, gw.squeeze(2), gb.squeeze(2), None


def _batch_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
                nbt: torch.Tensor, momentum: float, eps: float) -> torch.Tensor:
    """Training-mode BatchNorm of (K, C, B) per member: batch mean and biased variance over B; running
    mean and unbiased variance updated with `momentum`, as `F.batch_norm` does."""
    out, mean, var = _BatchNorm.apply(h, w, b, eps)
    with torch.no_grad():
        n = h.shape[2]
        nbt.add_(1)
        rm.mul_(1 - momentum).add_(mean.squeeze(2), alpha=momentum)
        rv.mul_(1 - momentum).add_(var.squeeze(2) * (n / (n - 1) if n > 1 else 1.0), alpha=momentum)
    return out


def _lp_scale(h: torch.Tensor, p: float) -> torch.Tensor:
    """Per member and channel, the l_p size of the uncentred (K, C, B) activations: (K, C); as `LpNorm.scale`."""
    if math.isinf(p):
        return h.abs().amax(2)
    if p == 1:
        return h.abs().mean(2)
    if p == 2:
        return h.square().mean(2).sqrt()
    return h.abs().pow(p).mean(2).pow(1 / p)


class _LpNorm(torch.autograd.Function):
    """Training-mode l_p normalisation of (K, C, B), per member and channel over the samples, in `LpNorm.forward`'s
    arithmetic (out = h g + (b - mean g), g = w / (scale + eps)), with its closed-form backward:
    d out / d h = g (G - sum G / n) + d scale / d h * (-g sum G (h - mean) / (scale + eps))."""

    @staticmethod
    def forward(ctx, h, w, b, p, eps):
        mean, scale = h.mean(2), _lp_scale(h, p)
        g = w / (scale + eps)
        ctx.save_for_backward(h, mean, scale, g)
        ctx.p, ctx.eps = p, eps
        ctx.mark_non_differentiable(mean, scale)
        # h g + (b - mean g), as two passes: addcmul with a broadcast first argument was some 3x slower on (K, C, B)
        return (h * g.unsqueeze(2)).add_((b - mean * g).unsqueeze(2)), mean, scale

    @staticmethod
    def backward(ctx, grad, _gm, _gs):
        h, mean, scale, g = ctx.saved_tensors
        p, n = ctx.p, h.shape[2]
        gb = grad.sum(2)
        gg = torch.linalg.vecdot(grad, h) - mean * gb  # sum over the samples of grad (h - mean)
        gw = gg / (scale + ctx.eps)
        gs = (-gg * g / (scale + ctx.eps) / n).unsqueeze(2)  # d loss / d scale, over n
        if p == 2:  # d scale / d h = h / scale: the division goes into the per-channel factor
            gs, ds = gs / scale.unsqueeze(2), h
        elif math.isinf(p):  # amax: shared among the samples that reach it, as autograd shares it
            top = h.abs() == scale.unsqueeze(2)
            ds = h.sign() * top / top.sum(2, keepdim=True) * n
        elif p == 1:
            ds = h.sign()
        else:
            ds = h.abs().pow(p - 1) * h.sign() * scale.pow(1 - p).unsqueeze(2)
        # g (grad - gb / n) + ds gs, with in-place passes (the out-of-place broadcast addcmul was some 3x slower)
        gh = (grad * g.unsqueeze(2)).sub_((gb / n * g).unsqueeze(2)).addcmul_(ds, gs)
        return gh, gw, gb, None, None


def _lp_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rs: torch.Tensor,
             p: float, momentum: float, eps: float) -> torch.Tensor:
    """Training-mode l_p normalisation of (K, C, B) per member, in `LpNorm.forward`'s arithmetic."""
    out, mean, scale = _LpNorm.apply(h, w, b, p, eps)
    with torch.no_grad():
        rm.lerp_(mean, momentum)
        rs.lerp_(scale, momentum)
    return out


def norm_kind(name: str, m: nn.Module, noisy: list[str]) -> str | None:
    """A stacked network's step for norm module `m`: "batch", "noisy" (BatchNorm, then the given noise) or "lp";
    None for any other module."""
    if isinstance(m, BatchNorm):
        return "noisy" if name in noisy else "batch"
    return "lp" if isinstance(m, LpNorm) else None


MOMENT_NORMS = ("none", "batch", "l2")  # norms whose full-batch training loss depends on the data only through its moments


def moments(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sample moments of (N, D) inputs and (N, O) targets in float64: all a full-batch none, batch or l2 net sees."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    return {"mx": mx, "my": my, "S": x.T @ x / n, "C": xc.T @ xc / n, "Sxy": x.T @ y / n,
            "syy": y.square().sum() / n, "n": n}


class StackedDLN:
    """The training step's forward pass and loss for a pack of DLN members, from the net's layer plan.

    `template`: the DLN (any device, meta included; only its structure and options are read);
    `lf`: the unpacked loss (`train.loss_fn`); the noisy norms draw nothing here: their (s, m) come in
    `noise`, in the order of `noisy` (the noisy norms' module names in call order). `data_moments`
    (`moments(x_train, y_train)`), given for full-batch cells with a norm in MOMENT_NORMS, runs each
    member as the affine map T x + t it is: every pre-activation's batch mean, variance and second
    moment follow from the data's moments, so a step costs O(d^3) per layer whatever the batch size
    (in float64: the loss is then a difference of large terms; weights and their updates stay in the
    members' dtype).
    """

    def __init__(self, template: nn.Module, noisy: list[str], lf, classification: bool,
                 data_moments: dict[str, torch.Tensor] | None = None):
        self.lf, self.classification, self.m = lf, classification, data_moments
        self.plan: list[tuple[str, str, nn.Module]] = []  # (kind, state-dict prefix, module), in call order
        for name, m in template.named_modules():
            kind = "linear" if isinstance(m, nn.Linear) else norm_kind(name, m, noisy)
            if kind is not None:
                self.plan.append((kind, name, m))
        if data_moments is not None and any(k == "noisy" or (k == "lp" and m.p != 2) for k, _, m in self.plan):
            raise ValueError(f"the moment form holds for norms {MOMENT_NORMS} only")
        self.noisy = noisy

    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                noise: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(K, B, D) inputs -> (K, out, B) outputs (samples last), updating the stacked running statistics."""
        given = dict(zip(self.noisy, noise))
        h = x.transpose(1, 2).contiguous()
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
                    h = torch.addcmul(mm.transpose(1, 2), s.transpose(1, 2), h)
        return h

    def moment_sse(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each member's sum of squared errors over the full batch, (K,) in float64, from the data's moments.

        Member k's net is kept as T x + t (T: (K, C, D), t: (K, C)); a norm's statistics of h = T x + t are
        mean = T mx + t, var = diag(T C T'), E h^2 = diag(T S T') + 2 t T mx + t^2, and normalising
        multiplies T by the per-channel factor g and sets t = beta - g T mx. Running statistics are updated
        from these, as the layers update theirs from the samples.
        """
        m = self.m
        p = {k: v.double() for k, v in params.items()}
        k_, d = next(iter(p.values())).shape[0], m["mx"].shape[0]
        T = torch.eye(d, dtype=torch.float64, device=m["mx"].device).expand(k_, d, d)
        t = None  # zero until a bias or a norm sets it
        n = m["n"]
        for kind, name, mod in self.plan:
            if kind == "linear":
                w, b = p[f"{name}.weight"], p.get(f"{name}.bias")
                T, t = torch.bmm(w, T), (None if t is None else torch.bmm(w, t.unsqueeze(2)).squeeze(2))
                if b is not None:
                    t = b if t is None else t + b
                continue
            tm = T @ m["mx"]  # (K, C): h - mean = T (x - mx)
            mean = tm if t is None else tm + t
            gamma, beta = p[f"{name}.weight"], p[f"{name}.bias"]
            mom = mod.momentum
            if kind == "batch":
                var = ((T @ m["C"]) * T).sum(2)
                g = gamma * torch.rsqrt(var + mod.eps)
                with torch.no_grad():
                    rm, rv = buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"]
                    buffers[f"{name}.num_batches_tracked"].add_(1)
                    rm.mul_(1 - mom).add_(mean.to(rm.dtype), alpha=mom)
                    rv.mul_(1 - mom).add_((var * (n / (n - 1) if n > 1 else 1.0)).to(rv.dtype), alpha=mom)
            else:  # l2: the uncentred second moment's root
                ms = ((T @ m["S"]) * T).sum(2)
                if t is not None:
                    ms = ms + 2 * t * tm + t * t
                scale = ms.sqrt()
                g = gamma / (scale + mod.eps)
                with torch.no_grad():
                    buffers[f"{name}.running_mean"].lerp_(mean.to(buffers[f"{name}.running_mean"].dtype), mom)
                    buffers[f"{name}.running_scale"].lerp_(scale.to(buffers[f"{name}.running_scale"].dtype), mom)
            T, t = g.unsqueeze(2) * T, beta - g * tm
        fit = ((T @ m["S"]) * T).sum((1, 2))
        cross = (T * m["Sxy"].T).sum((1, 2))
        if t is not None:
            fit = fit + 2 * (t * (T @ m["mx"])).sum(1) + t.square().sum(1)
            cross = cross + (t * m["my"]).sum(1)
        return n * (fit - 2 * cross + m["syy"])

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, noise: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's training loss and accuracy on its batch: (K,), (K,) (accuracy 0 for regression)."""
        if self.m is not None:
            dtype = next(iter(params.values())).dtype
            return self.lf.scaled(self.moment_sse(params, buffers), self.m["n"]).to(dtype), x.new_zeros(x.shape[0])
        out = self.forward(params, buffers, x, noise)
        k, b = out.shape[0], out.shape[2]
        if self.classification:
            ce = F.cross_entropy(out, y, reduction="none").mean(1)  # (K, classes, B) logits, (K, B) labels
            return ce, (out.argmax(1) == y).float().mean(1)
        return self.lf.scaled((out - y.transpose(1, 2)).square().sum((1, 2)), b), out.new_zeros(k)
