"""The data behind each figure: Polars reduces the tables to seed bands, small enough to draw.

Every function takes lazy tables and returns a LazyFrame (figures.frames collects them all at once) with
`mean`, `lo`, `hi` (the min-max band over seeds) and `seeds` per point, plus `panel` ("arch · lr 0.1", with
" · #k" for a layer, and the group's setting where settings vary). `mean` is the geometric mean over seeds for log-scale quantities
(analysis/quantities.py); `eos` = 2/lr beside beta_eff and lambda_max.
"""

from __future__ import annotations

import polars as pl

from analysis.groups import GROUP, attach
from analysis.quantities import edge_of_stability
from analysis.settings import DEFAULT, Settings
from analysis.stats import seed_band
from analysis.summaries import lr_robustness
from bnsweep.layout import RESULT

Norms = tuple[str, ...] | None


def panel(*extra: pl.Expr) -> pl.Expr:
    """'dln · lr 1e-6' (and ' · #9' for a layer, ' · train.steps=20' where settings vary)."""
    lr = pl.col("lr").map_elements(lambda x: f"{x:g}", return_dtype=pl.String)  # after aggregation: few rows
    parts = [pl.col("arch"), pl.lit(" · lr "), lr]
    for e in extra:
        parts += [pl.lit(" · #"), e.cast(pl.String)]
    parts.append(pl.when(pl.col("setting") != "").then(pl.lit(" · ") + pl.col("setting")).otherwise(pl.lit("")))
    return pl.concat_str(parts).alias("panel")


def _keep(t: pl.LazyFrame, cells: pl.LazyFrame, norms: Norms) -> pl.LazyFrame:
    """Rows of cells with a result (done or diverged), of `norms` if given, keyed by their group (analysis.groups)."""
    t = attach(t, cells.filter(pl.col("status").is_in(RESULT)))
    return t if norms is None else t.filter(pl.col("norm").is_in(norms))


def _band(t: pl.LazyFrame, col: str, keys: list[str], *extra: pl.Expr, log: pl.Expr | bool = False) -> pl.LazyFrame:
    return (t.group_by(*GROUP, *keys).agg(*seed_band(col, log))
            .filter(pl.col("seeds") > 0)  # points where no seed has a finite value
            .with_columns(panel(*extra))
            .sort(*GROUP, *keys))


def accuracy(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """Train and test accuracy (eval mode) vs step, per (arch, norm, lr, split); classification only."""
    evals = _keep(tables["evals"], tables["cells"], norms).filter(pl.col("accuracy").is_not_null())
    return _band(evals, "accuracy", ["split", "step"])


def training_loss(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """Training loss vs step: each cell's steps averaged into at most Settings.curve_points bins, then a seed band."""
    steps = _keep(tables["steps"], tables["cells"], norms)
    width = ((pl.col("step").max().over("arch") + 1) / settings.curve_points).ceil().cast(pl.Int64).clip(1)
    binned = (steps.with_columns(bin=pl.col("step") // width)
              .group_by(*GROUP, "cell_id", "bin")
              .agg(pl.col("step").min(), pl.col("loss").filter(pl.col("loss").is_finite()).mean()))
    return _band(binned, "loss", ["step"])


def activations(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """One unit's distribution per (layer, step): seed means of its quantiles; mean/lo/hi = its median's seed band."""
    act = _keep(tables["activations"], tables["cells"], norms)
    quantiles = [pl.col(c).mean() for c in ("q05", "q25", "q75", "q95")]
    return (act.group_by(*GROUP, "layer", "step").agg(*seed_band("q50"), *quantiles)
            .filter(pl.col("seeds") > 0)
            .with_columns(panel(pl.col("layer")))
            .sort(*GROUP, "layer", "step"))


def moment_drift(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """Fig. 8: |change| of the unit's mean and variance from the previous probed step and from step 0."""
    act = _keep(tables["activations"], tables["cells"], norms).sort("step")
    by = ["cell_id", "layer"]
    drift = act.with_columns(
        **{f"{m} vs previous": (pl.col(m) - pl.col(m).shift(1).over(by)).abs() for m in ("mean", "var")},
        **{f"{m} vs step 0": (pl.col(m) - pl.col(m).first().over(by)).abs() for m in ("mean", "var")},
    ).unpivot(index=[*GROUP, "seed", "layer", "step"],
              on=[f"{m} vs {w}" for m in ("mean", "var") for w in ("previous", "step 0")],
              variable_name="quantity")
    return _band(drift, "value", ["layer", "quantity", "step"], pl.col("layer"))


def ics(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """Fig. 3: ICS l2 (geometric mean over seeds) and cosine (mean) vs step per layer."""
    t = _keep(tables["ics"], tables["cells"], norms).unpivot(index=[*GROUP, "seed", "layer", "step"], on=["l2", "cosine"],
                                                           variable_name="quantity")
    return _band(t, "value", ["layer", "quantity", "step"], pl.col("layer"), log=pl.col("quantity").first() == "l2")


def landscape(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """Figs. 4, 10: per probed step, the min-max band over eta of the loss and of the gradient change, and beta_eff:
    geometric means over seeds (all heavy-tailed); beta_lo, beta_hi: beta_eff's range over seeds; eos = 2/lr."""
    t = _keep(tables["landscape"], tables["cells"], norms).filter(pl.col("loss").is_finite())
    per_step = t.group_by(*GROUP, "seed", "step").agg(
        loss_lo=pl.col("loss").min(), loss_hi=pl.col("loss").max(), loss_mid=pl.col("loss_at_w").first(),
        grad_lo=pl.col("grad_diff_l2").min(), grad_hi=pl.col("grad_diff_l2").max(), beta_eff=pl.col("beta_eff").first())
    positive = lambda c: pl.col(c).filter(pl.col(c) > 0)
    return (per_step.group_by(*GROUP, "step")
            .agg(*((10 ** positive(c).log10().mean()).alias(c)
                   for c in ("loss_lo", "loss_hi", "loss_mid", "grad_lo", "grad_hi", "beta_eff")),
                 pl.len().alias("seeds"), beta_lo=positive("beta_eff").min(), beta_hi=positive("beta_eff").max())
            .with_columns(panel(), eos=edge_of_stability(pl.col("lr")))
            .sort(*GROUP, "step"))


def grad_vs_eta(tables: dict, settings: Settings = DEFAULT, norms: Norms = None, lines: int = 6) -> pl.LazyFrame:
    """Fig. 11: gradient change vs eta / lr, seed band, at up to `lines` probed steps spread over training."""
    t = _keep(tables["landscape"], tables["cells"], norms)
    probed = t.select("arch", "step").unique().with_columns(rank=pl.col("step").rank("dense").over("arch"),
                                                           count=pl.col("step").n_unique().over("arch"))
    every = ((pl.col("count") + lines - 1) // lines).clip(1)
    chosen = probed.filter(((pl.col("rank") - 1) % every == 0) | (pl.col("rank") == pl.col("count"))).select("arch", "step")
    return _band(t.join(chosen, on=["arch", "step"]), "grad_diff_l2", ["step", "eta_rel"])


def curvature(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """lambda_max (curvature) beside beta_eff (landscape, where present) vs step: geometric means over seeds; eos.

    lambda_max is the converged probes' (rows of definition 1, by power iteration, have no flag and count as
    unconverged). A log axis cannot place a value <= 0: such seeds, and unconverged ones, are counted per point
    in `left_out`, and a point where every seed is left out stays, with no line value.
    """
    c = _keep(tables["curvature"], tables["cells"], norms)
    converged = pl.col("lambda_max_converged").fill_null(False)
    parts = [c.select(*GROUP, "seed", "step", value=pl.when(converged).then(pl.col("lambda_max")))
             .with_columns(quantity=pl.lit("lambda_max"))]
    if "landscape" in tables:
        beta = _keep(tables["landscape"], tables["cells"], norms).group_by(*GROUP, "seed", "step").agg(value=pl.col("beta_eff").first())
        parts.append(beta.with_columns(quantity=pl.lit("beta_eff")))
    plottable = pl.col("value").is_finite().fill_null(False) & (pl.col("value") > 0).fill_null(False)
    return (pl.concat(parts, how="diagonal_relaxed")
            .with_columns(left_out=~plottable, value=pl.when(plottable).then(pl.col("value")))
            .group_by(*GROUP, "quantity", "step")
            .agg(*seed_band("value", log=True), pl.col("left_out").sum())
            .with_columns(panel(), eos=edge_of_stability(pl.col("lr")))
            .sort(*GROUP, "quantity", "step"))


def lr_points(tables: dict, settings: Settings = DEFAULT, norms: Norms = None) -> pl.LazyFrame:
    """The LR-robustness plot: per (arch, norm, lr) the ranking metric with its CI; `marker` places lrs where seeds diverged."""
    rob = lr_robustness(tables["cells"], tables["evals"], settings).lazy()
    worst = pl.when(pl.col("classification")).then(pl.col("value").min()).otherwise(pl.col("value").max()).over("arch")
    return (rob.filter(pl.col("seeds") > 0)
            .with_columns(diverged=(pl.col("divergence_rate") * pl.col("seeds")).round().cast(pl.Int64))
            .with_columns(marker=pl.when(pl.col("diverged") > 0).then(pl.coalesce("value", worst)))
            .select(*GROUP, "metric", "classification", "seeds", "diverged", "value", "value_lo", "value_hi", "value_n", "marker")
            .with_columns(norm=pl.when(pl.col("setting") != "").then(pl.col("norm") + " · " + pl.col("setting"))
                          .otherwise(pl.col("norm"))))
