"""Loss landscape, gradient predictiveness and effective beta-smoothness (Figs. 4, 10-13; App. A.2.2).

At a probed step with gradient g (all parameters), for each eta: loss(w - eta g) and
||grad(w) - grad(w - eta g)||_2. smoothness = that norm / (eta ||g||); beta_eff = its max over
eta, repeated on each of the step's rows so it can be read without recomputing [I].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from bnsweep.limits import MAX_ETA, MAX_PROBE_POINTS
from bnsweep.measure.base import Measurement, Point
from bnsweep.measure.schedule import Schedule
from bnsweep.options import Options

if TYPE_CHECKING:
    import polars as pl

    from bnsweep.measure.probe import StepContext


class EtaGrid(Options):
    from_: float = Field(0.5, gt=0, le=MAX_ETA, alias="from", description="Smallest step (VGG: lr/2 [P]; DLN: lr/100 [P]).")
    to: float = Field(4.0, gt=0, le=MAX_ETA, description="Largest step (VGG: 4 lr [P]; DLN: 30 lr [P]).")
    points: int = Field(8, ge=1, le=MAX_PROBE_POINTS, description="Number of steps; unknown in the paper [U].")
    spacing: Literal["log", "linear"] = "log"
    relative_to: Literal["lr", "none"] = Field("lr", description="lr: from/to are multiples of the cell's learning rate; none: absolute.")

    model_config = {**Options.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _ordered(self):
        if self.to < self.from_:
            raise ValueError(f"eta.to ({self.to:g}) must be >= eta.from ({self.from_:g})")
        return self

    def values(self, lr: float) -> list[float]:
        space = np.geomspace if self.spacing == "log" else np.linspace
        scale = lr if self.relative_to == "lr" else 1.0
        return [float(v) * scale for v in space(self.from_, self.to, self.points)]


class LandscapeOptions(Schedule):
    eta: EtaGrid = Field(default_factory=EtaGrid, description="Step sizes along -g.")


class Landscape(Measurement):
    name = "landscape"
    Options = LandscapeOptions
    columns = [("eta", pa.float64()), ("eta_rel", pa.float64()), ("loss", pa.float64()), ("grad_diff_l2", pa.float64()),
               ("grad_norm", pa.float64()), ("loss_at_w", pa.float64()), ("smoothness", pa.float64()), ("beta_eff", pa.float64())]
    example = {"every": 5, "eta": {"points": 3}}

    @staticmethod
    def summary(t: pl.LazyFrame) -> pl.LazyFrame:
        """Per probed step: beta_eff (as recorded), grad_predictiveness = max over eta of grad_diff_l2,
        loss_band = max / min loss over eta (non-finite points left out)."""
        import polars as pl

        finite = pl.col("loss").is_finite() & pl.col("grad_diff_l2").is_finite()
        return t.group_by("cell_id", "step").agg(
            beta_eff=pl.col("beta_eff").first(),
            grad_predictiveness=pl.col("grad_diff_l2").filter(finite).max(),
            loss_band=pl.col("loss").filter(finite).max() / pl.col("loss").filter(finite).min(),
        ).unpivot(index=["cell_id", "step"], variable_name="quantity")

    def points(self, ctx: StepContext) -> list[Point]:
        """w - eta g for each eta, every parameter differentiated."""
        import torch

        w, g = ctx.params(), ctx.grad()
        names, ws, gs = list(w), list(w.values()), [g[n] for n in w]
        return [(dict(zip(names, torch._foreach_add(ws, gs, alpha=-eta))), None) for eta in self.options.eta.values(ctx.lr)]

    def rows(self, ctx: StepContext, results: list) -> list[dict]:
        from bnsweep.measure.probe import norm2

        g = ctx.grad()
        g_norm = norm2(g.values())
        rows = []
        for eta, (loss, g_eta) in zip(self.options.eta.values(ctx.lr), results):
            diff = norm2([g[n] - g_eta[n] for n in g])
            rows.append({"eta": eta, "eta_rel": eta / ctx.lr, "loss": loss, "grad_diff_l2": diff, "grad_norm": g_norm,
                         "loss_at_w": ctx.loss, "smoothness": diff / (eta * g_norm) if g_norm > 0 else float("nan")})
        beta = max((r["smoothness"] for r in rows), default=float("nan"))
        return [{**r, "beta_eff": beta} for r in rows]
