"""Summaries over seeds. Every statistic comes with the number of seeds behind it and their spread.

    from analysis import load, summaries
    cells, evals = load.table(out, "cells"), load.table(out, "evals")
    rob = summaries.lr_robustness(cells, evals)      # per (arch, norm, lr): metrics with 95 % bootstrap CIs
    summaries.robust_range(rob)                      # per (arch, norm): best lr, robust range in decades
    summaries.smoothness(load.tables(out))           # per (arch, norm, lr, quantity, layer, window): median, CI

A cell's final metrics are its last evaluation (eval mode, whole split). Only finished cells count
(status done or diverged); a diverged cell counts towards the divergence rate and has no final
metrics. The ranking metric is the final train accuracy, or for a task without accuracy
(regression) the final train loss.
"""

from __future__ import annotations

import polars as pl

from analysis.settings import DEFAULT, Settings
from analysis.stats import flatten, seed_ci

GROUP = ["arch", "norm", "lr"]
RESULT = ("done", "diverged")  # a cell with one of these statuses is a result; `failed` is not
FINALS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


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


def tasks(evals: pl.LazyFrame) -> pl.LazyFrame:
    """Per arch: `classification` (it records accuracy) or not (regression: ranked by loss)."""
    return evals.group_by("arch").agg(pl.col("accuracy").is_not_null().any().alias("classification"))


def within(value: pl.Expr, best: pl.Expr, settings: Settings = DEFAULT) -> pl.Expr:
    """`value` is within the tolerance of `best`: accuracy points below it, or a factor above a loss."""
    return (pl.when(pl.col("classification"))
            .then(value >= best - settings.accuracy_tolerance)
            .otherwise(value <= best * settings.loss_factor))


def better(value: pl.Expr) -> pl.Expr:
    """`value` oriented so that larger is better (accuracy as is, loss negated)."""
    return pl.when(pl.col("classification")).then(value).otherwise(-value)


def cell_results(cells: pl.LazyFrame, evals: pl.LazyFrame, settings: Settings = DEFAULT) -> pl.LazyFrame:
    """Per finished cell: keys, status, diverged (0/1), final metrics, the ranking `value`, target and steps to it."""
    per = (
        cells
        .filter(pl.col("status").is_in(RESULT))
        .select(*GROUP, "seed", "cell_id", "status")
        .join(final_evals(evals), on="cell_id", how="left")
        .with_columns(pl.when(pl.col("status") == "done").then(pl.col(c)) for c in FINALS)
        .join(tasks(evals), on="arch", how="left")
        .with_columns(pl.col("classification").fill_null(False))
        .with_columns(
            diverged=(pl.col("status") == "diverged").cast(pl.Float64),
            value=pl.when(pl.col("classification")).then(pl.col("train_accuracy")).otherwise(pl.col("train_loss")),
        )
    )
    f = settings.target_fraction
    targets = per.group_by("arch").agg(
        target=pl.when(pl.col("classification").first())
        .then(pl.col("train_accuracy").max() * f)
        .otherwise(pl.col("train_loss").min() / f)
    )
    reached = (
        evals
        .filter(pl.col("split") == "train")
        .join(per.filter(pl.col("status") == "done").select("cell_id", "classification"), on="cell_id")
        .join(targets, on="arch")
        .filter(pl.when(pl.col("classification")).then(pl.col("accuracy") >= pl.col("target")).otherwise(pl.col("loss") <= pl.col("target")))
        .group_by("cell_id")
        .agg(steps_to_target=pl.col("step").min().cast(pl.Float64))
    )
    return per.join(targets, on="arch", how="left").join(reached, on="cell_id", how="left")


def lr_robustness(cells: pl.LazyFrame, evals: pl.LazyFrame, settings: Settings = DEFAULT) -> pl.DataFrame:
    """Per (arch, norm, lr): seeds, failed, divergence rate, final metrics and steps to target (mean, 95 % CI, n); in_range, best.

    `value` is the ranking metric (`metric` names it). An lr is eligible when no seed diverged; the
    best lr has the best mean value among the eligible; `in_range` marks the eligible lrs within the
    tolerance of that best (Settings.accuracy_tolerance, Settings.loss_factor).
    """
    stats = ("divergence_rate", *FINALS, "steps_to_target", "value")
    failed = cells.filter(pl.col("status") == "failed").group_by(GROUP).agg(failed=pl.len())
    eligible = (pl.col("divergence_rate") == 0) & pl.col("value").is_not_null()
    best_value = better(pl.col("value")).filter(eligible).max().over("arch", "norm")
    return (
        cell_results(cells, evals, settings)
        .rename({"diverged": "divergence_rate"})  # its mean over seeds
        .group_by(GROUP)
        .agg(pl.len().alias("seeds"), pl.col("classification").first(), pl.col("target").first(),
             *(seed_ci(c, "mean", settings) for c in stats))
        .pipe(flatten, *stats)
        .join(failed, on=GROUP, how="left")
        .with_columns(
            pl.col("failed").fill_null(0),
            metric=pl.when(pl.col("classification")).then(pl.lit("train_accuracy")).otherwise(pl.lit("train_loss")),
            best=eligible & (better(pl.col("value")) == best_value),
            in_range=eligible & within(pl.col("value"), better(best_value), settings),  # better() is its own inverse
        )
        .with_columns(best=pl.col("best") & (pl.col("lr") == pl.col("lr").filter(pl.col("best")).min().over("arch", "norm")))
        .sort(GROUP)
        .collect()
    )


def robust_range(robustness: pl.DataFrame) -> pl.DataFrame:
    """Per (arch, norm): the best lr and its value (CI, n), the robust range [lr_min, lr_max] and its width in decades.

    `at_edge`: the range touches the smallest or largest lr tried, so the true range may be wider;
    `contiguous`: every lr tried inside the range is in it.
    """
    keys = ["arch", "norm"]
    tried = robustness.lazy().filter(pl.col("seeds") > 0)
    inside = tried.filter(pl.col("in_range"))
    best = tried.filter(pl.col("best")).select(*keys, "metric", best_lr="lr", best_value="value", best_value_lo="value_lo",
                                                 best_value_hi="value_hi", best_value_n="value_n")
    span = inside.group_by(keys).agg(lr_min=pl.col("lr").min(), lr_max=pl.col("lr").max(), lrs_in_range=pl.len(),
                                     min_seeds_in_range=pl.col("value_n").min())
    grid = tried.group_by(keys).agg(lrs_tried=pl.len(), grid_min=pl.col("lr").min(), grid_max=pl.col("lr").max())
    between = (tried.join(span, on=keys)
               .filter(pl.col("lr").is_between(pl.col("lr_min"), pl.col("lr_max")))
               .group_by(keys).agg(lrs_between=pl.len()))
    return (
        grid.join(best, on=keys, how="left").join(span, on=keys, how="left").join(between, on=keys, how="left")
        .with_columns(
            width_decades=(pl.col("lr_max") / pl.col("lr_min")).log10(),
            at_edge=(pl.col("lr_min") == pl.col("grid_min")) | (pl.col("lr_max") == pl.col("grid_max")),
            contiguous=pl.col("lrs_between") == pl.col("lrs_in_range"),
        )
        .drop("grid_min", "grid_max", "lrs_between")
        .sort(keys)
        .collect()
    )


def _landscape(t: pl.LazyFrame) -> pl.LazyFrame:
    """Per probed step: beta_eff (as recorded), gradient predictiveness = max_eta grad_diff_l2, loss band = max/min loss over eta."""
    finite = pl.col("loss").is_finite() & pl.col("grad_diff_l2").is_finite()
    return t.group_by("cell_id", "step").agg(
        beta_eff=pl.col("beta_eff").first(),
        grad_predictiveness=pl.col("grad_diff_l2").filter(finite).max(),
        loss_band=pl.col("loss").filter(finite).max() / pl.col("loss").filter(finite).min(),
    ).unpivot(index=["cell_id", "step"], variable_name="quantity")


def _ics(t: pl.LazyFrame) -> pl.LazyFrame:
    return t.select("cell_id", "step", "layer", ics_l2="l2", ics_cosine="cosine").unpivot(index=["cell_id", "step", "layer"], variable_name="quantity")


def _curvature(t: pl.LazyFrame) -> pl.LazyFrame:
    return t.select("cell_id", "step", "lambda_max").unpivot(index=["cell_id", "step"], variable_name="quantity")


SMOOTHNESS_SCHEMA = {"arch": pl.String, "norm": pl.String, "lr": pl.Float64, "quantity": pl.String, "layer": pl.Int64,
                     "window": pl.String, "median": pl.Float64, "lo": pl.Float64, "hi": pl.Float64, "seeds": pl.Int64}
SMOOTHNESS = {"landscape": _landscape, "ics": _ics, "curvature": _curvature}  # table -> (cell, step[, layer], quantity, value)


def smoothness(tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT) -> pl.DataFrame:
    """Per (arch, norm, lr, quantity, layer, window): median over seeds of each cell's mean over its probed steps, 95 % CI, n.

    Quantities: beta_eff, grad_predictiveness, loss_band (landscape), ics_l2, ics_cosine (ics, per
    layer), lambda_max (curvature); those whose table is absent are left out. Windows: `early` (steps
    before Settings.early_fraction of the cell's steps) and `overall`. Non-finite values are dropped.
    """
    parts = [f(tables[name]) for name, f in SMOOTHNESS.items() if name in tables]
    if not parts or "cells" not in tables:
        return pl.DataFrame(schema=SMOOTHNESS_SCHEMA)
    cells = tables["cells"].filter(pl.col("status").is_in(RESULT)).select(*GROUP, "seed", "cell_id", "steps")
    long = (
        pl.concat(parts, how="diagonal_relaxed")
        .filter(pl.col("value").is_finite())
        .join(cells, on="cell_id")
    )
    early = long.filter(pl.col("step") < settings.early_fraction * pl.col("steps")).with_columns(window=pl.lit("early"))
    keys = [*GROUP, "quantity", "layer", "window"]
    return (
        pl.concat([long.with_columns(window=pl.lit("overall")), early])
        .group_by(*keys, "cell_id")
        .agg(pl.col("value").mean())
        .group_by(keys)
        .agg(seed_ci("value", "median", settings))
        .pipe(flatten, "value")
        .rename({"value": "median", "value_lo": "lo", "value_hi": "hi", "value_n": "seeds"})
        .sort(keys, nulls_last=True)
        .collect()
    )
