"""SQL over an output's tables (Polars SQL), and the listing of its sweeps and cells.

    query.sql("runs/quickstart", "SELECT status, count(*) FROM steps JOIN cells USING (cell_id) GROUP BY status")
    query.listing("runs/quickstart")   # one row per cell: sweep, keys, status, steps, wall time
    query.states("runs/quickstart")    # per sweep: running / interrupted cells, cells still to come

Every table present is registered under its own name (cells, steps, evals, ics, landscape,
activations, curvature), over every sweep; the scans are lazy, so a query reads only the columns
and partitions it needs.
"""

from __future__ import annotations

import polars as pl

from analysis import load, progress, sqlguard
from bnsweep.errors import UserError
from bnsweep.layout import DIVERGED, DONE, FAILED, KEY_NAMES, TABLES

KEY_COLUMNS = ", ".join(KEY_NAMES)


def context(output: str) -> pl.SQLContext:
    return pl.SQLContext(load.tables(output))


def _one_line(e: BaseException, output: str) -> str:
    """A Polars error as one line, with a hint where the fix is not obvious."""
    msg = " ".join(str(e).split("\n\n")[0].split())
    here = load.present(output)
    if "relation" in msg and "not found" in msg:
        absent = [t for t in TABLES if t not in here]
        msg += f"; tables here: {', '.join(here)}" + (f" (not in this output: {', '.join(absent)})" if absent else "")
    elif "ambiguous reference" in msg:
        msg += f"; every table carries {KEY_COLUMNS}: qualify the column (steps.norm) or join USING ({KEY_COLUMNS})"
    return f"query failed: {msg}"


def sql(output: str, query: str, limit: int | None = None) -> pl.DataFrame:
    """The result of `query` over every table under `output` (its first `limit` rows only, if given: the
    rest is never computed); a bad query, or one that would read or write files, raises UserError in one line."""
    sqlguard.check(query, load.TABLES)
    ctx = context(output)
    try:
        result = ctx.execute(query)
        return (result.limit(limit) if limit is not None else result).collect()
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as e:
        raise UserError(_one_line(e, output)) from None


def listing(output: str, states: list[progress.SweepState] = ()) -> pl.DataFrame:
    """Every cell with a row in the cells table: sweep, keys, status, steps done / configured, wall time, finished_at;
    and every started cell of `states` without a result: status running or interrupted, steps = its last
    checkpointed step / configured (in place of the failed row of an earlier attempt, if any)."""
    done = (
        load.table(output, "cells")
        .sort("sweep", "arch", "norm", "lr", "seed")
        .select("sweep", "cell_id", "arch", "norm", pl.col("lr").map_elements(lambda x: f"{x:g}", return_dtype=pl.String), "seed", "status",
                steps=pl.format("{}/{}", pl.col("steps_done").fill_null(0), pl.col("steps")),
                wall_s=pl.col("wall_s").round(1), finished_at=pl.col("finished_at").dt.strftime("%Y-%m-%d %H:%M:%S"))
        .collect()
    )
    started = [{"sweep": st.sweep, "cell_id": u["cell_id"], "arch": u["arch"], "norm": u["norm"], "lr": f"{u['lr']:g}",
                "seed": u["seed"], "status": u["state"], "steps": f"{u['step']}/{u['steps']}", "wall_s": None, "finished_at": None}
               for st in states for u in st.unfinished if u["state"] in progress.STARTED]
    if not started:
        return done
    now = pl.DataFrame(started, schema=done.schema)
    return (pl.concat([done.filter(~pl.col("cell_id").is_in(now["cell_id"].to_list())), now])
            .sort("sweep", "arch", "norm", pl.col("lr").cast(pl.Float64), "seed"))


def states(output: str) -> list[progress.SweepState]:
    """Where each sweep of `output` stands: those with a row in the cells table, a run file or a running cell."""
    store = load.store(output)
    cells = load.table(output, "cells").select("sweep", "cell_id", "status").collect()
    names = sorted(set(cells["sweep"].to_list()) | set(progress.run_sweeps(store)))
    return [progress.state(store, n, cells.filter(pl.col("sweep") == n)) for n in names]


def totals(cells: pl.DataFrame) -> pl.DataFrame:
    """Per sweep: cells, counts per status, total and longest wall time."""
    return (cells.group_by("sweep")
            .agg(cells=pl.len(), done=(pl.col("status") == DONE).sum(), diverged=(pl.col("status") == DIVERGED).sum(),
                 failed=(pl.col("status") == FAILED).sum(), wall_s=pl.col("wall_s").sum(), longest_s=pl.col("wall_s").max())
            .sort("sweep"))
