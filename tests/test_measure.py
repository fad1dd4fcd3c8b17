"""Each measurement against an independent brute-force computation on a tiny float64 network.

The brute force builds the moved weights by hand on a deep copy of the network and recomputes
gradients with plain autograd; noisy_batch's noise is replayed by resetting its generator.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnsweep.data import DatasetInfo
from bnsweep.measure import MEASURES, MeasureSpec
from bnsweep.measure.activations import QUANTILES
from bnsweep.measure.probe import generators
from bnsweep.measure.schedule import Schedule
from bnsweep.measure.session import Measurements
from bnsweep.models import DlnOptions, VggOptions, build_model, weight_layers
from bnsweep.norms import NORMS, norm_layer

GAUSS = DatasetInfo("gaussian_regression", (5,), 5, "regression", 64)
DIGITS = DatasetInfo("digits", (1, 8, 8), 10, "classification", 1438)
LR = 0.05
sse = lambda out, y: (out - y).pow(2).sum()


def tiny(norm, arch="dln", seed=0):
    """A float64 DLN of 4 layers 5x5 (or a 4-to-16-channel VGG on 8x8), its batch and loss."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if arch == "dln":
        model = build_model("dln", DlnOptions(depth=4, width=5, bias=True), norm_layer(norm, NORMS[norm].Options(), g), GAUSS)
        x, y, lf = torch.randn(16, 5), torch.randn(16, 5), sse
    else:
        model = build_model("vgg_mini", VggOptions(width=1 / 16), norm_layer(norm, NORMS[norm].Options(), g), DIGITS)
        x, y, lf = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)), nn.functional.cross_entropy
    model = model.double()
    for p in model.parameters():  # non-trivial affines and biases
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    return model, x.double(), y.double() if arch == "dln" else y, lf


def measured_step(model, x, y, lf, spec: dict, optimizer=None):
    """One training step as train.py takes it, with `spec`'s measurements at step 0; returns rows and the pre-step noise state."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=LR)
    probes = Measurements(MeasureSpec.model_validate({k: {"steps": [0], **v} for k, v in spec.items()}), model, 10, seed=0)
    rng = [(g, g.get_state()) for g in generators(model)]
    probes.before_forward(0)
    loss = lf(model(x), y)
    opt.zero_grad()
    loss.backward()
    probes.after_backward(0, opt, x, y, lf, loss)
    return probes.rows, rng, opt


def replay(rng):
    for g, s in rng:
        g.set_state(s)


def grads(model, x, y, lf, rng, params=None):
    """Plain autograd: (loss, {name: dL/dp}) with the step's noise replayed."""
    replay(rng)
    model.zero_grad()
    loss = lf(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if params is None or n in params}


def close(a, b, rel=1e-6):
    assert a == pytest.approx(b, rel=rel, abs=1e-12), (a, b)


@pytest.mark.parametrize("arch", ["dln", "vgg_mini"])
@pytest.mark.parametrize("norm", NORMS)
def test_ics_matches_brute_force(norm, arch):
    model, x, y, lf = tiny(norm, arch)
    layers = [2, 4]
    ref = copy.deepcopy(model)  # before the step: measured_step leaves `model` at w with .grad set
    rows, rng, _ = measured_step(model, x, y, lf, {"ics": {"layers": layers}})
    _, g = grads(copy.deepcopy(ref), x, y, lf, rng)
    for row, k in zip(rows["ics"], layers):
        moved = copy.deepcopy(ref)
        target = weight_layers(moved)[k - 1]
        with torch.no_grad():  # by hand: every parameter of layers 1..k-1 and their norms takes its SGD step
            for (n, p) in moved.named_parameters():
                if p is target.weight:
                    break
                p -= LR * g[n]
        name = next(n for n, p in moved.named_parameters() if p is target.weight)
        _, g2 = grads(moved, x, y, lf, rng)
        G, Gp = g[name], g2[name]
        close(row["l2"], (G - Gp).norm().item())
        close(row["cosine"], (G * Gp).sum().item() / (G.norm() * Gp.norm()).item())
        close(row["grad_norm"], G.norm().item())
        close(row["grad_prime_norm"], Gp.norm().item())
        assert row["l2"] > 0  # the earlier layers did move


def test_ics_is_zero_when_earlier_layers_do_not_move():
    model, x, y, lf = tiny("noisy_batch")
    k = 3
    target = weight_layers(model)[k - 1].weight
    names = [n for n, _ in model.named_parameters()]
    cut = names.index(next(n for n, p in model.named_parameters() if p is target))
    ps = list(model.parameters())
    opt = torch.optim.SGD([{"params": ps[:cut], "lr": 0.0}, {"params": ps[cut:], "lr": LR}], lr=LR)
    rows, _, _ = measured_step(model, x, y, lf, {"ics": {"layers": [k]}}, optimizer=opt)
    assert rows["ics"][0]["l2"] == 0.0 and rows["ics"][0]["cosine"] == pytest.approx(1.0, abs=1e-15)


def test_ics_uses_the_optimizers_actual_step():
    """With momentum and weight decay the moved layers follow SGD's real update, not -lr * g."""
    model, x, y, lf = tiny("batch")
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.1)
    rows, rng, _ = measured_step(model, x, y, lf, {"ics": {"layers": [3]}}, optimizer=opt)
    _, g = grads(copy.deepcopy(ref), x, y, lf, rng)
    moved = copy.deepcopy(ref)
    target = weight_layers(moved)[2].weight
    with torch.no_grad():
        for n, p in moved.named_parameters():
            if p is target:
                break
            p -= LR * (g[n] + 0.1 * p)  # first step: the momentum buffer is the decayed gradient itself
    name = next(n for n, p in moved.named_parameters() if p is target)
    _, g2 = grads(moved, x, y, lf, rng)
    close(rows["ics"][0]["l2"], (g[name] - g2[name]).norm().item())


@pytest.mark.parametrize("arch", ["dln", "vgg_mini"])
@pytest.mark.parametrize("norm", NORMS)
def test_landscape_matches_brute_force(norm, arch):
    model, x, y, lf = tiny(norm, arch)
    ref = copy.deepcopy(model)
    rows, rng, _ = measured_step(model, x, y, lf, {"landscape": {"eta": {"from": 0.5, "to": 4, "points": 4}}})
    loss_w, g = grads(copy.deepcopy(ref), x, y, lf, rng)
    g_norm = math.sqrt(sum(v.pow(2).sum().item() for v in g.values()))
    etas = np.geomspace(0.5, 4, 4) * LR
    smooth = []
    for row, eta in zip(rows["landscape"], etas):
        moved = copy.deepcopy(ref)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p -= eta * g[n]
        loss_eta, g_eta = grads(moved, x, y, lf, rng)
        diff = math.sqrt(sum((g[n] - g_eta[n]).pow(2).sum().item() for n in g))
        close(row["eta"], eta)
        close(row["loss"], loss_eta)
        close(row["loss_at_w"], loss_w)
        close(row["grad_norm"], g_norm)
        close(row["grad_diff_l2"], diff)
        smooth.append(diff / (eta * g_norm))
    for row in rows["landscape"]:
        close(row["beta_eff"], max(smooth))


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T H w; its input is ignored."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return self.w


def quadratic(dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    h = a @ a.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    model = Quadratic(torch.randn(dim, generator=g, dtype=torch.float64))
    return model, h, (lambda out, y: 0.5 * out @ h @ out)


def test_landscape_is_exact_on_a_quadratic():
    model, h, lf = quadratic()
    g = h @ model.w.detach()
    rows, _, _ = measured_step(model, torch.zeros(1), torch.zeros(1), lf, {"landscape": {"eta": {"from": 0.01, "to": 10, "points": 6}}})
    expected = ((h @ g).norm() / g.norm()).item()
    for row in rows["landscape"]:
        close(row["smoothness"], expected, rel=1e-10)
        close(row["beta_eff"], expected, rel=1e-10)


def test_curvature_of_a_quadratic_is_its_top_eigenvalue():
    model, h, lf = quadratic()
    rows, _, _ = measured_step(model, torch.zeros(1), torch.zeros(1), lf, {"curvature": {"tol": 1e-10}})
    close(rows["curvature"][0]["lambda_max"], torch.linalg.eigvalsh(h).max().item())
    close(rows["curvature"][0]["lambda_min"], torch.linalg.eigvalsh(h).min().item())


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["none", "batch", "noisy_batch", "l2"])
def test_curvature_of_a_small_net_matches_the_full_hessian(norm):
    model, x, y, lf = tiny(norm)
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    sizes = [math.prod(s) for s in shapes]
    ref = copy.deepcopy(model)
    rows, rng, _ = measured_step(model, x, y, lf, {"curvature": {"tol": 1e-10}})

    def loss_of(flat):  # the loss as a function of all parameters, flattened
        ps = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        replay(rng)
        buffers = {n: b.clone() for n, b in ref.named_buffers()}
        return lf(torch.func.functional_call(ref, {**ps, **buffers}, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    hess = torch.autograd.functional.hessian(loss_of, flat)
    eig = torch.linalg.eigvalsh((hess + hess.T) / 2)
    close(rows["curvature"][0]["lambda_max"], eig.max().item(), rel=1e-6)  # the largest algebraic eigenvalue
    close(rows["curvature"][0]["lambda_min"], eig.min().item(), rel=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_activations_match_brute_force(norm):
    model, x, y, lf = tiny(norm)
    ref = copy.deepcopy(model)
    rows, rng, _ = measured_step(model, x, y, lf, {"activations": {"layers": [1, 3, 4]}, "landscape": {}, "ics": {"layers": [2]}})
    assert [r["layer"] for r in rows["activations"]] == [1, 3, 4]  # one row per layer: the probes' passes are not counted
    replay(rng)
    h, outputs = x, []
    for m in ref.body:  # by hand, module by module: [Linear, norm] x 3, Linear
        h = m(h)
        if isinstance(m, nn.Linear) or not isinstance(m, nn.Identity):
            if isinstance(m, nn.Linear):
                outputs.append(h)
            else:
                outputs[-1] = h  # the norm layer's output replaces its weight layer's
    for row in rows["activations"]:
        v = outputs[row["layer"] - 1][:, row["unit"]].detach().numpy()
        close(row["mean"], v.mean())
        close(row["var"], v.var())
        for q, col in zip(QUANTILES, [c for c in row if c.startswith("q")]):
            close(row[col], np.quantile(v, q))
        assert row["min"] == v.min() and row["max"] == v.max() and row["count"] == len(v)


def test_units_are_fixed_by_the_seed():
    a = MEASURES["activations"](MEASURES["activations"].Options(every=1, layers=[1, 2, 3]), tiny("batch")[0], seed=5)
    b = MEASURES["activations"](MEASURES["activations"].Options(every=1, layers=[1, 2, 3]), tiny("batch")[0], seed=5)
    assert [t[2] for t in a.targets] == [t[2] for t in b.targets]


@pytest.mark.parametrize(
    "schedule,total,expected",
    [
        ({"every": 100}, 350, {0, 100, 200, 300, 349}),
        ({"steps": [5, 7, 1000]}, 50, {0, 5, 7, 49}),
        ({"log": {"points": 4}}, 1001, {0, 1, 10, 100, 1000}),
    ],
)
def test_schedules_include_first_and_last_step(schedule, total, expected):
    assert Schedule.model_validate(schedule).resolve(total) == expected


def test_schedule_needs_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        Schedule.model_validate({"every": 3, "steps": [1]})
    with pytest.raises(ValueError, match="exactly one"):
        Schedule.model_validate({})
