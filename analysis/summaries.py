"""Summaries over seeds. Every statistic comes with the number of seeds behind it and their spread."""

from __future__ import annotations

import polars as pl

GROUP = ["arch", "norm", "lr"]


def final_evals(evals: pl.LazyFrame) -> pl.LazyFrame:
    """Per cell, the last evaluation: train_loss, train_accuracy, test_loss, test_accuracy."""
    last = (
        evals
        .filter(pl.col("step") == pl.col("step").max().over("cell_id"))
        .select("cell_id", "split", "loss", "accuracy")
    )
    return (
        last.filter(pl.col("split") == "train").select("cell_id", train_loss="loss", train_accuracy="accuracy")
        .join(last.filter(pl.col("split") == "test").select("cell_id", test_loss="loss", test_accuracy="accuracy"), on="cell_id", how="left")
    )


def mean_sd(col: str) -> list[pl.Expr]:
    """Mean, sample standard deviation and count of `col` over the rows of a group (nulls skipped)."""
    return [pl.col(col).mean().alias(f"{col}_mean"), pl.col(col).std().alias(f"{col}_sd"), pl.col(col).count().alias(f"{col}_n")]


def final_metrics(cells: pl.LazyFrame, evals: pl.LazyFrame) -> pl.DataFrame:
    """Per (arch, norm, lr): seeds, diverged and failed counts, final metrics of the finished seeds."""
    per_cell = cells.select(*GROUP, "cell_id", "seed", "status").join(final_evals(evals), on="cell_id", how="left")
    finished = pl.col("status") == "done"
    return (
        per_cell
        .with_columns([pl.when(finished).then(pl.col(c)) for c in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")])
        .group_by(GROUP)
        .agg(
            pl.col("seed").n_unique().alias("seeds"),
            (pl.col("status") == "diverged").sum().alias("diverged"),
            (pl.col("status") == "failed").sum().alias("failed"),
            *mean_sd("train_loss"), *mean_sd("train_accuracy"), *mean_sd("test_accuracy"),
        )
        .sort(GROUP)
        .collect()
    )
