"""Many deep linear networks trained at once: bnsweep's DLN cells, batched over a leading model axis.

    losses, diverged = train_batched(cells, steps=10000)   # cells: bnsweep CellConfigs (arch dln)

For the DLN study only (studies/dln_protocol.py): one `train_cell` costs ~30 s of CPU for 10k steps;
here M cells share each step's operations. Cells of one call share depth and width, and either all
have norms none / batch / l2, whose loss depends on the data only through its first and second
moments (the net is then run as an affine map on 10x10 moment matrices, independent of the 1000
samples), or all l1 / linf (run on the samples). Each cell may have its own norm, seed, learning
rate, data, loss, init, biases and last-layer norm (masks select per cell). Weights come from
bnsweep's own `build_model` with the cell's seed and data from bnsweep's `gaussian_regression`
loader, so what is re-implemented is the training step: full-batch SGD (no momentum, no weight
decay) on the training-mode forward pass. `tests/test_dln_batched.py` checks it against
`bnsweep.train.train_cell` in float64 for every norm and every reading option.
"""

from __future__ import annotations

import math

import torch

from bnsweep.data import DATASETS
from bnsweep.models import build_model, norm_layers, weight_layers
from bnsweep.norms import norm_layer
from bnsweep.performance import checks_every
from bnsweep.spec import CellConfig
from bnsweep.train import loss_fn

MOMENT_NORMS = ("none", "batch", "l2")  # norms whose training loss depends on the data only through its moments
SAMPLE_NORMS = ("l1", "linf")  # these need the samples themselves


def _stack(cells: list[CellConfig], dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every parameter a cell of this shape could have, stacked over cells (M, ...): per layer i, the
    weight W_i, bias b_i and norm gamma_i, beta_i, in that order; and a 0/1 mask (M,) per parameter
    for the cells that really have it. Absent ones sit at 0 (bias, beta) or 1 (gamma) and never move."""
    depth = cells[0].model.depth
    params: list[list[torch.Tensor]] = [[] for _ in range(4 * depth)]
    has: list[list[float]] = [[] for _ in range(4 * depth)]
    for c in cells:
        info = DATASETS[c.dataset.name].info(c.dataset)
        torch.manual_seed(c.seed)  # as train_cell: the same seed, the same draws, the same weights
        m = build_model(c.arch, c.model, norm_layer(c.norm, c.norm_options), info).to(dtype)
        ws, ns = weight_layers(m), norm_layers(m)
        for i, w in enumerate(ws):
            n = ns[i] if i < len(ns) else None  # the norm after layer i, if any (norms follow layers in order)
            width = w.weight.shape[0]
            for k, (p, absent) in enumerate(((w.weight, None), (w.bias, torch.zeros(width, dtype=dtype)),
                                             (n.weight if n is not None else None, torch.ones(width, dtype=dtype)),
                                             (n.bias if n is not None else None, torch.zeros(width, dtype=dtype)))):
                params[4 * i + k].append((p if p is not None else absent).detach())
                has[4 * i + k].append(float(p is not None))
    return ([torch.stack(p).requires_grad_() for p in params], [torch.tensor(h, dtype=dtype) for h in has])


def _data(cells: list[CellConfig], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs and targets (M, D, N), and each cell's loss factor (M,), from bnsweep's loader."""
    cache: dict = {}
    xs, ys, cs = [], [], []
    for c in cells:
        if c.dataset not in cache:
            x, y, _, _ = DATASETS[c.dataset.name].load(c.dataset)
            cache[c.dataset] = (x.to(dtype), y.to(dtype))
        x, y = cache[c.dataset]
        xs.append(x)
        ys.append(y)
        cs.append(loss_fn(DATASETS[c.dataset.name].info(c.dataset)).factor(len(y)))
    return torch.stack(xs).transpose(1, 2).contiguous(), torch.stack(ys).transpose(1, 2).contiguous(), torch.tensor(cs, dtype=dtype)


def _moments(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sample moments of (M, D, N) inputs and targets, in float64: all the `none`, `batch` and `l2` nets see."""
    x, y = x.double(), y.double()
    n = x.shape[2]
    mx, my = x.mean(2), y.mean(2)  # (M, D)
    xc = x - mx[:, :, None]
    return {"mx": mx, "my": my, "S": x @ x.transpose(1, 2) / n, "C": xc @ xc.transpose(1, 2) / n,  # (M, D, D)
            "Sxy": x @ y.transpose(1, 2) / n, "syy": y.pow(2).sum((1, 2)) / n, "n": torch.tensor(float(n))}


def _forward_moments(m: dict, params: list[torch.Tensor], normed: list[torch.Tensor], first: torch.Tensor,
                     eps: torch.Tensor) -> torch.Tensor:
    """Sum over samples of ||f(x) - y||^2 per model (M,), with the net kept as an affine map T x + t.

    Every pre-activation is affine in x, so its batch mean, variance and uncentred second moment
    follow from the moments of x: mean = T mx + t, var = diag(T C T'), E h^2 = diag(T S T') + 2 t T mx + t^2.
    normed[i] (M,): whether layer i's output is normalised; first (M,): batch (True) or l2 (False).
    """
    mm, d = m["mx"].shape
    T = torch.eye(d, dtype=m["mx"].dtype).expand(mm, d, d)  # (M, C, D)
    t = torch.zeros(mm, d, dtype=m["mx"].dtype)  # (M, C)
    for i in range(len(normed)):
        w, b, gamma, beta = params[4 * i : 4 * i + 4]
        T, t = torch.bmm(w, T), torch.bmm(w, t[:, :, None])[:, :, 0] + b
        if normed[i].any():
            tm = torch.bmm(T, m["mx"][:, :, None])[:, :, 0]  # T mx, (M, C): h - mean = T (x - mx)
            var = (torch.bmm(T, m["C"]) * T).sum(2)
            ms = (torch.bmm(T, m["S"]) * T).sum(2) + 2 * t * tm + t * t  # uncentred, for l2
            scale = torch.where(first[:, None], (var + eps).sqrt(), ms.sqrt() + eps)
            k = gamma / scale
            on = normed[i][:, None]
            T, t = torch.where(on[:, :, None], k[:, :, None] * T, T), torch.where(on, beta - tm * k, t)
    fit = (torch.bmm(T, m["S"]) * T).sum((1, 2)) + 2 * (t * torch.bmm(T, m["mx"][:, :, None])[:, :, 0]).sum(1) + t.pow(2).sum(1)
    cross = (T * m["Sxy"].transpose(1, 2)).sum((1, 2)) + (t * m["my"]).sum(1)
    return m["n"] * (fit - 2 * cross + m["syy"])


def _forward_samples(x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor], normed: list[torch.Tensor],
                     first: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sum over samples of ||f(x) - y||^2 per model (M,), on the (M, D, N) samples; first: l1 (True) or linf.

    bnsweep's l_p layers in training mode: (h - mean) / (size of the uncentred h + eps) * gamma + beta.
    """
    h = x  # (M, D, N): samples last, so each product is a (C, C) x (C, N) matrix product
    for i in range(len(normed)):
        w, b, gamma, beta = params[4 * i : 4 * i + 4]
        h = torch.bmm(w, h) + b[:, :, None]  # (M, C, N)
        if normed[i].any():
            a = h.abs()
            scale = torch.where(first[:, None, None], a.mean(2, keepdim=True), a.amax(2, keepdim=True)) + eps[:, :, None]
            z = (h - h.mean(2, keepdim=True)) * (gamma[:, :, None] / scale) + beta[:, :, None]
            h = torch.where(normed[i][:, None, None], z, h)
    return (h - y).pow(2).sum((1, 2))


def train_batched(cells: list[CellConfig], steps: int | None = None, dtype: torch.dtype = torch.float32,
                  compile: bool = False) -> tuple[torch.Tensor, list[int | None]]:
    """Train `cells` together; returns the training loss at every step (steps, M) as train_cell records
    it (row t: before update t), NaN after a cell diverged, and each cell's divergence step or None.

    Cells must be full-batch DLNs of one depth and width, with norms all in MOMENT_NORMS (trained on
    the data's moments, in float64 whatever `dtype`: the loss is then a difference of large terms) or
    all in SAMPLE_NORMS (trained on the samples); each may have its own seed, learning rate, data,
    loss, init, biases and last-layer norm. compile: torch.compile the forward pass (~30 s once).
    """
    c0 = cells[0]
    shape = lambda c: (c.arch, c.model.depth, c.model.width, c.train.batch_size >= c.dataset.samples,
                       c.norm in MOMENT_NORMS)
    if any(shape(c) != shape(c0) for c in cells) or c0.arch != "dln" or not shape(c0)[3]:
        raise ValueError("train_batched: cells must be full-batch dln of one depth and width, norms all of "
                         f"{MOMENT_NORMS} or all of {SAMPLE_NORMS}")
    if any(c.train.momentum or c.train.weight_decay for c in cells):
        raise ValueError("train_batched: plain SGD only (momentum 0, weight_decay 0)")
    moments = c0.norm in MOMENT_NORMS
    dtype = torch.float64 if moments else dtype
    steps = steps or c0.train.steps
    m, depth = len(cells), c0.model.depth
    params, has = _stack(cells, dtype)
    # layer i's output is normalised: every layer but the last, or all with norm_last; never for none
    normed = [torch.tensor([c.norm != "none" and (i < depth - 1 or c.model.norm_last) for c in cells]) for i in range(depth)]
    first = torch.tensor([c.norm in ("batch", "l1") for c in cells])
    eps = torch.tensor([getattr(c.norm_options, "eps", 0.0) for c in cells], dtype=dtype)[:, None]
    x, y, factor = _data(cells, dtype)
    fwd = _forward_moments if moments else _forward_samples
    fwd = torch.compile(fwd) if compile else fwd
    inputs = (_moments(x, y),) if moments else (x, y)
    lr = torch.tensor([c.lr for c in cells], dtype=dtype)
    start = [p.detach().clone() for p in params]
    limit = torch.tensor([c.train.divergence_factor for c in cells], dtype=torch.float64)
    losses = torch.full((steps, m), math.nan, dtype=torch.float64)
    diverged: list[int | None] = [None] * m
    live = torch.ones(m, dtype=torch.bool)
    checked = 0
    for step in range(steps):
        loss = fwd(*inputs, params, normed, first, eps) * factor  # (M,)
        # unused (no gradient): the gamma, beta of `none` cells; in moment form, a beta another norm follows
        grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
        with torch.no_grad():
            for p, g, h in zip(params, grads, has):  # plain SGD; parameters a cell lacks stay put
                if g is not None:
                    p.sub_((lr * h).view(-1, *[1] * (p.dim() - 1)) * g)
        losses[step] = loss.detach().to(torch.float64)
        done = step + 1
        if done % checks_every(torch.device("cpu")) == 0 or done == steps:  # train_cell's divergence rule, on the same windows
            window = losses[checked:done]
            if checked == 0:
                limit = limit * window[0].abs()
            bad = ((~torch.isfinite(window)) | (window > limit)) & live
            for j in bad.any(0).nonzero().flatten().tolist():
                diverged[j], live[j] = checked + int(bad[:, j].nonzero()[0, 0]), False
                with torch.no_grad():  # park the cell at its start, lr 0: finite, and no longer trained
                    for p, p0 in zip(params, start):
                        p[j] = p0[j]
                    lr[j] = 0
            checked = done
    for j, d in enumerate(diverged):
        if d is not None:
            losses[d + 1 :, j] = math.nan
    return losses, diverged
