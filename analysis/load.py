"""Lazy scans of a bnsweep output folder, one per table; absent tables read as empty frames.

    from analysis import load
    load.sweeps("runs/quickstart")                    # ['quickstart']
    steps = load.table("runs/quickstart", "steps")    # a LazyFrame over every sweep's rows
    load.tables("runs/quickstart", "quickstart")      # {name: LazyFrame} for the tables present

Every scan uses the table's fixed schema from `bnsweep.records.SCHEMAS`, so files written before a
column existed read with nulls there, and Hive partitions (`sweep=`, `arch=`, `norm=`) prune files.
"""

from __future__ import annotations

import pyarrow.fs as pafs
import polars as pl

from bnsweep.errors import UserError, unknown
from bnsweep.records import SCHEMAS, Store

TABLES = tuple(SCHEMAS)  # cells, steps, evals, then one per measurement


def schema(name: str) -> pl.Schema:
    """The Polars schema of table `name`."""
    return pl.from_arrow(SCHEMAS[name].empty_table()).schema


def store(output: str) -> Store:
    """The output location, or a UserError if it holds no bnsweep tables."""
    s = Store(output)
    info = s.fs.get_file_info(s.root)
    if info.type != pafs.FileType.Directory:
        raise UserError(f"output {output!r} does not exist (give the `output` folder of a sweep, e.g. runs/quickstart)")
    if not any(_has_files(s, name) for name in TABLES):
        raise UserError(f"no bnsweep tables under {output!r} (expected folders named {', '.join(TABLES)})")
    return s


def _has_files(s: Store, name: str, sweep: str | None = None) -> bool:
    folder = f"{s.root}/{name}" + (f"/sweep={sweep}" if sweep else "")
    if s.fs.get_file_info(folder).type != pafs.FileType.Directory:
        return False
    found = s.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return any(f.type == pafs.FileType.File and f.base_name.endswith(".parquet") for f in found)


def sweeps(output: str) -> list[str]:
    """Names of the sweeps with rows in any table under `output`, sorted."""
    s, names = store(output), set()
    for name in TABLES:
        folder = f"{s.root}/{name}"
        if s.fs.get_file_info(folder).type == pafs.FileType.Directory:
            for f in s.fs.get_file_info(pafs.FileSelector(folder)):
                if f.type == pafs.FileType.Directory and f.base_name.startswith("sweep="):
                    names.add(f.base_name.removeprefix("sweep="))
    return sorted(n for n in names if any(_has_files(s, t, n) for t in TABLES))


def present(output: str, sweep: str | None = None) -> list[str]:
    """The tables with at least one file under `output` (for `sweep` only, if given)."""
    s = store(output)
    return [name for name in TABLES if _has_files(s, name, sweep)]


def table(output: str, name: str, sweep: str | None = None) -> pl.LazyFrame:
    """Every row of table `name` under `output` (one sweep's rows if `sweep` is given); empty if absent."""
    if name not in SCHEMAS:
        raise unknown("table", name, TABLES)
    s = store(output)
    if not _has_files(s, name, sweep):
        return pl.LazyFrame(schema=schema(name))
    path, options = s.scan_target(f"{name}" + (f"/sweep={sweep}" if sweep else "") + "/**/*.parquet")
    return pl.scan_parquet(path, hive_partitioning=True, schema=schema(name), storage_options=options,
                           missing_columns="insert", extra_columns="ignore")


def tables(output: str, sweep: str | None = None) -> dict[str, pl.LazyFrame]:
    """{name: LazyFrame} for every table present under `output` (for `sweep` only, if given)."""
    return {name: table(output, name, sweep) for name in present(output, sweep)}
