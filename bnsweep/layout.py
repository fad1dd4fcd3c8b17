"""The table layout, owned here and nowhere else: schemas, key columns, statuses and paths.

    <output>/<table>/sweep=<name>/arch=<arch>/norm=<norm>/<cell_id>.parquet   one file per cell per table
    <output>/_checkpoints/sweep=<name>/<cell_id>.pt                          a running cell's resumable state
    <output>/_checkpoints/sweep=<name>/<cell_id>.json                        its progress: step checkpointed, of how many
    <output>/_runs/<name>.json                                                the cells of the sweep's latest run (its total)
    <output>/_logs/<name>/                                                    live logs (`run --log`): TensorBoard, W&B, MLflow
    <output>/_locks/<name>.json                                               the run lock of a sweep
    <output>/_damaged/<relative path>.<utc time>                              damaged files, moved aside, never deleted

The writer (`bnsweep.records.Store`), the reader (`Store.scan`), `analysis/`, `ls` and `query` all
use these definitions. Nothing here imports torch, so listing and querying an output stays fast.
"""

from __future__ import annotations

import re

import pyarrow as pa

from bnsweep.measure import MEASURES, ROW_COLUMNS

KEYS = [
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("arch", pa.string(), nullable=False),
    pa.field("norm", pa.string(), nullable=False),
    pa.field("lr", pa.float64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
]
KEY_NAMES = [f.name for f in KEYS]  # every row of every table carries these

_ts = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "cells": pa.schema(KEYS + [
        ("dataset", pa.string()), ("steps", pa.int64()), ("batch_size", pa.int64()),
        ("momentum", pa.float64()), ("weight_decay", pa.float64()), ("augment", pa.bool_()),
        ("status", pa.string()),  # done | diverged | failed
        ("steps_done", pa.int64()), ("diverged_step", pa.int64()), ("error", pa.string()),
        ("resumed_from", pa.int64()),  # step at which a checkpoint of an interrupted attempt was resumed
        ("pack_size", pa.int64()), ("pack_index", pa.int64()),  # cells trained together in its trial; its place there
        ("started_at", _ts), ("finished_at", _ts), ("wall_s", pa.float64()),
        ("train_s", pa.float64()), ("eval_s", pa.float64()),
        ("node_id", pa.string()), ("hostname", pa.string()), ("device", pa.string()),
        ("torch_version", pa.string()), ("cuda_version", pa.string()),
        ("bnsweep_version", pa.string()), ("python_version", pa.string()),
        ("config_json", pa.string()),
    ]),
    "steps": pa.schema(KEYS + [("step", pa.int64()), ("loss", pa.float64()), ("accuracy", pa.float64())]),
    "evals": pa.schema(KEYS + [("step", pa.int64()), ("split", pa.string()), ("loss", pa.float64()), ("accuracy", pa.float64())]),
}
# the `lr` key column doubles as the steps table's per-step learning rate (constant schedule)

for _name, _cls in MEASURES.items():  # one table per measurement, and its cost on the cells row
    SCHEMAS[_name] = pa.schema(KEYS + ROW_COLUMNS + _cls.columns)
    SCHEMAS["cells"] = SCHEMAS["cells"].append(pa.field(f"{_name}_s", pa.float64()))

# execution choices in effect (bnsweep/performance.py; precision is the setting, the rest null for a failed
# cell), appended last so older files are a prefix
for _f in [("precision", pa.string()), ("tf32", pa.bool_()), ("cudnn_benchmark", pa.bool_()),
           ("channels_last", pa.bool_()), ("deterministic", pa.bool_()), ("check_every", pa.int64())]:
    SCHEMAS["cells"] = SCHEMAS["cells"].append(pa.field(*_f))
# the record that proves a result is this cell's (bnsweep/verify.py): per table written, its file name, row count,
# distinct steps and the sha256 of its bytes, as JSON; null in files written before it existed
SCHEMAS["cells"] = SCHEMAS["cells"].append(pa.field("files_json", pa.string()))

TABLES = tuple(SCHEMAS)  # cells, steps, evals, then one per measurement
RESULT_TABLES = tuple(t for t in TABLES if t != "cells")  # written before a cell's `cells` row

DONE, DIVERGED, FAILED = "done", "diverged", "failed"
STATUSES = (DONE, DIVERGED, FAILED)
RESULT = (DONE, DIVERGED)  # statuses that are results; `failed` cells run again

# The columns a file must have to be a table's (beyond these, it may lack only columns added since: they read as
# null). steps, evals and the measurements have had every column since they first shipped; cells gained many.
REQUIRED: dict[str, list[str]] = {name: schema.names for name, schema in SCHEMAS.items()}
REQUIRED["cells"] = KEY_NAMES + ["status", "steps_done"]
# columns of a table's earlier definitions that its files may still carry (read without them); a measurement whose
# definition changed needs of its files only what every definition wrote
RETIRED: dict[str, pa.Schema] = {name: pa.schema(cls.retired) for name, cls in MEASURES.items()}
for _name, _cls in MEASURES.items():
    if _cls.retired:
        REQUIRED[_name] = [f.name for f in KEYS] + [c for c, _ in ROW_COLUMNS]

SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a sweep's name: one plain folder name, never `..` or a path
_PLACE = re.compile(r"^(?P<table>[^/]+)/sweep=(?P<sweep>[^/]+)/arch=(?P<arch>[^/]+)/norm=(?P<norm>[^/]+)/"
                    r"(?P<cell_id>[^./][^/]*)\.parquet$")


def table_dir(root: str, name: str, sweep: str | None = None) -> str:
    """The folder of table `name` (of one sweep, if given)."""
    return f"{root}/{name}" + (f"/sweep={sweep}" if sweep is not None else "")


def cell_file(root: str, name: str, cell) -> str:
    """Where table `name` keeps the rows of `cell` (anything with sweep, arch, norm, cell_id)."""
    return f"{table_dir(root, name, cell.sweep)}/arch={cell.arch}/norm={cell.norm}/{cell.cell_id}.parquet"


def place(root: str, path: str) -> dict[str, str] | None:
    """{table, sweep, arch, norm, cell_id} that the location of `path` says, or None if it is no cell file's place."""
    m = _PLACE.match(path.removeprefix(root + "/")) if path.startswith(root + "/") else None
    return m.groupdict() if m and m["table"] in SCHEMAS else None


def checkpoint_file(root: str, sweep: str, cell_id: str) -> str:
    return f"{progress_dir(root, sweep)}/{cell_id}.pt"


def progress_file(root: str, sweep: str, cell_id: str) -> str:
    """A running cell's progress sidecar, beside its checkpoint: readable without torch (`ls`, `report`)."""
    return f"{progress_dir(root, sweep)}/{cell_id}.json"


def progress_dir(root: str, sweep: str | None = None) -> str:
    return f"{root}/_checkpoints" + (f"/sweep={sweep}" if sweep is not None else "")


def runs_dir(root: str) -> str:
    return f"{root}/_runs"


def run_file(root: str, sweep: str) -> str:
    """The cells of a sweep's latest `run`, written by the driver before any cell starts: the total a report compares with."""
    return f"{runs_dir(root)}/{sweep}.json"


def logs_dir(root: str, sweep: str) -> str:
    """The default folder of a sweep's live logs (`bnsweep run --log ...`)."""
    return f"{root}/_logs/{sweep}"


def lock_file(root: str, sweep: str) -> str:
    return f"{root}/_locks/{sweep}.json"


def damaged_dir(root: str) -> str:
    return f"{root}/_damaged"


def key_columns(cell) -> dict:
    """The key columns' values for `cell`."""
    return {"cell_id": cell.cell_id, "sweep": cell.sweep, "arch": cell.arch, "norm": cell.norm,
            "lr": float(cell.lr), "seed": int(cell.seed)}
