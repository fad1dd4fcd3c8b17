"""Where a sweep stands while it runs (or after it was interrupted), from what the run leaves behind:

    the `cells` table          the cells with a result (done, diverged) or a failure
    _runs/<sweep>.json         every cell of the latest `run` (its total), written before any cell starts
    _checkpoints/.../<id>.json the cells that started: their last checkpointed step of their total
    _locks/<sweep>.json        whether a driver runs the sweep now, and since when

Torch-free and cheap: `ls` and `report` call it. A sweep run before run files existed has no known
total (`total` None); its started cells are still listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pyarrow.fs as pafs

from bnsweep.layout import RESULT, runs_dir
from bnsweep.lock import holder
from bnsweep.records import Store
from bnsweep.running import progress, read_run

RUNNING, INTERRUPTED, NOT_STARTED, RETRY = "running", "interrupted", "not started", "failed, runs again"
STARTED = (RUNNING, INTERRUPTED)


@dataclass
class SweepState:
    sweep: str
    live: bool  # a driver runs the sweep now
    total: int | None  # cells in the latest run (None: no run file)
    results: int  # cells of that run with a result (done or diverged)
    unfinished: list[dict] = field(default_factory=list)  # keys, state, step, steps, checkpointed of each cell without a result

    @property
    def to_come(self) -> int | None:
        """Cells of the latest run without a result yet (running, interrupted, not started or to be retried)."""
        return None if self.total is None else self.total - self.results

    def line(self) -> str:
        """One sentence, e.g. 'running: 2 cells running, 5 of 8 cells still to come' (empty when nothing is unfinished)."""
        if not self.unfinished and not self.to_come:
            return ""
        count = lambda n, what: f"{n} cell{'s' if n != 1 else ''} {what}"
        n = {s: sum(u["state"] == s for u in self.unfinished) for s in STARTED}
        parts = [count(n[RUNNING], RUNNING)] if self.live else []
        if n[INTERRUPTED] or not self.live:
            parts.append(count(n[INTERRUPTED], INTERRUPTED))
        if self.total is not None:
            parts.append(f"{self.to_come} of {self.total} cells still to come")
        return (RUNNING if self.live else "interrupted (run the same command again to finish it)") + ": " + ", ".join(parts)


def state(store: Store, sweep: str, cells: pl.DataFrame) -> SweepState:
    """Where `sweep` stands; `cells`: its rows of the cells table (cell_id, status).

    A started cell (one with a progress sidecar) is `running` when a driver runs the sweep and the cell has
    started since that driver did; else `interrupted` (it resumes from its checkpoint when run again, or
    when its turn comes in the run now going on).
    """
    status = dict(zip(cells["cell_id"].to_list(), cells["status"].to_list()))
    run, lock = read_run(store, sweep), holder(store, sweep)
    started = {p["cell_id"]: p for p in progress(store, sweep)}
    members = run["cells"] if run else list(started.values())
    unfinished = []
    for c in members:
        cell_id = c["cell_id"]
        if status.get(cell_id) in RESULT:
            continue
        p = started.get(cell_id)
        if p is not None:
            now = lock is not None and p.get("updated_at", "") >= lock.get("started", "")
            where = RUNNING if now else INTERRUPTED
        else:
            where = RETRY if cell_id in status else NOT_STARTED
        unfinished.append({k: c[k] for k in ("cell_id", "arch", "norm", "lr", "seed")} | {
            "state": where, "step": p["step"] if p else None, "steps": c["steps"], "checkpointed": bool(p and p.get("checkpointed"))})
    results = sum(status.get(c["cell_id"]) in RESULT for c in run["cells"]) if run else sum(s in RESULT for s in status.values())
    return SweepState(sweep, lock is not None, run["total"] if run else None, results, unfinished)


def run_sweeps(store: Store) -> list[str]:
    """Sweeps with a run file or a progress sidecar (they may have no finished cell yet)."""
    names = set()
    folder = runs_dir(store.root)
    if store.fs.get_file_info(folder).type == pafs.FileType.Directory:
        names |= {f.base_name.removesuffix(".json") for f in store.fs.get_file_info(pafs.FileSelector(folder))
                  if f.base_name.endswith(".json") and not f.base_name.startswith(".")}
    names |= {p["sweep"] for p in progress(store)}
    return sorted(names)
