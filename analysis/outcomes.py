"""Per finished cell: what the claims compare and what decides whether a comparison can be informative.

    outcomes.per_cell(cells, evals)   # one row per finished cell (status done or diverged)

Columns beyond the group key and seed: `diverged` (0/1); `dead` (0/1, a cell that did not diverge
but did not train: its final train accuracy within Settings.dead_band of chance, 1/classes, or, for
a task without accuracy (the DLN), its final train loss not below its step-0 loss; a classifier's
cross-entropy can rise while its accuracy is far above chance, so accuracy decides there); `trained` (0/1: neither diverged nor dead);
`final_accuracy`, `auc_accuracy` (the area under the training-accuracy curve over the run, as a
fraction of the steps: the mean train accuracy over training by the trapezoid rule over its
evaluations, which is what Figs. 1 and 2 plot and which does not saturate when both sides end at
100 %); `log_final_loss` (log10 of the final train loss). A diverged cell has no final metrics.
"""

from __future__ import annotations

import polars as pl

from analysis.settings import DEFAULT, Settings
from analysis.summaries import cell_results

CLASSES = {"cifar10": 10, "digits": 10}  # bnsweep/data.py's classification data sets (out_dim), without importing torch


def _curves(evals: pl.LazyFrame) -> pl.LazyFrame:
    """Per cell: step-0 train loss and the trapezoid area under train accuracy over [first, last] evaluation step."""
    train = evals.filter(pl.col("split") == "train").sort("step")  # over("cell_id") keeps each cell's rows in this order
    width = pl.col("step").diff().over("cell_id")
    mid = (pl.col("accuracy") + pl.col("accuracy").shift(1).over("cell_id")) / 2
    span = pl.col("step").max() - pl.col("step").min()
    return (
        train.with_columns(area=width * mid)
        .group_by("cell_id")
        .agg(
            initial_loss=pl.col("loss").first(),  # a group keeps its rows' order: sorted by step
            auc_accuracy=pl.when(span > 0).then(pl.col("area").sum() / span),
        )
    )


def per_cell(cells: pl.LazyFrame, evals: pl.LazyFrame, settings: Settings = DEFAULT) -> pl.DataFrame:
    """One row per finished cell: group key, seed, dataset, status, diverged, dead, trained and the compared metrics."""
    res = cell_results(cells, evals, settings).join(_curves(evals), on="cell_id", how="left")
    datasets = cells.select("cell_id", "dataset").unique("cell_id")
    chance = pl.col("dataset").replace_strict(CLASSES, default=None, return_dtype=pl.Float64).pow(-1)
    done = pl.col("diverged") == 0
    at_chance = pl.col("classification") & (pl.col("train_accuracy") <= chance + settings.dead_band)
    no_progress = ~pl.col("classification") & (pl.col("train_loss") >= pl.col("initial_loss"))
    dead = done & (at_chance.fill_null(False) | no_progress.fill_null(False))
    return (
        res.join(datasets, on="cell_id", how="left")
        .with_columns(dead=dead.cast(pl.Float64))
        .with_columns(
            trained=((pl.col("diverged") == 0) & (pl.col("dead") == 0)).cast(pl.Float64),
            final_accuracy=pl.col("train_accuracy"),
            auc_accuracy=pl.when(done & pl.col("classification")).then(pl.col("auc_accuracy")),
            log_final_loss=pl.when(done & (pl.col("train_loss") > 0)).then(pl.col("train_loss").log10()),
        )
        .sort("arch", "norm", "lr", "setting", "seed")
        .collect()
    )
