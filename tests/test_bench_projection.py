"""bench/projection.py: device-hours of the shipped sweeps from measured figures, against hand arithmetic."""

import sys

import pytest
from conftest import ROOT

from bnsweep.specfile import load_cells

sys.path.insert(0, str(ROOT / "bench"))
from projection import BENCH_IMAGES, CIFAR10_IMAGES, project  # noqa: E402


def figures(per_step: float, eval_s: float = 0.0, per_probe: dict | None = None, pack8: float | None = None) -> dict:
    """bench/gpu.py's figures for a workload timed over 100 steps of batch 128."""
    alone = {"cells": 1, "wall_s": 100 * per_step, "images_per_s": 128 / per_step, "train_s": [100 * per_step],
             "eval_s": [eval_s]}
    w = {"concurrent": {"K=1": alone, "K=2": {**alone, "images_per_s": 1.5 * 128 / per_step}},
         "packs": {"status": "packing not available in this build"}}
    if pack8:
        w["packs"] = {"K=8": {**alone, "images_per_s": pack8 * 128 / per_step}}
    if per_probe:
        w["measurement"] = {"seconds_per_probe": per_probe}
    return w


def test_lr_grid_is_cells_times_steps_times_seconds_per_step():
    out = project(figures(0.01), 100, [ROOT / "sweeps" / "lr_grid.yaml"])["sweeps"]["lr_grid.yaml"]
    assert out["cells_projected"] == 24 and out["cells_not_projected"] == 0
    hours = 24 * 15000 * 0.01 / 3600  # 1.0
    assert out["gpu_hours"]["one cell at a time"] == pytest.approx(hours, abs=1e-3)
    assert out["gpu_hours"]["best concurrent (K=2)"] == pytest.approx(hours / 1.5, abs=1e-3)


def test_evaluations_and_measurements_are_added_per_cell():
    eval_s = 2 * BENCH_IMAGES * 1e-5  # 1e-5 s per evaluated image
    probe = {"ics": 0.1, "landscape": 0.2, "activations": 0.01, "curvature": 1.0}
    out = project(figures(0.01, eval_s, probe, pack8=4.0), 100, [ROOT / "sweeps" / "paper.yaml"])
    out = out["sweeps"]["paper.yaml"]
    cells = load_cells(ROOT / "sweeps" / "paper.yaml")[1]
    dln = sum(c.arch == "dln" for c in cells)
    assert out["cells_projected"] == len(cells) - dln == 54 and out["cells_not_projected"] == dln  # the DLN cells run on CPU
    # every 100 over 15,000 steps: 0, 100, ..., 14,900 and the last step; every 500: 30 + 1
    per_cell = 15000 * 0.01 + 16 * CIFAR10_IMAGES * 1e-5 + 151 * (0.1 + 0.2 + 0.01) + 31 * 1.0
    assert out["gpu_hours"]["one cell at a time"] == pytest.approx(54 * per_cell / 3600, abs=1e-3)
    assert out["gpu_hours"]["best packs (K=8)"] == pytest.approx(54 * per_cell / 3600 / 4.0, abs=1e-3)
    assert out["measurements_without_a_cost"] == []
