"""Many deep linear networks trained at once, for the DLN protocol study: bnsweep's packed cells.

    losses, diverged = train_batched(cells, steps=10000)   # cells: bnsweep CellConfigs (arch dln)

The training is the product's (`bnsweep.pack.train_pack`, whose DLN step is `bnsweep.dln_pack`: full-batch
none / batch / l2 members on the data's moments, the others on the samples); this module only groups
the study's cells into packs (cells equal but for lr and seed) and lays their step losses out as the
study reads them. `tests/test_dln_batched.py` checks it against `bnsweep.train.train_cell` in float64.
"""

from __future__ import annotations

import math

import torch

from bnsweep.dln_pack import MOMENT_NORMS
from bnsweep.pack import train_pack
from bnsweep.spec import CellConfig, pack_key

SAMPLE_NORMS = ("l1", "linf")  # trained on the samples (as noisy_batch and any mini-batch cell)
__all__ = ["MOMENT_NORMS", "SAMPLE_NORMS", "train_batched"]


def train_batched(cells: list[CellConfig], steps: int | None = None, dtype: torch.dtype | None = None,
                  pack: int = 32) -> tuple[torch.Tensor, list[int | None]]:
    """Train `cells` (DLNs) in packs of up to `pack`; returns the training loss at every step (steps, M) as
    train_cell records it (row t: before update t), NaN after a cell diverged, and each cell's divergence
    step or None. `steps` overrides the cells' own; `dtype` as `train_pack`'s (None: float32)."""
    if any(c.arch != "dln" for c in cells):
        raise ValueError("train_batched: dln cells only")
    if steps is not None:
        cells = [c.model_copy(update={"train": c.train.model_copy(update={"steps": steps})}) for c in cells]
    steps = cells[0].train.steps
    losses = torch.full((steps, len(cells)), math.nan, dtype=torch.float64)
    diverged: list[int | None] = [None] * len(cells)
    groups: dict[str, list[int]] = {}
    for j, c in enumerate(cells):
        groups.setdefault(pack_key(c), []).append(j)
    for members in groups.values():
        for i in range(0, len(members), pack):
            chunk = members[i : i + pack]
            for j, res in zip(chunk, train_pack([cells[j] for j in chunk], dtype=dtype)):
                got = torch.tensor(res.steps["loss"], dtype=torch.float64)
                losses[: len(got), j] = got
                diverged[j] = res.diverged_step
    return losses, diverged
