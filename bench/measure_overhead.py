"""Cost of the paper's measurement schedule against training alone, side by side in one run.

    python bench/measure_overhead.py [--steps 500] [--repeats 3] [--device cpu|cuda]

Schedule (docs/protocol.md section 4): ICS on 2 layers, an 8-point landscape and activations on
3 layers, every 100 steps. Cells: the paper's DLN (25 x 10x10, full batch 1000) and VGG-16 on
CIFAR-shaped data (3x32x32, batch 128; width 1/8 on CPU, full width on a GPU). Off and on alternate;
the medians give the ratio, and each measurement's share of the extra time comes from its timer.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bnsweep.spec import CellConfig
from bnsweep.train import train_cell

ROOT = Path(__file__).resolve().parents[1]


def fake_cifar10(root: Path, n: int = 5000) -> None:
    """Random images in CIFAR-10's on-disk layout (speed does not depend on the pixels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n // 5, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n // 5).tolist()}, f)


def cells(steps: int, device: str, data_root: str) -> dict[str, tuple[CellConfig, dict]]:
    train = {"steps": steps, "eval_every": 0}
    dln = {"sweep": "bench", "arch": "dln", "norm": "batch", "lr": 1e-6, "seed": 0, "dataset": {"name": "gaussian_regression"},
           "model": {"depth": 25, "width": 10, "bias": False}, "norm_options": {}, "device": device, "resources": {},
           "train": {**train, "batch_size": 1000}}
    vgg = {"sweep": "bench", "arch": "vgg16", "norm": "batch", "lr": 0.1, "seed": 0, "dataset": {"name": "cifar10", "root": data_root},
           "model": {"width": 1.0 if device == "cuda" else 0.125, "head": "linear", "mlp_hidden": 512}, "norm_options": {},
           "device": device, "resources": {}, "train": {**train, "batch_size": 128}}
    return {
        "dln": (
            CellConfig.model_validate(dln),
            {
                "ics": {"every": 100, "layers": [9, 17]},
                "activations": {"every": 100, "layers": [1, 11, 24]},
                "landscape": {"every": 100, "eta": {"from": 0.01, "to": 30, "points": 8}},
            },
        ),
        "vgg16": (
            CellConfig.model_validate(vgg),
            {
                "ics": {"every": 100, "layers": [5, 10]},
                "activations": {"every": 100, "layers": [2, 9, 13]},
                "landscape": {"every": 100, "eta": {"from": 0.5, "to": 4, "points": 8}},
            },
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"device": args.device, "steps": args.steps, "repeats": args.repeats, "threads": args.threads, "cells": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fake_cifar10(Path(tmp))
        for name, (off, measure) in cells(args.steps, args.device, tmp).items():
            on = CellConfig.model_validate({**off.model_dump(by_alias=True), "measure": measure})
            train_cell(off)  # warm-up: data on the device, kernels chosen
            t_off, t_on, shares = [], [], []
            for _ in range(args.repeats):
                for cell, out in ((off, t_off), (on, t_on)):
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    res = train_cell(cell)
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    out.append(time.perf_counter() - t)
                    if cell is on:
                        shares.append(res.measure_s)
            m_off, m_on = statistics.median(t_off), statistics.median(t_on)
            cost = {k: statistics.median(s[k] for s in shares) for k in shares[0]}
            results["cells"][name] = {
                "off_s": round(m_off, 3),
                "on_s": round(m_on, 3),
                "ratio": round(m_on / m_off, 3),
                "measure_s": {k: round(v, 3) for k, v in cost.items()},
                "share_of_extra": {k: round(v / max(sum(cost.values()), 1e-12), 3) for k, v in cost.items()},
            }
            print(name, json.dumps(results["cells"][name]), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"measure_overhead_{args.device}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
