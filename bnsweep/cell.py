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
from collections.abc import Callable

import pyarrow.fs as pafs
import torch

import bnsweep
from bnsweep.layout import RESULT, RESULT_TABLES, key_columns
from bnsweep.measure import enabled
from bnsweep.pack import train_pack
from bnsweep.records import Store, cells_row, columns, table
from bnsweep.running import remove_progress, write_progress
from bnsweep.spec import CellConfig
from bnsweep.train import Checkpoint, OnEval, ResumeError, TrainResult, TrainState, train_cell
from bnsweep.verify import judge

Hooks = Callable[[CellConfig], OnEval | None]  # a cell's evaluation hook (a live view's), or None


def provenance(device: str, node_id: str) -> dict:
    return {
        "node_id": node_id, "hostname": socket.gethostname(), "device": device,
        "torch_version": torch.__version__, "cuda_version": torch.version.cuda or "",
        "bnsweep_version": bnsweep.__version__, "python_version": platform.python_version(),
    }


def load_checkpoint(store: Store, cell: CellConfig) -> dict | None:
    """`cell`'s saved TrainState, or None. A checkpoint that does not load as tensors and plain data (truncated,
    corrupt, or carrying code), or that is not provably this cell's (another cell's, another spec's, or one of
    an older version that records neither), is moved aside under `_damaged/` and the cell starts at step 0."""
    path = store.checkpoint_path(cell)
    blob = store.get(path)
    if blob is None:
        return None
    try:
        state = TrainState.read(blob)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError) as e:
        first = (str(e).splitlines() or [""])[0]  # an EOFError of a zero-length file has no message at all
        return discard(store, cell, f"checkpoint does not load safely ({type(e).__name__}: {first[:160]})")
    if why := not_its(state, cell):
        return discard(store, cell, why)
    return state


def not_its(state, cell: CellConfig) -> str | None:
    """Why a loaded checkpoint is not `cell`'s to resume from, or None."""
    if not isinstance(state, dict) or "cell_id" not in state:
        return "checkpoint records no cell id (written by an older version, or not a checkpoint)"
    if state["cell_id"] != cell.cell_id:
        return f"checkpoint of cell {str(state['cell_id'])[:40]!r}, not of {cell.cell_id}"
    if state.get("spec_hash") != cell.spec_hash:
        return "checkpoint of another spec of this cell id (its spec hash differs)"
    if not isinstance(state.get("step"), int) or not 0 < state["step"] < cell.train.steps:
        return f"checkpoint at step {str(state.get('step'))[:20]}, outside 1..{cell.train.steps - 1}"
    return None


def discard(store: Store, cell: CellConfig, why: str) -> None:
    """Move `cell`'s checkpoint aside (never deleted), saying why; it starts afresh."""
    store.move_aside(store.checkpoint_path(cell), f"{why}; cell {cell.cell_id} starts afresh from step 0")
    write_progress(store, cell, 0, checkpointed=False)


def resume_point(store: Store, cell: CellConfig) -> dict | None:
    """`cell`'s last checkpoint (None: it starts at step 0), after recording in its progress sidecar that it runs."""
    resume = load_checkpoint(store, cell) if cell.checkpoint_every else None
    write_progress(store, cell, resume["step"] if resume else 0, checkpointed=resume is not None)
    return resume


def saver(store: Store, cell: CellConfig) -> Checkpoint:
    """Where `cell`'s checkpoints go: the checkpoint, then its sidecar (so the sidecar never runs ahead of it)."""
    path = store.checkpoint_path(cell)

    def save(blob: bytes, step: int) -> None:
        store.put(path, blob)
        write_progress(store, cell, step, checkpointed=True)

    return save


def run_cell(cell: CellConfig, store: Store, node_id: str = "local", device: str | None = None,
             on_eval: OnEval | None = None) -> dict:
    """Train `cell` (from its last checkpoint, if an earlier attempt left one) and write its rows.

    A Python exception is recorded as status `failed`, not raised; the checkpoint and its progress
    sidecar are removed once the cell's tables are written, or when it failed. `on_eval` goes to
    `train_cell` (a live view's hook).
    """
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    res, error = None, None
    try:
        resume = resume_point(store, cell)
        train = lambda resume: train_cell(cell, device=device, resume=resume, checkpoint=saver(store, cell),
                                          checkpoint_every=cell.checkpoint_every, on_eval=on_eval)
        try:
            res = train(resume)
        except ResumeError as e:  # loaded, but does not fit: nothing trained yet
            discard(store, cell, f"checkpoint does not fit the cell ({e})")
            res = train(None)
    except Exception as e:  # the sweep goes on; the cell runs again next time
        error = f"{type(e).__name__}: {e}"[:2000]
        traceback.print_exc()
    return write_result(cell, store, res, error, started, t0, node_id)


def write_result(cell: CellConfig, store: Store, res: TrainResult | None, error: str | None, started: dt.datetime,
                 t0: float, node_id: str, pack: tuple[int, int] = (1, 0)) -> dict:
    """Write a trained (or failed) cell's tables, its `cells` row last, and remove its checkpoint and sidecar."""
    files = {}  # table -> its record on the `cells` row: what proves the files are this cell's result
    if res is not None:
        files["steps"] = store.write("steps", cell, table("steps", cell, res.steps))
        files["evals"] = store.write("evals", cell, table("evals", cell, columns(res.evals, "evals")))
        for name, rows in res.measure_rows.items():
            files[name] = store.write(name, cell, table(name, cell, columns(rows, name)))
    else:  # leave no rows of an earlier, interrupted attempt beside a failed cell
        for name in RESULT_TABLES:
            store.delete(name, cell)
    wall_s = time.perf_counter() - t0
    row = cells_row(cell, res, started, wall_s, provenance(res.device if res else cell.device, node_id), error, pack,
                    files)
    store.write("cells", cell, table("cells", cell, {k: [v] for k, v in row.items()}))
    store.remove(store.checkpoint_path(cell))
    remove_progress(store, cell)
    return {"cell_id": cell.cell_id, "status": row["status"], "wall_s": row["wall_s"], "error": error}


def required_tables(cell: CellConfig) -> list[str]:
    """The tables a finished cell's result must have: steps, evals and one per measurement it turns on."""
    return ["steps", "evals", *(name for name, _ in enabled(cell.measure))]


def has_result(store: Store, cell: CellConfig) -> str | None:
    """The status of `cell` if its result verifies (done or diverged; `bnsweep.verify`, as the driver decides), else None."""
    info = store.fs.get_file_info(store.path("cells", cell))
    if info.type != pafs.FileType.File:
        return None
    found = [store.fs.get_file_info(store.path(name, cell)) for name in RESULT_TABLES]
    results = {name: i for name, i in zip(RESULT_TABLES, found) if i.type == pafs.FileType.File}
    status, _ = judge(store, info, results, required_tables(cell), key_columns(cell))
    return status if status in RESULT else None


def run_pack(cells: list[CellConfig], store: Store, node_id: str = "local", device: str | None = None,
             hooks: Hooks | None = None) -> list[dict]:
    """Train a pack (cells equal but for lr and seed) as one program and write each member's rows as it ends.

    Each member resumes from its own checkpoint; members whose checkpoints are at different steps (a pack
    re-formed after a crash) train as one pack per step, one after another. A Python exception marks the
    members still unfinished `failed`. A pack of one is `run_cell`. `hooks(cell)`: a member's `on_eval`.
    """
    hooks = hooks or (lambda cell: None)
    outs: dict[int, dict] = {i: {"cell_id": c.cell_id, "status": s, "wall_s": 0.0, "error": None}  # a retried
                             for i, c in enumerate(cells) if (s := has_result(store, c))}  # trial's finished members
    if len(outs) == len(cells):
        return [outs[i] for i in range(len(cells))]
    todo = [i for i in range(len(cells)) if i not in outs]
    if len(todo) == 1:  # alone: the plain loop
        outs[todo[0]] = run_cell(cells[todo[0]], store, node_id, device, hooks(cells[todo[0]]))
        return [outs[i] for i in range(len(cells))]
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    resumes = [resume_point(store, c) if i in todo else None for i, c in enumerate(cells)]
    while todo := [i for i in todo if i not in outs]:
        step = min((resumes[i] or {}).get("step", 0) for i in todo)
        members = [i for i in todo if (resumes[i] or {}).get("step", 0) == step]

        def finished(j: int, res: TrainResult, members=members) -> None:
            i = members[j]
            outs[i] = write_result(cells[i], store, res, None, started, t0, node_id, (len(members), j))

        try:
            train_pack([cells[i] for i in members], device=device, resumes=[resumes[i] for i in members],
                       checkpoints=[saver(store, cells[i]) for i in members],
                       checkpoint_every=cells[0].checkpoint_every, finished=finished,
                       on_evals=[hooks(cells[i]) for i in members])
        except ResumeError as e:  # a member's checkpoint loaded but does not fit: it starts afresh, nothing trained yet
            i = members[e.member]
            discard(store, cells[i], f"checkpoint does not fit the cell ({e})")
            resumes[i] = None
            continue
        except Exception as e:  # the sweep goes on; the unfinished members run again next time
            error = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
            for j, i in enumerate(members):
                if i not in outs:
                    outs[i] = write_result(cells[i], store, None, error, started, t0, node_id, (len(members), j))
        assert all(i in outs for i in members), "train_pack ends every member (done or diverged)"
    return [outs[i] for i in range(len(cells))]
