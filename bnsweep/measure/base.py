"""The shape every measurement shares: options with a schedule, a table, and two hook points."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from bnsweep.measure.schedule import Schedule

if TYPE_CHECKING:  # torch is imported where a measurement computes, not here (see bnsweep/measure/__init__.py)
    import polars as pl
    import torch
    import torch.nn as nn

    from bnsweep.measure.probe import StepContext


Point = tuple[dict[str, "torch.Tensor"], list[str] | None]  # (parameters, names to differentiate; None: all)


class Measurement:
    """A measured quantity. Subclasses set `name`, `Options`, `columns`, `definition`, `example` and
    `summary`, and implement the hooks.

    A quantity made of losses and gradients at points on the step's batch implements `points` and
    `rows` instead of `after_backward`: the unpacked step evaluates its points one by one
    (`StepContext.grad_at`), a pack evaluates every member's points in one stacked pass
    (`bnsweep.measure.stacked`); the quantity is written once.

    `example` is a small valid options dict (the tests run every measurement with it); `summary`
    turns the measurement's table into long rows `(cell_id, step[, layer], quantity, value)` for the
    smoothness summaries, or is None when the measurement has no summary.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Schedule]]
    columns: ClassVar[list[tuple[str, pa.DataType]]]
    definition: ClassVar[int] = 1  # bump when the definition changes; stored on every row
    # columns that rows of earlier definitions carry and this one does not: their tables still verify and read
    # (without them); `columns` of the current definition that those rows lack read as null
    retired: ClassVar[list[tuple[str, pa.DataType]]] = []
    example: ClassVar[dict[str, Any]]
    summary: ClassVar[Callable[[pl.LazyFrame], pl.LazyFrame] | None] = None
    in_forward: ClassVar[bool] = False  # its rows come from the training forward pass (before_forward's hooks, collect)

    def __init__(self, options: Schedule, model: nn.Module, seed: int):
        self.options, self.model, self.seed = options, model, seed
        self.hook_s = 0.0  # time spent inside the forward pass, if any

    def before_forward(self, step: int) -> None:
        """Called before the forward pass of a scheduled step."""

    def points(self, ctx: StepContext) -> list[Point] | None:
        """Where the measurement needs (loss, gradient) on the step's batch, in training mode with the step's
        noise: (parameters, the names to differentiate, None for all); None: it measures in `after_backward`."""
        return None

    def rows(self, ctx: StepContext, results: list[tuple[float, dict[str, torch.Tensor]]]) -> list[dict]:
        """Its rows from the (loss, gradient) at each of its `points`, in their order."""
        raise NotImplementedError(f"{self.name} measures in after_backward")

    def after_backward(self, ctx: StepContext) -> list[dict]:
        """Called once the step's gradient is known, before the optimizer applies it; returns rows."""
        points = self.points(ctx)
        return [] if points is None else self.rows(ctx, [ctx.grad_at(p, wrt) for p, wrt in points])

    def collect(self) -> list[dict]:
        """Rows gathered outside after_backward (e.g. during the forward pass)."""
        return []
