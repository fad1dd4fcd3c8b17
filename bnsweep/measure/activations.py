"""Activation distributions (Figs. 1c, 2, 6, 8, 9): one unit per layer, its values over the batch.

The tensor is the norm layer's output after weight layer #k (after noise, before the ReLU) [I],
or the weight layer's output when the network has no norm there. The unit is drawn once per run
from the cell's seed. Read from the training forward pass itself through a hook.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field, field_validator

from bnsweep.limits import MAX_DEPTH
from bnsweep.measure.base import Measurement
from bnsweep.measure.schedule import Schedule
from bnsweep.options import unique

if TYPE_CHECKING:
    import torch

QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
Q_COLS = [f"q{round(q * 100):02d}" for q in QUANTILES]


class ActivationsOptions(Schedule):
    layers: list[int] = Field(
        min_length=1,
        max_length=MAX_DEPTH,
        description="Weight layers #k from 1 (VGG #3, #11 in Fig. 1; DLN #1, #11, #24 in Fig. 9) [P].",
    )

    @field_validator("layers")
    @classmethod
    def _layers_once(cls, v: list[int]) -> list[int]:
        return unique("layers", v)  # a layer listed twice would store its rows twice


def unit_stats(values: torch.Tensor) -> dict:
    """count, mean, var (population), min, quantiles and max of a 1-D tensor."""
    import torch

    v = values.detach().double()
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64, device=v.device))
    return {"count": v.numel(), "mean": v.mean().item(), "var": v.var(unbiased=False).item(),
            "min": v.min().item(), **dict(zip(Q_COLS, q.tolist())), "max": v.max().item()}


class Activations(Measurement):
    name = "activations"
    Options = ActivationsOptions
    columns = [("layer", pa.int64()), ("unit", pa.int64()), ("count", pa.int64()), ("mean", pa.float64()), ("var", pa.float64()),
               ("min", pa.float64()), *[(c, pa.float64()) for c in Q_COLS], ("max", pa.float64())]

    example = {"every": 5, "layers": [1, 3]}
    in_forward = True

    def __init__(self, options, model, seed):
        import torch

        from bnsweep.models import layer_outputs, weight_layers

        super().__init__(options, model, seed)
        mods, weights = layer_outputs(model), weight_layers(model)
        g = torch.Generator().manual_seed(seed)  # the units are fixed for the run, drawn from the cell's seed
        self.targets = [(k, mods[k - 1], int(torch.randint(weights[k - 1].weight.shape[0], (1,), generator=g))) for k in options.layers]
        self.rows: list[dict] = []
        self.handles: dict = {}

    def before_forward(self, step: int) -> None:
        for k, module, unit in self.targets:
            def hook(_module, _inputs, output, k=k, unit=unit):
                self.handles.pop(k).remove()  # the training forward pass only, not the probes' passes
                t0 = time.perf_counter()
                self.rows.append({"layer": k, "unit": unit, **unit_stats(output[:, unit].reshape(-1))})
                self.hook_s += time.perf_counter() - t0
            self.handles[k] = module.register_forward_hook(hook)

    def collect(self) -> list[dict]:
        for h in self.handles.values():
            h.remove()
        self.handles.clear()
        rows, self.rows = self.rows, []
        return rows
