"""Running one cell end to end: train it, then write its tables (the `cells` row last).

This is what a Ray trial calls, and what a bare loop calls; it knows nothing of Ray.
"""

from __future__ import annotations

import datetime as dt
import io
import platform
import socket
import time
import traceback

import torch

import bnsweep
from bnsweep.records import KEYS, SCHEMAS, Store, table
from bnsweep.spec import CellConfig
from bnsweep.train import TrainResult, train_cell

from bnsweep.measure import MEASURES

RESULT_TABLES = ("steps", "evals", *MEASURES)


def provenance(device: str, node_id: str) -> dict:
    return {
        "node_id": node_id, "hostname": socket.gethostname(), "device": device,
        "torch_version": torch.__version__, "cuda_version": torch.version.cuda or "",
        "bnsweep_version": bnsweep.__version__, "python_version": platform.python_version(),
    }


def cells_row(cell: CellConfig, res: TrainResult | None, started: dt.datetime, wall_s: float, node_id: str, error: str | None) -> dict:
    t = cell.train
    return {
        "dataset": cell.dataset.name, "steps": t.steps, "batch_size": t.batch_size,
        "momentum": t.momentum, "weight_decay": t.weight_decay, "augment": t.augment,
        "status": res.status if res else "failed",
        "steps_done": len(res.steps["step"]) if res else 0,
        "diverged_step": res.diverged_step if res else None, "error": error,
        "resumed_from": res.resumed_from if res else None,
        "started_at": started, "finished_at": started + dt.timedelta(seconds=wall_s), "wall_s": wall_s,
        "train_s": res.train_s if res else None, "eval_s": res.eval_s if res else None,
        **provenance(res.device if res else cell.device, node_id),
        "config_json": cell.model_dump_json(),
        **{f"{name}_s": s for name, s in (res.measure_s if res else {}).items()},
    }


def columns(rows: list[dict], name: str) -> dict[str, list]:
    """Row dicts -> the columns of table `name` (key columns are added by `table`)."""
    keys = {f.name for f in KEYS}
    return {f.name: [r.get(f.name) for r in rows] for f in SCHEMAS[name] if f.name not in keys}


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
        blob = store.get(ckpt) if cell.checkpoint_every else None
        resume = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False) if blob else None
        save = lambda state: store.put(ckpt, _serialise(state))
        res = train_cell(cell, device=device, resume=resume, checkpoint=save, checkpoint_every=cell.checkpoint_every)
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
    row = cells_row(cell, res, started, time.perf_counter() - t0, node_id, error)
    store.write("cells", cell, table("cells", cell, {k: [v] for k, v in row.items()}))
    store.remove(ckpt)
    return {"cell_id": cell.cell_id, "status": row["status"], "wall_s": row["wall_s"], "error": error}


def _serialise(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()
