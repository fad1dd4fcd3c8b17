"""The paper's measurements, taken during training without changing it (paper-protocol.md section 3).

A spec's `measure:` block enables any of `MEASURES`, each with a schedule; `Measurements` runs the
due ones at a step once its gradient is known and before the optimizer applies it.
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa
import torch
from pydantic import Field, create_model

from bnsweep.measure.activations import Activations
from bnsweep.measure.base import Measurement
from bnsweep.measure.curvature import Curvature
from bnsweep.measure.ics import Ics
from bnsweep.measure.landscape import Landscape
from bnsweep.measure.probe import StepContext, generators
from bnsweep.norms import Options

MEASURES: dict[str, type[Measurement]] = {
    "ics": Ics,
    "landscape": Landscape,
    "activations": Activations,
    "curvature": Curvature,
}

MeasureSpec = create_model(
    "MeasureSpec", __base__=Options,
    **{name: (cls.Options | None, Field(None, description=sys.modules[cls.__module__].__doc__.strip().splitlines()[0]))
       for name, cls in MEASURES.items()},
)

ROW_COLUMNS = [("step", pa.int64()), ("mode", pa.string()), ("definition", pa.int64())]


def layered(spec) -> list[tuple[str, list[int]]]:
    """(measurement, layers) for every enabled measurement that names weight layers."""
    return [(n, getattr(spec, n).layers) for n in MEASURES if getattr(spec, n) is not None and hasattr(getattr(spec, n), "layers")]


class Measurements:
    """Runs the enabled measurements on their schedules; collects their rows and their cost."""

    def __init__(self, spec, model: torch.nn.Module, steps: int, seed: int):
        self.model = model
        self.active = [(cls(opts, model, seed), opts.resolve(steps))
                       for name, cls in MEASURES.items() if spec is not None and (opts := getattr(spec, name)) is not None]
        self.rows: dict[str, list[dict]] = {m.name: [] for m, _ in self.active}
        self.seconds: dict[str, float] = {m.name: 0.0 for m, _ in self.active}
        self.current: list[Measurement] = []
        self.rng_before: list = []

    def before_forward(self, step: int) -> None:
        self.current = [m for m, steps in self.active if step in steps]
        if not self.current:
            return
        self.rng_before = [(g, g.get_state()) for g in generators(self.model)]
        for m in self.current:
            t0 = time.perf_counter()
            m.before_forward(step)
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
                self.seconds[m.name] += time.perf_counter() - t0
                self.rows[m.name] += [{"step": step, "mode": "train", "definition": m.definition, **r} for r in rows]
        finally:
            for g, state in after_forward:  # training goes on with the noise it would have drawn
                g.set_state(state)
            self.current = []

    def cost(self) -> dict[str, float]:
        """Seconds per measurement, including time spent in forward-pass hooks."""
        return {m.name: self.seconds[m.name] + m.hook_s for m, _ in self.active}
