"""What a sweep in progress leaves for readers, torch-free: one progress sidecar per running cell and
one run file per sweep.

    <output>/_checkpoints/sweep=<name>/<cell_id>.json   written by the cell when it starts and after each
                                                         checkpoint, removed with the checkpoint
    <output>/_runs/<name>.json                           written by the driver before any cell starts

`ls` and `report` read these to show running cells and how many cells are still to come; the
Parquet tables stay the record (a cell counts as finished only once its `cells` row is written).
A sidecar is a few hundred bytes written as the checkpoint is (atomically, no fsync), so it costs
a cell nothing measurable.
"""

from __future__ import annotations

import datetime as dt
import json
import socket

import pyarrow.fs as pafs

from bnsweep import layout
from bnsweep.records import Store, warn


def write_progress(store: Store, cell, step: int, checkpointed: bool) -> None:
    """Record that `cell` runs and has a checkpoint at `step` (`checkpointed` False: none yet, `step` is where it started)."""
    rec = {**layout.key_columns(cell), "step": int(step), "steps": cell.train.steps, "checkpointed": checkpointed,
           "host": socket.gethostname(), "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    store.put(layout.progress_file(store.root, cell.sweep, cell.cell_id), json.dumps(rec).encode())


def remove_progress(store: Store, cell) -> None:
    store.remove(layout.progress_file(store.root, cell.sweep, cell.cell_id))


def progress(store: Store, sweep: str | None = None) -> list[dict]:
    """Every progress sidecar under the output (of one sweep, if given): cells that run or were interrupted."""
    folder = layout.progress_dir(store.root, sweep)
    if store.fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    found = []
    for info in store.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith("."):
            rec = store.get_record(info.path)  # a torn or foreign file: no progress, not a crash
            if _typed(rec, SIDECAR):
                found.append(rec)
            else:
                warn(f"{info.path}: not a progress record of this layout (torn, or fields of the wrong type); ignored")
    return sorted(found, key=lambda r: (r["sweep"], r["arch"], r["norm"], r["lr"], r["seed"]))


def write_run(store: Store, sweep: str, cells: list) -> None:
    """The driver's record of this run: every cell of the spec (keys and steps), so readers know the total.
    Written only when it changes (a re-run of the same spec leaves the output byte for byte as it was)."""
    rec = {"sweep": sweep, "total": len(cells), "cells": [{**layout.key_columns(c), "steps": c.train.steps} for c in cells]}
    if read_run(store, sweep) != rec:
        store.put(layout.run_file(store.root, sweep), json.dumps(rec).encode())


def read_run(store: Store, sweep: str) -> dict | None:
    """The run file of `sweep`, or None (a sweep run before run files existed, never run, or a torn or foreign file)."""
    path = layout.run_file(store.root, sweep)
    rec = store.get_record(path)
    if rec is None and store.get(path) is None:
        return None
    cells = rec.get("cells") if rec else None
    if not (_typed(rec, {"sweep": str, "total": int}) and isinstance(cells, list) and all(_typed(c, RUN_CELL) for c in cells)):
        warn(f"{path}: not a run file of this layout (torn, or fields of the wrong type); ignored")
        return None
    return rec


KEYS = {"cell_id": str, "sweep": str, "arch": str, "norm": str, "lr": (int, float), "seed": int}
SIDECAR = {**KEYS, "step": int, "steps": int}  # what readers use of a progress record, with its type
RUN_CELL = {**KEYS, "steps": int}


def _typed(rec, fields: dict) -> bool:
    """`rec` is a mapping holding every one of `fields` with its type (a bool is no number)."""
    return isinstance(rec, dict) and all(
        isinstance(rec.get(k), t) and not isinstance(rec.get(k), bool) for k, t in fields.items()
    )
