"""The shape every measurement shares: options with a schedule, a table, and two hook points."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import torch.nn as nn

from bnsweep.measure.probe import StepContext
from bnsweep.measure.schedule import Schedule


class Measurement:
    """A measured quantity. Subclasses set `name`, `Options`, `columns`, `definition` and implement the hooks."""

    name: ClassVar[str]
    Options: ClassVar[type[Schedule]]
    columns: ClassVar[list[tuple[str, pa.DataType]]]
    definition: ClassVar[int] = 1  # bump when the definition changes; stored on every row

    def __init__(self, options: Schedule, model: nn.Module, seed: int):
        self.options, self.model, self.seed = options, model, seed
        self.hook_s = 0.0  # time spent inside the forward pass, if any

    def before_forward(self, step: int) -> None:
        """Called before the forward pass of a scheduled step."""

    def after_backward(self, ctx: StepContext) -> list[dict]:
        """Called once the step's gradient is known, before the optimizer applies it; returns rows."""
        return []

    def collect(self) -> list[dict]:
        """Rows gathered outside after_backward (e.g. during the forward pass)."""
        return []
