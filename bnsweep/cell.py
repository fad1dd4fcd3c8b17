"""Running one cell end to end: train it, then write its tables (the `cells` row last).

This is what a Ray trial calls, and what a bare loop calls; it knows nothing of Ray.
"""

from __future__ import annotations

import datetime as dt
import pickle
import platform
import socket
import time
import traceback

import torch

import bnsweep
from bnsweep.layout import RESULT_TABLES
from bnsweep.records import Store, cells_row, columns, table
from bnsweep.spec import CellConfig
from bnsweep.train import TrainState, train_cell


def provenance(device: str, node_id: str) -> dict:
    return {
        "node_id": node_id, "hostname": socket.gethostname(), "device": device,
        "torch_version": torch.__version__, "cuda_version": torch.version.cuda or "",
        "bnsweep_version": bnsweep.__version__, "python_version": platform.python_version(),
    }


def load_checkpoint(store: Store, path: str) -> dict | None:
    """The saved TrainState at `path`, or None. A checkpoint that does not load as tensors and plain
    data (truncated, corrupt, or carrying code) is moved aside under `_damaged/`, and the cell restarts."""
    blob = store.get(path)
    if blob is None:
        return None
    try:
        return TrainState.read(blob)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError) as e:
        store.move_aside(path, f"checkpoint does not load safely ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                               "the cell restarts from step 0")
        return None


def run_cell(cell: CellConfig, store: Store, node_id: str = "local", device: str | None = None) -> dict:
    """Train `cell` (from its last checkpoint, if an earlier attempt left one) and write its rows.

    A Python exception is recorded as status `failed`, not raised; the checkpoint is removed once
    the cell's tables are written, or when it failed.
    """
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    res, error = None, None
    ckpt = store.checkpoint_path(cell)
    try:
        resume = load_checkpoint(store, ckpt) if cell.checkpoint_every else None
        res = train_cell(cell, device=device, resume=resume, checkpoint=lambda blob: store.put(ckpt, blob),
                         checkpoint_every=cell.checkpoint_every)
    except Exception as e:  # the sweep goes on; the cell runs again next time
        error = f"{type(e).__name__}: {e}"[:2000]
        traceback.print_exc()
    if res is not None:
        store.write("steps", cell, table("steps", cell, res.steps))
        store.write("evals", cell, table("evals", cell, columns(res.evals, "evals")))
        for name, rows in res.measure_rows.items():
            store.write(name, cell, table(name, cell, columns(rows, name)))
    else:  # leave no rows of an earlier, interrupted attempt beside a failed cell
        for name in RESULT_TABLES:
            store.delete(name, cell)
    wall_s = time.perf_counter() - t0
    row = cells_row(cell, res, started, wall_s, provenance(res.device if res else cell.device, node_id), error)
    store.write("cells", cell, table("cells", cell, {k: [v] for k, v in row.items()}))
    store.remove(ckpt)
    return {"cell_id": cell.cell_id, "status": row["status"], "wall_s": row["wall_s"], "error": error}
