"""Tables with known answers, written in the real layout through bnsweep.records."""

from __future__ import annotations

from types import SimpleNamespace

from bnsweep.records import Store, table

SWEEP = "syn"
STEPS = 100  # configured steps of every synthetic cell; evaluations at 0, 50, 100


def cell(arch: str, norm: str, lr: float, seed: int) -> SimpleNamespace:
    return SimpleNamespace(cell_id=f"{arch}-{norm}-{lr:g}-{seed}", sweep=SWEEP, arch=arch, norm=norm, lr=lr, seed=seed)


def write_cell(store: Store, c, status: str, final: float | None, mid: float | None = None, classification: bool = True,
               steps: int = STEPS, config_json: str | None = None) -> None:
    """A finished cell whose train metric is `final` at its last evaluation (`mid` at step 50).

    Classification: train accuracy 0.1, mid, final (test: 0.01 lower), loss 1. Regression: train and test loss 1e4, mid, final.
    """
    if final is not None:
        if classification:
            seq = [0.1, final - 0.2 if mid is None else mid, final]
            metric = {"accuracy": seq + [x - 0.01 for x in seq], "loss": [1.0] * 6}
        else:
            seq = [1e4, final * 3 if mid is None else mid, final]
            metric = {"accuracy": [None] * 6, "loss": seq * 2}
        store.write("evals", c, table("evals", c, {"step": [0, 50, 100] * 2, "split": ["train"] * 3 + ["test"] * 3, **metric}))
    done = steps if status == "done" else 7
    store.write("cells", c, table("cells", c, {"status": [status], "steps": [steps], "steps_done": [done],
                                               "dataset": ["synthetic"], "wall_s": [1.5], "config_json": [config_json]}))


# (arch, norm, lr) -> final train metric per seed; None = diverged. "vgg" ranks by accuracy, "dln" by loss.
FINALS = {
    ("vgg", "batch", 0.001): [0.60, 0.62],
    ("vgg", "batch", 0.01): [0.95, 0.97],
    ("vgg", "batch", 0.1): [0.99, 0.97],  # best: 0.98, CI [0.97, 0.99]
    ("vgg", "batch", 0.5): [0.97, 0.975, 0.98],  # three seeds, with measurements (write_measurements)
    ("vgg", "batch", 1.0): [0.97, 0.965],  # within 0.02 of the best
    ("vgg", "batch", 10.0): [None, 0.98],  # one seed diverged: not eligible however good the other
    ("vgg", "none", 0.001): [0.90, 0.92],
    ("vgg", "none", 0.01): [0.95, 0.93],  # best: 0.94
    ("vgg", "none", 0.1): [0.93, 0.935],
    ("vgg", "none", 0.5): [0.5, 0.5, 0.5],
    ("vgg", "none", 1.0): [0.10, 0.10],
    ("vgg", "none", 10.0): [None, None],
    ("vgg", "noisy_batch", 0.1): [0.975, 0.985],
    ("vgg", "l1", 0.1): [0.97],  # one seed only: no verdict from it
    ("dln", "batch", 1e-6): [90.0, 100.0],
    ("dln", "batch", 1e-5): [50.0, 60.0],  # best: 55
    ("dln", "batch", 1e-4): [300.0, 320.0],  # more than 2x the best
    ("dln", "none", 1e-6): [200.0, 210.0],
    ("dln", "none", 1e-5): [None, None],
    ("dln", "none", 1e-4): [None, None],
}
MIDS = {("vgg", "batch", 0.1): [0.95, 0.5]}  # steps to target 0.891: 50 and 100


def write_runs(output: str) -> Store:
    store = Store(output)
    for (arch, norm, lr), finals in FINALS.items():
        for seed, final in enumerate(finals):
            c = cell(arch, norm, lr, seed)
            mid = MIDS.get((arch, norm, lr), [None] * len(finals))[seed]
            if final is None:  # its last evaluation looks excellent, but a diverged cell has no final metrics
                write_cell(store, c, "diverged", 0.999 if arch == "vgg" else 1.0, classification=arch == "vgg")
            else:
                write_cell(store, c, "done", final, mid, classification=arch == "vgg")
    write_cell(store, cell("vgg", "none", 0.1, 2), "failed", None)  # not a result: counted as failed, not as a seed
    return store


def write_measurements(store: Store) -> None:
    """landscape, ics and curvature for vgg lr 0.5, none and batch, seeds 0-2; probes at steps 0, 10, 50, 90.

    batch: beta_eff (4 + s, 2, 2, 2), loss over eta (1, 2, 4) -> band 4, grad_diff_l2 over eta (0.1, 0.2, 0.3 + s)
    none:  beta_eff (10 (4 + s), 20, 20, 20), loss over eta (1, 10, 100) -> band 100, grad_diff_l2 (1, 2, 10 (0.3 + s))
    and one probe per step-50 row set whose loss is inf (dropped from the bands).
    ics layer 2: l2 = 5 + s (batch), 1 + s (none); cosine 0.1 (batch), 0.9 (none). lambda_max = 10 * (s + 1) (batch), 100 (none)
    at steps 0 and 50; batch seed 0 also has an unconverged probe (NaN) at step 10 and lambda_max = -5 at step 90.
    """
    probes = [0, 10, 50, 90]
    for norm, k in (("batch", 1.0), ("none", 10.0)):
        for s in range(3):
            c = cell("vgg", norm, 0.5, s)
            etas, losses = [0.05, 0.1, 0.2], [1.0, 2.0, 4.0] if norm == "batch" else [1.0, 10.0, 100.0]
            rows = {"step": [], "eta": [], "loss": [], "grad_diff_l2": [], "beta_eff": [], "smoothness": []}
            for step in probes:
                beta = k * (4 + s if step == 0 else 2)
                for i, eta in enumerate(etas):
                    diff = k * ([0.1, 0.2, 0.3 + s][i])
                    rows["step"].append(step), rows["eta"].append(eta), rows["loss"].append(losses[i])
                    rows["grad_diff_l2"].append(diff), rows["beta_eff"].append(beta), rows["smoothness"].append(diff / eta)
            rows["step"].append(50), rows["eta"].append(0.4), rows["loss"].append(float("inf"))  # a probe that blew up
            rows["grad_diff_l2"].append(float("nan")), rows["beta_eff"].append(k * 2), rows["smoothness"].append(float("nan"))
            store.write("landscape", c, table("landscape", c, rows))
            store.write("ics", c, table("ics", c, {"step": probes, "layer": [2] * 4, "l2": [(5 + s if norm == "batch" else 1 + s)] * 4,
                                                   "cosine": [0.1 if norm == "batch" else 0.9] * 4}))
            lam = 10.0 * (s + 1) if norm == "batch" else 100.0
            curv = {"step": [0, 50], "lambda_max": [lam] * 2, "lambda_max_converged": [True] * 2}
            if norm == "batch" and s == 0:  # a probe out of budget at step 10, every eigenvalue negative at step 90
                curv = {"step": [0, 10, 50, 90], "lambda_max": [lam, float("nan"), lam, -5.0],
                        "lambda_max_converged": [True, False, True, True]}
            store.write("curvature", c, table("curvature", c, curv))


def landscape_draws(
    rng, draws: int, seeds: int, probes: int = 40, lr: float = 0.5, tail: float = 0.2, spike: tuple[int, int, float] | None = None
) -> dict:
    """In-memory `cells` and `landscape` tables of `draws` independent vgg sweeps (none and batch, `seeds` each).

    beta_eff per probed step: log10 = log10(2/lr) + a seed offset N(0, 0.15) + step noise N(0, 0.1);
    `none` also exceeds the edge of stability in a share `tail` of its steps, by U(0.5, 1.5) decades
    (the upper tail is where the paper's effect lives; tail=0: no effect). The loss band and gradient
    change are 1. `spike` = (draw, seed, factor): that batch cell's beta_eff at one probed step is
    multiplied by `factor`. Cells are named d<draw>-<norm>-<seed>.
    """
    import numpy as np
    import polars as pl

    cells, land = [], {"cell_id": [], "step": [], "beta_eff": []}
    for d in range(draws):
        for norm in ("batch", "none"):
            for s in range(seeds):
                cid = f"d{d:05d}-{norm}-{s}"
                cells.append({"cell_id": cid, "arch": "vgg", "norm": norm, "lr": lr, "seed": s, "status": "done", "steps": probes})
                logb = np.log10(2 / lr) + rng.normal(0, 0.15) + rng.normal(0, 0.1, probes)
                if norm == "none":
                    logb += (rng.random(probes) < tail) * rng.uniform(0.5, 1.5, probes)
                beta = 10**logb
                if spike and spike[:2] == (d, s) and norm == "batch":
                    beta[probes // 2] *= spike[2]
                land["cell_id"] += [cid] * probes
                land["step"] += list(range(probes))
                land["beta_eff"] += beta.tolist()
    n = len(land["step"])
    landscape = pl.LazyFrame({**land, "loss": [1.0] * n, "grad_diff_l2": [1.0] * n})
    return {"cells": pl.LazyFrame(cells), "landscape": landscape}
