"""Smoothness and internal covariate shift, per cell and over seeds (the statistics: analysis/quantities.py).

cells = smoothness.per_cell(tables)    # per (cell, quantity, layer, window, statistic): its value over probed steps
smoothness.smoothness(tables)          # per (group, quantity, layer, window, statistic): centre over seeds, CI, n
"""

from __future__ import annotations

import polars as pl

from analysis.groups import GROUP, label
from analysis.quantities import COUNTS, EOS_QUANTITIES, LEFT_OUT, LOG_QUANTITIES, PROBES, SHARE, edge_of_stability
from analysis.settings import DEFAULT, Settings
from analysis.stats import flatten, seed_ci
from bnsweep.layout import RESULT
from bnsweep.measure import MEASURES

# table -> (cell, step[, layer], quantity, value): each measurement's own summary rule (bnsweep/measure/)
TABLES = {name: cls.summary for name, cls in MEASURES.items() if cls.summary is not None}
PER_CELL_SCHEMA = {
    **{k: pl.String for k in GROUP},
    "lr": pl.Float64,
    "seed": pl.Int64,
    "cell_id": pl.String,
    "quantity": pl.String,
    "layer": pl.Int64,
    "window": pl.String,
    "statistic": pl.String,
    "value": pl.Float64,
}
SCHEMA = {
    **{k: pl.String for k in GROUP},
    "lr": pl.Float64,
    "quantity": pl.String,
    "layer": pl.Int64,
    "window": pl.String,
    "statistic": pl.String,
    "centre": pl.String,
    "estimate": pl.Float64,
    "lo": pl.Float64,
    "hi": pl.Float64,
    "seeds": pl.Int64,
}


def per_cell(tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT) -> pl.DataFrame:
    """Per (cell, quantity, layer, window, statistic): median and upper quantile over the cell's probed steps, and
    for beta_eff and lambda_max the share of probed steps above 2/lr; `probes` (probed steps in the window) and
    `left_out` (those not in the median and upper: a value that is not finite, such as an unconverged curvature
    probe, or not positive for a log-scale quantity). Nothing is dropped unseen: the share above 2/lr counts
    every finite value (a non-positive sharpness is below 2/lr), and `left_out` counts the rest."""
    parts = [f(tables[name]) for name, f in TABLES.items() if name in tables]
    if not parts or "cells" not in tables:
        return pl.DataFrame(schema=PER_CELL_SCHEMA)
    cells = label(tables["cells"]).filter(pl.col("status").is_in(RESULT)).select(*GROUP, "seed", "cell_id", "steps")
    long = pl.concat(parts, how="diagonal_relaxed")
    if "layer" not in long.collect_schema().names():  # no per-layer table here
        long = long.with_columns(layer=pl.lit(None, dtype=pl.Int64))
    long = long.join(cells, on="cell_id")
    early = long.filter(pl.col("step") < settings.early_fraction * pl.col("steps")).with_columns(window=pl.lit("early"))
    keys = [*GROUP, "seed", "cell_id", "quantity", "layer", "window"]
    eos = pl.col("quantity").is_in(EOS_QUANTITIES)
    finite = pl.col("value").is_finite()
    usable = finite & (~pl.col("quantity").is_in(LOG_QUANTITIES) | (pl.col("value") > 0))  # a log needs a positive value
    used = pl.col("value").filter(usable)
    return (
        pl.concat([long.with_columns(window=pl.lit("overall")), early])
        .group_by(keys)
        .agg(
            median=used.median(),
            upper=used.quantile(settings.upper_quantile, "linear"),
            **{SHARE: pl.when(eos.first()).then((pl.col("value") > edge_of_stability(pl.col("lr"))).filter(finite).mean())},
            **{PROBES: pl.len().cast(pl.Float64), LEFT_OUT: (~usable).sum().cast(pl.Float64)},
        )
        .unpivot(index=keys, variable_name="statistic")
        .filter(pl.col("value").is_not_null())
        .select(list(PER_CELL_SCHEMA))
        .cast(PER_CELL_SCHEMA)
        .sort([*keys, "statistic"], nulls_last=True)  # one list of names (a list then a name sorts by a list literal)
        .collect()
    )


def smoothness(
    tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT, cells: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Per (group, quantity, layer, window, statistic): the centre over seeds of the per-cell statistic, its 95 % CI, n.

    The centre is the geometric mean for log-scale quantities (analysis/quantities.py), else the mean.
    `cells`: per_cell's result, if already computed.
    """
    per = per_cell(tables, settings) if cells is None else cells
    if per.is_empty():
        return pl.DataFrame(schema=SCHEMA)
    keys = [*GROUP, "quantity", "layer", "window", "statistic"]
    counts = pl.col("statistic").is_in(COUNTS)
    per = per.with_columns(
        log=pl.col("quantity").is_in(LOG_QUANTITIES) & (pl.col("statistic") != SHARE)
    )  # on_log_scale
    parts = [
        per.lazy()
        .filter(~counts, pl.col("log") == is_log)
        .group_by(keys)
        .agg(seed_ci("value", centre, settings))
        .with_columns(centre=pl.lit(centre))
        .pipe(flatten, "value")
        .rename({"value": "estimate", "value_lo": "lo", "value_hi": "hi", "value_n": "seeds"})
        for is_log, centre in ((True, "geomean"), (False, "mean"))
    ]
    total = (per.lazy().filter(counts).group_by(keys)  # counts add up over seeds: no interval
             .agg(estimate=pl.col("value").sum(), seeds=pl.len()).with_columns(centre=pl.lit("sum")))
    return (
        pl.concat([*parts, total], how="diagonal_relaxed")
        .select(list(SCHEMA))
        .cast(SCHEMA)
        .sort(keys, nulls_last=True)
        .collect()
    )
