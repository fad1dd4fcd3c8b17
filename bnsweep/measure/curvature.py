"""Top Hessian eigenvalue by power iteration on Hessian-vector products (beyond the paper).

On the step's batch, training mode: v <- Hv / ||Hv|| from a seeded random start; lambda is the
Rayleigh quotient v.Hv. Power iteration converges to the eigenvalue of largest magnitude.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field

from bnsweep.measure.base import Measurement
from bnsweep.measure.schedule import Schedule

if TYPE_CHECKING:
    import polars as pl
    import torch

    from bnsweep.measure.probe import StepContext


class CurvatureOptions(Schedule):
    iterations: int = Field(20, gt=0, description="Most power iterations.")
    tol: float = Field(1e-3, ge=0, description="Stop once lambda changes by less than this fraction.")


def power_iteration(hvp, shapes: list[torch.Tensor], iterations: int, tol: float, generator: torch.Generator) -> tuple[float, int, float]:
    """(lambda, iterations used, relative change at stop) for the linear map `hvp` on tensors shaped like `shapes`."""
    import torch

    from bnsweep.measure.probe import norm2

    v = [torch.randn(s.shape, generator=generator, device=s.device, dtype=s.dtype) for s in shapes]
    n = norm2(v)
    v = [t / n for t in v]
    lam, rel = float("nan"), float("nan")
    for i in range(1, iterations + 1):
        hv = hvp(v)
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))
        rel = abs(new - lam) / abs(new) if lam == lam and new != 0 else float("inf")
        lam = new
        n = norm2(hv)
        if n == 0:
            return 0.0, i, 0.0
        v = [t / n for t in hv]
        if rel < tol:
            return lam, i, rel
    return lam, iterations, rel


class Curvature(Measurement):
    name = "curvature"
    Options = CurvatureOptions
    columns = [("lambda_max", pa.float64()), ("iterations", pa.int64()), ("rel_change", pa.float64())]
    example = {"steps": [2, 7], "iterations": 3}

    @staticmethod
    def summary(t: pl.LazyFrame) -> pl.LazyFrame:
        """Per probed step: lambda_max."""
        return t.select("cell_id", "step", "lambda_max").unpivot(index=["cell_id", "step"], variable_name="quantity")

    def after_backward(self, ctx: StepContext) -> list[dict]:
        import torch

        p = {n: v.detach().requires_grad_(True) for n, v in ctx.params().items()}
        loss = ctx.loss_at(p)
        grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
        hvp = lambda v: [h.detach() for h in torch.autograd.grad(grads, list(p.values()), grad_outputs=v, retain_graph=True)]
        first = next(iter(p.values()))
        gen = torch.Generator(device=first.device).manual_seed(self.seed * 1_000_003 + ctx.step)
        lam, its, rel = power_iteration(hvp, list(p.values()), self.options.iterations, self.options.tol, gen)
        return [{"lambda_max": lam, "iterations": its, "rel_change": rel}]
