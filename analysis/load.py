"""Lazy scans of a bnsweep output folder, one per table."""

from __future__ import annotations

import polars as pl

from bnsweep.records import Store


def table(output: str, name: str, sweep: str | None = None) -> pl.LazyFrame:
    """Every row of table `name` under `output` (one sweep's rows if `sweep` is given)."""
    store = Store(output)
    if sweep is not None:
        return pl.from_arrow(store.read(name, sweep)).lazy()
    return pl.scan_parquet(f"{store.uri}/{name}/**/*.parquet", hive_partitioning=True)
