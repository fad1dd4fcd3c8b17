"""The curvature probe against independent references, on the sweeps' own models: docs/curvature.md's table.

    python bench/curvature_reference.py [--steps 0 100] [--out curvature_reference.json]

At each point (model, norm, step: the cell trained that many steps by the real training code, then
its next batch) it reports, for the same weights and batch:
- bnsweep: the shipped probe (float32, default options): lambda_max, lambda_min, their error bounds,
  Hessian-vector products and seconds;
- power iteration as bnsweep computed it before (definition 1: 20 products, stop at a change below 1e-3);
- dense: the float64 Hessian (`torch.autograd.functional.hessian`) and `torch.linalg.eigvalsh`, training
  mode (models of at most DENSE_MAX parameters);
- Lanczos: `scipy.sparse.linalg.eigsh` (which='LA' and 'SA', tol 0: machine precision) on float64 products;
- PyHessian 0.1 (`hessian(...).eigenvalues()`, its defaults: power iteration, 100 products, tol 1e-3) as
  shipped, which calls `model.eval()` (running statistics), and with that call made a no-op (training mode).
  PyHessian is GPL-3.0 and no dependency of bnsweep: `pip install --no-deps pyhessian==0.1` to fill its
  columns; without it they are left empty.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call

from bnsweep.data import load_data
from bnsweep.measure.curvature import Curvature, CurvatureOptions
from bnsweep.measure.probe import StepContext
from bnsweep.spec import CellConfig
from bnsweep.train import cast_data, loss_fn, new_state, next_batch, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_overhead import fake_cifar10  # noqa: E402

DENSE_MAX = 6000  # parameters: a dense float64 Hessian of 6000^2 is 288 MB and 6000 products
BASE = {"sweep": "bench", "seed": 0, "norm_options": {}, "device": "cpu", "resources": {}}
MODELS = {  # the sweeps' architectures, at sizes a CPU probes densely; vgg16 narrow on CIFAR-shaped noise
    "dln 25x10": {"arch": "dln", "lr": 1e-6, "dataset": {"name": "gaussian_regression"},
                  "model": {"depth": 25, "width": 10, "bias": False}, "train": {"steps": 1000, "batch_size": 1000}},
    "vgg_mini 1/16": {"arch": "vgg_mini", "lr": 0.05, "dataset": {"name": "digits"},
                      "model": {"width": 1 / 16}, "train": {"steps": 1000, "batch_size": 64}},
    "vgg16 1/32": {"arch": "vgg16", "lr": 0.1, "dataset": {"name": "cifar10", "root": "ROOT"},
                   "model": {"width": 1 / 32}, "train": {"steps": 1000, "batch_size": 32}},
}


def at_step(cell: CellConfig, step: int):
    """(model, optimizer, x, y, loss function, loss) of `cell` at `step`: trained by train_step, gradient of its next batch."""
    data = cast_data(load_data(cell.dataset, "cpu"), None)
    st = new_state(cell, data, torch.device("cpu"))
    lf, cls = loss_fn(data.info), data.info.task == "classification"
    st.model.train()
    for s in range(step):
        train_step(st, s, *next_batch(st, data, None), lf, cls)
    x, y = next_batch(st, data, None)
    loss = lf(st.model(x), y)
    st.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return st.model, st.optimizer, x, y, lf, loss


def hvp_f64(model, x, y, lf, train: bool = True):
    """(matvec on float64 numpy vectors, n, flat weights, loss of flat weights) of a float64 copy of `model`."""
    m = copy.deepcopy(model).double().train(train)
    names, ps = zip(*[(n, p.detach()) for n, p in m.named_parameters()])
    sizes = [p.numel() for p in ps]
    x64, y64 = x.double(), (y.double() if y.is_floating_point() else y)

    def loss_of(flat):
        params = dict(zip(names, [t.view_as(p) for t, p in zip(flat.split(sizes), ps)]))
        buffers = {n: b.clone() for n, b in m.named_buffers()}
        return lf(functional_call(m, {**params, **buffers}, (x64,)), y64)

    flat = torch.cat([p.reshape(-1) for p in ps]).requires_grad_(True)
    g = torch.autograd.grad(loss_of(flat), flat, create_graph=True)[0]

    def matvec(v):
        return torch.autograd.grad(g, flat, torch.from_numpy(np.ascontiguousarray(v).reshape(-1)), retain_graph=True)[0].numpy()

    return matvec, flat.numel(), flat.detach(), loss_of


def power_iteration(matvec, n, iterations=20, tol=1e-3, seed=0):
    """bnsweep's definition 1: power iteration from a random start; the eigenvalue of largest magnitude."""
    v = np.random.default_rng(seed).standard_normal(n)
    v /= np.linalg.norm(v)
    lam = math.nan
    for _ in range(iterations):
        hv = matvec(v)
        new = float(v @ hv)
        done = lam == lam and abs(new - lam) < tol * abs(new)
        lam, v = new, hv / np.linalg.norm(hv)
        if done:
            break
    return lam


def pyhessian(model, x, y, lf, train: bool):
    """PyHessian 0.1's top eigenvalue (its defaults), as shipped (eval mode) or with model.eval() a no-op; None if absent."""
    try:
        from pyhessian import hessian
    except ImportError:
        return None
    m = copy.deepcopy(model)
    if train:
        m.eval = lambda: m  # PyHessian calls model.eval() on the model it is given
    torch.manual_seed(0)  # its start vector: torch.randint on the global generator
    return float(hessian(m, lf, data=(x, y), cuda=False).eigenvalues()[0][0])


def point(name: str, spec: dict, step: int) -> dict:
    cell = CellConfig.model_validate({**BASE, **spec, "norm": spec["norm"]})
    model, opt, x, y, lf, loss = at_step(cell, step)
    probe = Curvature(CurvatureOptions(steps=[step]), model, cell.seed)
    t0 = time.perf_counter()
    row = probe.after_backward(StepContext(step, model, opt, x, y, lf, loss.item()))[0]
    seconds = time.perf_counter() - t0
    matvec, n, _, loss_of = hvp_f64(model, x, y, lf)
    out = {"model": name, "norm": spec["norm"], "step": step, "parameters": n, **row, "seconds": seconds,
           "power_iteration": power_iteration(matvec, n)}
    op = LinearOperator((n, n), matvec=matvec, dtype="float64")
    v0 = np.random.default_rng(1).standard_normal(n)
    out["lanczos_max"] = float(eigsh(op, k=1, which="LA", v0=v0, tol=0, ncv=min(40, n - 1))[0][0])
    out["lanczos_min"] = float(eigsh(op, k=1, which="SA", v0=v0, tol=0, ncv=min(40, n - 1))[0][0])
    if n <= DENSE_MAX:
        _, _, flat, _ = hvp_f64(model, x, y, lf)
        h = torch.autograd.functional.hessian(loss_of, flat)
        w = torch.linalg.eigvalsh((h + h.T) / 2)
        out["dense_max"], out["dense_min"] = w[-1].item(), w[0].item()
        out["dense_largest_magnitude"] = w[w.abs().argmax()].item()
    out["pyhessian_eval"], out["pyhessian_train"] = pyhessian(model, x, y, lf, False), pyhessian(model, x, y, lf, True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 100])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", default="curvature_reference.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        fake_cifar10(Path(root), n=1000)
        for name in args.models:
            for norm in ("none", "batch"):
                for step in args.steps:
                    spec = json.loads(json.dumps(MODELS[name]).replace('"ROOT"', json.dumps(root)))
                    r = point(name, {**spec, "norm": norm}, step)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
