"""SQL over an output's tables (DuckDB's SQL dialect), and the listing of its sweeps and cells.

    query.sql("runs/quickstart", "SELECT status, count(*) FROM steps JOIN cells USING (cell_id) GROUP BY status")
    query.listing("runs/quickstart")   # one row per cell: sweep, keys, status, steps, wall time
    query.states("runs/quickstart")    # per sweep: running / interrupted cells, cells still to come

Every table present is registered under its own name (cells, steps, evals, ics, landscape,
activations, curvature), over every sweep and over the verified files the store lists only. The query
runs on DuckDB in a child process with file access off and its configuration locked (analysis/sandbox.py):
it reads no file but those, writes none, and a crash of the engine is one error line, not ours.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa

from analysis import load, progress, sandbox
from bnsweep.errors import UserError
from bnsweep.layout import DIVERGED, DONE, FAILED, KEY_NAMES, SCHEMAS, TABLES

KEY_COLUMNS = ", ".join(KEY_NAMES)
ENGINE = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "analysis.sandbox"]  # -P: not the cwd's modules


def _hint(msg: str, here: list[str]) -> str:
    """An engine error with a hint where the fix is not obvious."""
    if "Table with name" in msg and "does not exist" in msg:
        absent = [t for t in TABLES if t not in here]
        msg += f"; tables here: {', '.join(here)}" + (f" (not in this output: {', '.join(absent)})" if absent else "")
    elif "Ambiguous reference" in msg:
        msg += f"; every table carries {KEY_COLUMNS}: qualify the column (steps.norm) or join USING ({KEY_COLUMNS})"
    return msg


def _engine_env() -> dict[str, str]:
    """The environment of the engine's process: ours (object-store credentials), with the folder this
    `analysis` package came from first on its path, so it runs the same code as we do."""
    here = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}


def request(output: str, query: str, limit: int | None = None) -> dict:
    """What the engine is sent: the output's URI, each present table's verified files and schema, the query."""
    store, files = load.verified(output)
    schema = lambda name: base64.b64encode(SCHEMAS[name].serialize().to_pybytes()).decode()
    return {"uri": store.uri, "sql": query, "limit": limit,
            "memory_limit": sandbox.memory_limit(), "address_limit": sandbox.address_limit(),
            "tables": {name: {"paths": paths, "schema": schema(name)} for name, paths in files.items()}}


def sql(output: str, query: str, limit: int | None = None) -> pl.DataFrame:
    """The result of `query` over every table under `output` (its first `limit` rows only, if given: the
    rest is never fetched); a query that is not one SELECT, fails, or reads or writes files raises UserError in one line."""
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"query refused: character {e.start + 1} is not valid UTF-8 (bytes that are not text)") from None
    req = request(output, query, limit)
    done = subprocess.run(ENGINE, input=json.dumps(req).encode(), capture_output=True, env=_engine_env())
    if done.returncode == 0:
        return pl.from_arrow(pa.ipc.open_stream(done.stdout).read_all())
    err = done.stderr.decode(errors="replace").strip().splitlines()
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:  # a signal Python has no name for
            name = str(-done.returncode)
        raise UserError(f"query failed: the query engine stopped on signal {name} (a query too large or too deeply nested?)")
    if done.returncode == 2 and len(err) == 1:
        raise UserError(_hint(err[0], list(req["tables"])))
    raise UserError(f"query failed: the query engine exited with status {done.returncode}: {err[-1] if err else 'no message'}")


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
