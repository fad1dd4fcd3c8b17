"""Summaries over seeds. Every statistic comes with the number of seeds behind it and their spread.

    from analysis import load, summaries
    cells, evals = load.table(out, "cells"), load.table(out, "evals")
    rob = summaries.lr_robustness(cells, evals)      # per (arch, norm, lr): metrics with 95 % bootstrap CIs
    summaries.robust_range(rob)                      # per (arch, norm): best lr, robust range in decades
    summaries.final_metrics(cells, evals)            # per group: counts, mean and sd (the run summary)

Groups are analysis.groups.GROUP: cells whose settings differ are never pooled. A cell's final
metrics are its last evaluation (eval mode, whole split); `cell_results` owns them, and every
summary over seeds is built from it. Only finished cells count (status done or diverged); a
diverged cell counts towards the divergence rate and has no final metrics. The ranking metric is
the final train accuracy, or for a task without accuracy (regression) the final train loss; it is
compared as accuracy points or in log10 of the loss (`ranked`), with one tolerance (`within`).
Smoothness and ICS summaries: analysis/smoothness.py.
"""

from __future__ import annotations

import polars as pl

from analysis.groups import GROUP, label
from analysis.quantities import margin
from analysis.settings import DEFAULT, Settings
from analysis.stats import flatten, mean_sd_n, seed_ci
from bnsweep.layout import DIVERGED, DONE, FAILED, RESULT

FINALS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def final_evals(evals: pl.LazyFrame) -> pl.LazyFrame:
    """Per cell, the last evaluation: train_loss, train_accuracy, test_loss, test_accuracy."""
    last = (
        evals
        .filter(pl.col("step") == pl.col("step").max().over("cell_id"))
        .select("cell_id", "split", "loss", "accuracy")
    )
    return (
        last.filter(pl.col("split") == "train")
        .select("cell_id", train_loss="loss", train_accuracy="accuracy")
        .join(
            last.filter(pl.col("split") == "test").select("cell_id", test_loss="loss", test_accuracy="accuracy"), on="cell_id", how="left"
        )
    )


def tasks(evals: pl.LazyFrame) -> pl.LazyFrame:
    """Per arch: `classification` (it records accuracy) or not (regression: ranked by loss)."""
    return evals.group_by("arch").agg(pl.col("accuracy").is_not_null().any().alias("classification"))


def ranked(value: pl.Expr) -> pl.Expr:
    """The ranking metric on the scale of every comparison, larger is better: accuracy as is, -log10(loss)."""
    return pl.when(pl.col("classification")).then(value).otherwise(-value.log10())


def tolerance(settings: Settings = DEFAULT) -> pl.Expr:
    """The difference that matters on the `ranked` scale (quantities.margin): accuracy points, or log10 of a factor."""
    accuracy, loss = pl.lit(margin(False, settings)), pl.lit(margin(True, settings))
    return pl.when(pl.col("classification")).then(accuracy).otherwise(loss)


def within(value: pl.Expr, best: pl.Expr, settings: Settings = DEFAULT) -> pl.Expr:
    """`value` is within the tolerance of `best` (raw metrics): accuracy points below it, or a factor above a loss."""
    return ranked(value) >= ranked(best) - tolerance(settings)


def better(value: pl.Expr) -> pl.Expr:
    """`value` oriented so that larger is better (accuracy as is, loss negated); keeps the raw scale."""
    return pl.when(pl.col("classification")).then(value).otherwise(-value)


def cell_results(cells: pl.LazyFrame, evals: pl.LazyFrame, settings: Settings = DEFAULT) -> pl.LazyFrame:
    """Per finished cell: keys, seed, status, diverged (0/1), final metrics, ranking `value`, target, steps to it."""
    per = (
        label(cells)
        .filter(pl.col("status").is_in(RESULT))
        .select(*GROUP, "seed", "cell_id", "status")
        .join(final_evals(evals), on="cell_id", how="left")
        .with_columns(pl.when(pl.col("status") == DONE).then(pl.col(c)) for c in FINALS)
        .join(tasks(evals), on="arch", how="left")
        .with_columns(pl.col("classification").fill_null(False))
        .with_columns(
            diverged=(pl.col("status") == DIVERGED).cast(pl.Float64),
            value=pl.when(pl.col("classification")).then(pl.col("train_accuracy")).otherwise(pl.col("train_loss")),
        )
    )
    f = settings.target_fraction
    targets = per.group_by("arch", "setting").agg(
        target=pl.when(pl.col("classification").first()).then(pl.col("train_accuracy").max() * f).otherwise(pl.col("train_loss").min() / f)
    )
    reached = (
        evals.filter(pl.col("split") == "train")
        .join(per.filter(pl.col("status") == DONE).select("cell_id", "classification"), on="cell_id")
        .join(per.select("cell_id", "setting"), on="cell_id")
        .join(targets, on=["arch", "setting"])
        .filter(
            pl.when(pl.col("classification")).then(pl.col("accuracy") >= pl.col("target")).otherwise(pl.col("loss") <= pl.col("target"))
        )
        .group_by("cell_id")
        .agg(steps_to_target=pl.col("step").min().cast(pl.Float64))
    )
    return per.join(targets, on=["arch", "setting"], how="left").join(reached, on="cell_id", how="left")


def final_metrics(cells: pl.LazyFrame, evals: pl.LazyFrame, settings: Settings = DEFAULT) -> pl.DataFrame:
    """Per group: seeds, diverged and failed counts; mean, sd and n of the final metrics of seeds that did not diverge."""
    counts = (
        label(cells)
        .group_by(GROUP)
        .agg(
            seeds=pl.col("seed").n_unique(),
            diverged=(pl.col("status") == DIVERGED).sum(),
            failed=(pl.col("status") == FAILED).sum(),
        )
    )
    spread = (
        cell_results(cells, evals, settings)
        .group_by(GROUP)
        .agg(*(e for c in ("train_loss", "train_accuracy", "test_accuracy") for e in mean_sd_n(c)))
    )
    return counts.join(spread, on=GROUP, how="left").sort(GROUP).collect()


def lr_robustness(cells: pl.LazyFrame, evals: pl.LazyFrame, settings: Settings = DEFAULT) -> pl.DataFrame:
    """Per group: seeds, failed, divergence rate, final metrics and steps to target (mean, 95 % CI, n); in_range, best.

    `value` is the ranking metric (`metric` names it). An lr is eligible when no seed diverged; the
    best lr has the best mean value among the eligible; `in_range` marks the eligible lrs within the
    tolerance of that best (`within`).
    """
    stats = ("divergence_rate", *FINALS, "steps_to_target", "value")
    failed = label(cells).filter(pl.col("status") == FAILED).group_by(GROUP).agg(failed=pl.len())
    eligible = (pl.col("divergence_rate") == 0) & pl.col("value").is_not_null()
    best_value = better(pl.col("value")).filter(eligible).max().over("arch", "norm", "setting")
    return (
        cell_results(cells, evals, settings)
        .rename({"diverged": "divergence_rate"})  # its mean over seeds
        .group_by(GROUP)
        .agg(
            pl.len().alias("seeds"),
            pl.col("classification").first(),
            pl.col("target").first(),
            *(seed_ci(c, "mean", settings) for c in stats),
        )
        .pipe(flatten, *stats)
        .join(failed, on=GROUP, how="left")
        .with_columns(
            pl.col("failed").fill_null(0),
            metric=pl.when(pl.col("classification")).then(pl.lit("train_accuracy")).otherwise(pl.lit("train_loss")),
            best=eligible & (better(pl.col("value")) == best_value),
            in_range=eligible & within(pl.col("value"), better(best_value), settings),  # better() is its own inverse
        )
        .with_columns(best=pl.col("best") & (pl.col("lr") == pl.col("lr").filter(pl.col("best")).min().over("arch", "norm", "setting")))
        .sort(GROUP)
        .collect()
    )


def robust_range(robustness: pl.DataFrame) -> pl.DataFrame:
    """Per (arch, norm, setting): the best lr and its value (CI, n), the robust range [lr_min, lr_max], its width in
    decades.

    `at_edge`: the range touches the smallest or largest lr tried, so the true range may be wider;
    `contiguous`: every lr tried inside the range is in it.
    """
    keys = ["arch", "norm", "setting"]
    tried = robustness.lazy().filter(pl.col("seeds") > 0)
    inside = tried.filter(pl.col("in_range"))
    best = tried.filter(pl.col("best")).select(
        *keys, "metric", best_lr="lr", best_value="value", best_value_lo="value_lo", best_value_hi="value_hi", best_value_n="value_n"
    )
    span = inside.group_by(keys).agg(
        lr_min=pl.col("lr").min(), lr_max=pl.col("lr").max(), lrs_in_range=pl.len(), min_seeds_in_range=pl.col("value_n").min()
    )
    grid = tried.group_by(keys).agg(lrs_tried=pl.len(), grid_min=pl.col("lr").min(), grid_max=pl.col("lr").max())
    between = (
        tried.join(span, on=keys)
        .filter(pl.col("lr").is_between(pl.col("lr_min"), pl.col("lr_max")))
        .group_by(keys)
        .agg(lrs_between=pl.len())
    )
    return (
        grid.join(best, on=keys, how="left")
        .join(span, on=keys, how="left")
        .join(between, on=keys, how="left")
        .with_columns(
            width_decades=(pl.col("lr_max") / pl.col("lr_min")).log10(),
            at_edge=(pl.col("lr_min") == pl.col("grid_min")) | (pl.col("lr_max") == pl.col("grid_max")),
            contiguous=pl.col("lrs_between") == pl.col("lrs_in_range"),
        )
        .drop("grid_min", "grid_max", "lrs_between")
        .sort(keys)
        .collect()
    )
