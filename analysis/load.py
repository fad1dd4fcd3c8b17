"""Lazy scans of a bnsweep output folder, one per table; absent tables read as empty frames.

    from analysis import load
    load.sweeps("runs/quickstart")                    # ['quickstart']
    steps = load.table("runs/quickstart", "steps")    # a LazyFrame over every sweep's rows
    load.tables("runs/quickstart", "quickstart")      # {name: LazyFrame} for the tables present

The layout is `bnsweep.layout`'s and the reading `bnsweep.records.Store.scan`'s: every scan uses the
table's fixed schema (files written before a column existed read with nulls there), and reads only
files that verify as their cell's result (`bnsweep.verify`): damaged, stray or foreign files are left
out with a warning line that names them.
"""

from __future__ import annotations

import polars as pl
import pyarrow.fs as pafs

from bnsweep.errors import UserError, unknown
from bnsweep.layout import SCHEMAS, SWEEP_NAME, TABLES, progress_dir, runs_dir, table_dir
from bnsweep.records import Store, warn


def schema(name: str) -> pl.Schema:
    """The Polars schema of table `name`."""
    return pl.from_arrow(SCHEMAS[name].empty_table()).schema


def store(output: str) -> Store:
    """The output location, or a UserError if it holds no bnsweep tables."""
    s = Store(output)
    info = s.fs.get_file_info(s.root)
    if info.type != pafs.FileType.Directory:
        raise UserError(f"output {output!r} does not exist (give the `output` folder of a sweep, e.g. runs/quickstart)")
    folders = [table_dir(s.root, name) for name in TABLES] + [runs_dir(s.root), progress_dir(s.root)]  # a sweep may run
    if not any(s.fs.get_file_info(f).type == pafs.FileType.Directory for f in folders):
        raise UserError(f"no bnsweep tables under {output!r} (expected folders named {', '.join(TABLES)})")
    return s


def sweeps(output: str) -> list[str]:
    """Names of the sweeps with rows in any table under `output`, sorted; a partition folder whose value is
    not a sweep name (`sweep=..`, which would lead a report outside its folder) is named and left out."""
    s, names = store(output), set()
    for name in TABLES:
        folder = table_dir(s.root, name)
        if s.fs.get_file_info(folder).type == pafs.FileType.Directory:
            for f in s.fs.get_file_info(pafs.FileSelector(folder)):
                if f.type == pafs.FileType.Directory and f.base_name.startswith("sweep="):
                    name = f.base_name.removeprefix("sweep=")
                    if SWEEP_NAME.match(name):
                        names.add(name)
                    else:  # `sweep=..` would put a report in the parent of -o: no sweep can have that name
                        warn(f"skipped {f.path}: {name!r} is not a sweep name (letters, digits, _ . -, starting with a letter or digit)")
    return sorted(n for n in names if any(s.survey(n).good.values()))


def verified(output: str, sweep: str | None = None) -> tuple[Store, dict[str, list[str]]]:
    """(the store, {table: its verified files}) for every table with one under `output` (of `sweep`, if given);
    each file left out is named in a warning line."""
    s, files = store(output), {}
    found = s.survey(sweep)  # one judgement of every file, not one per table
    for name in TABLES:
        good, bad = found.listed(name)
        for path, why in bad.items():
            warn(f"skipped {path}: {why}")
        if good:
            files[name] = good
    return s, files


def table(output: str, name: str, sweep: str | None = None) -> pl.LazyFrame:
    """Every row of table `name` under `output` (one sweep's rows if `sweep` is given); empty if absent."""
    if name not in SCHEMAS:
        raise unknown("table", name, TABLES)
    return store(output).scan(name, sweep)


def tables(output: str, sweep: str | None = None) -> dict[str, pl.LazyFrame]:
    """{name: LazyFrame} for every table present under `output` (for `sweep` only, if given)."""
    s = store(output)
    found = s.survey(sweep)  # one judgement of every file: a cell's tables are trusted together or not at all
    return {name: s.scan(name, sweep, listed=found.listed(name)) for name in TABLES if found.good[name]}
