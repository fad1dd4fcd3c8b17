"""Running the enabled measurements of one cell on their schedules, collecting their rows and cost."""

from __future__ import annotations

import math
import time

import torch

from bnsweep.measure import MEASURES, enabled
from bnsweep.measure.base import Measurement
from bnsweep.measure.probe import StepContext, generators


class Measurements:
    """Runs the enabled measurements on their schedules; collects their rows and their cost."""

    def __init__(self, spec, model: torch.nn.Module, steps: int, seed: int):
        self.model = model
        self.active = [(MEASURES[name](opts, model, seed), opts.resolve(steps)) for name, opts in enabled(spec)]
        self.rows: dict[str, list[dict]] = {m.name: [] for m, _ in self.active}
        self.seconds: dict[str, float] = {m.name: 0.0 for m, _ in self.active}
        self.current: list[Measurement] = []
        self.rng_before: list = []
        # CUDA runs ahead of the host: time a measurement only after the queued training work is done
        self.sync = torch.cuda.synchronize if any(p.is_cuda for p in model.parameters()) else (lambda: None)

    def due(self, step: int) -> list[Measurement]:
        """The measurements scheduled at `step`."""
        return [m for m, steps in self.active if step in steps]

    def add(self, m: Measurement, step: int, rows: list[dict], seconds: float) -> None:
        """Rows of `m` at `step` and the seconds they took."""
        self.seconds[m.name] += seconds
        self.rows[m.name] += [{"step": step, "mode": "train", "definition": m.definition, **r} for r in rows]

    def before_forward(self, step: int) -> None:
        self.current = self.due(step)
        if not self.current:
            return
        self.rng_before = [(g, g.get_state()) for g in generators(self.model)]
        self.sync()
        for m in self.current:
            t0 = time.perf_counter()
            m.before_forward(step)
            self.sync()
            self.seconds[m.name] += time.perf_counter() - t0

    def after_backward(self, step: int, optimizer, x, y, loss_fn, loss: torch.Tensor) -> None:
        if not self.current:
            return
        ctx = StepContext(step, self.model, optimizer, x, y, loss_fn, loss.item(), self.rng_before)
        after_forward = [(g, g.get_state()) for g in generators(self.model)]
        try:
            for m in self.current:
                t0 = time.perf_counter()
                rows = m.after_backward(ctx) + m.collect()
                self.sync()
                self.add(m, step, rows, time.perf_counter() - t0)
        finally:
            for g, state in after_forward:  # training goes on with the noise it would have drawn
                g.set_state(state)
            self.current = []

    def cost(self) -> dict[str, float]:
        """Seconds per measurement, including time spent in forward-pass hooks."""
        return {m.name: self.seconds[m.name] + m.hook_s for m, _ in self.active}

    def latest(self) -> dict[str, list[dict]]:
        """Each measurement's rows at its latest probed step (those measured so far): a slice, no computation."""
        out = {}
        for name, rows in self.rows.items():
            if rows:
                i = len(rows) - 1
                while i and rows[i - 1]["step"] == rows[-1]["step"]:
                    i -= 1
                out[name] = rows[i:]
        return out


def summarise(latest: dict[str, list[dict]]) -> dict[str, float]:
    """`Measurements.latest()` as flat scalars by each measurement's own `summary` rule:
    `{"landscape/step": 40, "landscape/beta_eff": 3.1, "ics/ics_l2/layer2": 0.2, ...}`; non-finite values left out."""
    import polars as pl  # only here: a cell without a live view never imports it

    out: dict[str, float] = {}
    for name, rows in latest.items():
        summary = MEASURES[name].summary
        if summary is None:
            continue
        out[f"{name}/step"] = rows[0]["step"]
        frame = pl.DataFrame([{**r, "cell_id": ""} for r in rows], infer_schema_length=None).lazy()
        for r in summary(frame).collect().iter_rows(named=True):
            key = f"{name}/{r['quantity']}" + (f"/layer{r['layer']}" if r.get("layer") is not None else "")
            if r["value"] is not None and math.isfinite(r["value"]):
                out[key] = float(r["value"])
    return out
