"""Internal covariate shift, Definition 2.1 of Santurkar et al. (2018), Fig. 3.

G = dL/dW_i at step t; G' = dL/dW_i on the same batch after layers 1..i-1 (every parameter
registered before W_i: weights, biases, norm affines) took their actual step-t update, layers
>= i unchanged. Rows: ||G - G'||_2 (raw), cos(G, G'), ||G||, ||G'||.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field, field_validator

from bnsweep.limits import MAX_DEPTH
from bnsweep.measure.base import Measurement, Point
from bnsweep.measure.schedule import Schedule
from bnsweep.options import unique

if TYPE_CHECKING:
    import polars as pl

    from bnsweep.measure.probe import StepContext


class IcsOptions(Schedule):
    layers: list[int] = Field(
        min_length=1, max_length=MAX_DEPTH,
        description="Weight layers #k, counted from the input from 1 (VGG #5, #10; DLN #9, #17 in the paper) [P]."
    )

    @field_validator("layers")
    @classmethod
    def _layers_once(cls, v: list[int]) -> list[int]:
        return unique("layers", v)  # a layer listed twice would store its rows twice


def weight_names(model) -> list[str]:
    """Parameter name of each weight layer's weight, in forward order."""
    from bnsweep.models import weight_layers

    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(m.weight)] for m in weight_layers(model)]


class Ics(Measurement):
    name = "ics"
    Options = IcsOptions
    columns = [
        ("layer", pa.int64()),
        ("l2", pa.float64()),
        ("cosine", pa.float64()),
        ("grad_norm", pa.float64()),
        ("grad_prime_norm", pa.float64()),
    ]
    example = {"every": 5, "layers": [2, 3]}

    @staticmethod
    def summary(t: pl.LazyFrame) -> pl.LazyFrame:
        """Per probed step and layer: ics_l2 = ||G - G'||, ics_cosine = cos(G, G')."""
        return t.select("cell_id", "step", "layer", ics_l2="l2", ics_cosine="cosine").unpivot(
            index=["cell_id", "step", "layer"], variable_name="quantity"
        )

    def points(self, ctx: StepContext) -> list[Point]:
        """Per layer k: the weights with layers 1..k-1 (and their norms) moved by the step, W_k to differentiate."""
        names = [n for n, _ in ctx.model.named_parameters()]
        w, moved_all = ctx.params(), ctx.stepped()
        out = []
        for k in self.options.layers:
            target = weight_names(ctx.model)[k - 1]
            before = set(names[: names.index(target)])  # layers 1..k-1 and their norms
            out.append(({n: moved_all[n] if n in before else w[n] for n in names}, [target]))
        return out

    def rows(self, ctx: StepContext, results: list) -> list[dict]:
        import torch

        from bnsweep.measure.probe import norm2

        g, rows = ctx.grad(), []
        for k, (_, gp) in zip(self.options.layers, results):
            target = weight_names(ctx.model)[k - 1]
            a, b = g[target].double(), gp[target].double()
            rows.append(
                {
                    "layer": k,
                    "l2": norm2([a - b]),
                    "cosine": float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)),
                    "grad_norm": norm2([a]),
                    "grad_prime_norm": norm2([b]),
                }
            )
        return rows
