"""A trial's evaluation reports to Ray Tune, sent by one daemon thread so that training never waits on the driver.

    reporter = Reporter(tune.report)
    run_pack(cells, store, hooks=reporter.hook)      # each evaluation: into its cell's slot, nothing more
    tune.report({"status": ..., "cells": reporter.close()})

A report is `{"cells": {cell_id: [metrics, ...]}}`, each cell's evaluations in step order: those waiting
when the thread sends, and in the final report whatever was not sent.

In a function trainable `tune.report` blocks until the driver has taken the result and run every
callback (Tune's own bookkeeping, then the loggers writing to disk or a database). The training thread
only appends an evaluation to its cell's backlog. One thread sends what the backlogs hold, one
`tune.report` for all of a pack's members and all their waiting evaluations; if the driver lags so
far that a cell has BACKLOG evaluations waiting, its oldest is dropped (newest wins: a point fewer
on a live curve, never a wait, and memory bounded per cell). A cell's last evaluation, at its last
step, is not sent on its own: `close` hands it back for the trial's final report, with any evaluation
still waiting, so a cell's end never waits for a round trip of its own. Measurement summaries are
computed by the sending thread, and only for the evaluations it sends.

No Ray here: `send` is `tune.report` in a trial, a list's `append` in the tests.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bnsweep.measure.session import summarise
from bnsweep.train import OnEval

BACKLOG = 32  # evaluations of a cell that may wait for a lagging driver (a few hundred bytes each); then the oldest goes


@dataclass(frozen=True)
class Evaluation:
    step: int
    steps: int  # the cell's total
    rows: list[dict]  # its train and test rows
    latest: dict[str, list[dict]]  # each measurement's rows at its latest probed step

    def metrics(self) -> dict:
        """The evaluation as flat numbers: step, steps, train_loss, train_accuracy, test_loss, test_accuracy (null ones
        left out), and each measurement's summary at its latest probed step (`landscape/beta_eff`, `ics/ics_l2/layer2`)."""
        out = {"step": self.step, "steps": self.steps}
        for r in self.rows:
            out |= {f"{r['split']}_{k}": r[k] for k in ("loss", "accuracy") if r[k] is not None}
        return out | summarise(self.latest)


class Reporter:
    """Takes evaluations from the training thread and sends them from a thread of its own (see the module)."""

    def __init__(self, send: Callable[[dict], None], backlog: int = BACKLOG):
        self.send, self.backlog = send, backlog
        self.waiting: dict[str, deque[Evaluation]] = {}  # cell_id -> its evaluations not sent yet, oldest first
        self.last: dict[str, Evaluation] = {}  # cell_id -> its evaluation at its last step, for the final report
        self.sent = self.dropped = 0
        self.error: Exception | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bnsweep-reports", daemon=True)
        self._thread.start()

    def hook(self, cell) -> OnEval:
        """`cell`'s `on_eval` (a CellConfig's): its evaluations go to its backlog."""
        cell_id, steps = cell.cell_id, cell.train.steps

        def on_eval(step: int, rows: list[dict], latest: dict[str, list[dict]]) -> None:
            self.put(cell_id, Evaluation(step, steps, rows, latest))

        return on_eval

    def put(self, cell_id: str, ev: Evaluation) -> None:
        with self._cond:
            if ev.step >= ev.steps:
                self.last[cell_id] = ev
                return
            waiting = self.waiting.setdefault(cell_id, deque(maxlen=self.backlog))
            self.dropped += len(waiting) == self.backlog
            waiting.append(ev)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch, self.waiting = self.waiting, {}
            try:
                self.send({"cells": {cell_id: [ev.metrics() for ev in evs] for cell_id, evs in batch.items()}})
            except Exception as e:  # a live view that fails must not fail the cell: its tables are the record
                self.error = e
                return
            self.sent += sum(map(len, batch.values()))

    def close(self) -> dict[str, list[dict]]:
        """Stop sending (after the report in flight, if any, was taken) and return what was not sent, as
        {cell_id: [metrics, ...]} in step order: a cell's evaluations still waiting, then its last one."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        left = {cell_id: [ev.metrics() for ev in evs] for cell_id, evs in self.waiting.items()}
        for cell_id, ev in self.last.items():
            left.setdefault(cell_id, []).append(ev.metrics())
        return left
