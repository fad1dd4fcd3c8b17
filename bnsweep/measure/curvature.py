"""Both ends of the Hessian's spectrum by Lanczos on Hessian-vector products (beyond the paper).

H = the Hessian of the step's batch loss in all parameters, in training mode (the loss SGD descends,
batch statistics and the step's noise included). `lambda_max` = its largest algebraic eigenvalue
(the sharpness, compared with 2/lr), `lambda_min` = its smallest (negative curvature).

Method: scipy's Lanczos, ARPACK's implicitly restarted Lanczos (`scipy.sparse.linalg.eigsh` on a
`LinearOperator`), `which='LA'` for lambda_max, then `which='LA'` on the shifted map lambda_max I - H
for lambda_min (the same Krylov spaces as `which='SA'`, with the stopping rule on the spectrum's width).
Why Lanczos: its Ritz values lie inside [lambda_min, lambda_max] and converge to the ends, so it
cannot return the wrong end of the spectrum. Power iteration, used before (definition 1), converges to
the eigenvalue of largest *magnitude*, which at initialisation of BatchNorm networks is the negative
end (DLN batch: -2.75e6 against a sharpness of +1.95e6); and it needs far more products when the top
eigenvalues are close. ARPACK is a well-kept library; nothing here re-implements it.

Error, per end, from the result itself: r = Hv - theta v for the returned unit vector v, with one
more product. A symmetric H has an eigenvalue within ||r|| of theta, so `*_error` = ||r|| / |theta|
bounds the relative error. An end is converged when ||r|| <= tol |lambda_max| (lambda_max) or
||r|| <= tol (lambda_max - lambda_min) (lambda_min, which may be near 0 on the spectrum's scale).
A probe that exhausts `max_hvps` without converging writes NaN with its flag false, never a
value short of the end. The start vector is drawn on the host in float64 from (seed, step), so
every device starts from the same vector. Models of at most `basis` parameters are solved densely
from their n products (ARPACK needs n > basis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field, model_validator

from bnsweep.limits import MAX_HVPS, MAX_LANCZOS_BASIS, MIN_CURVATURE_TOL
from bnsweep.measure.base import Measurement
from bnsweep.measure.schedule import Schedule

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import polars as pl

    from bnsweep.measure.probe import StepContext


class CurvatureOptions(Schedule):
    tol: float = Field(
        1e-3, ge=MIN_CURVATURE_TOL, le=0.1,
        description="Relative error each end must reach: residual ||Hv - lambda v|| <= tol |lambda_max| "
                    "(lambda_max), <= tol (lambda_max - lambda_min) (lambda_min).",
    )
    max_hvps: int = Field(
        1000, ge=10, le=MAX_HVPS,
        description=f"Most Hessian-vector products per end per probe (at most {MAX_HVPS:,}); an end that "
                    "reaches it unconverged is written as NaN with its converged flag false.",
    )
    basis: int = Field(
        20, ge=3, le=MAX_LANCZOS_BASIS,
        description=f"Lanczos vectors kept (ARPACK's ncv; at most {MAX_LANCZOS_BASIS}): host memory of about "
                    "(basis + 3) x parameters x 8 bytes during a probe.",
    )

    @model_validator(mode="after")
    def _budget_holds_a_basis(self) -> CurvatureOptions:
        if self.max_hvps < self.basis:
            raise ValueError(f"max_hvps ({self.max_hvps}) must be >= basis ({self.basis}): one Lanczos pass needs basis products")
        return self


@dataclass
class End:
    """One end of the spectrum: its eigenvalue estimate, the residual norm of its vector, and its products."""

    value: float
    residual: float
    hvps: int
    converged: bool

    @property
    def error(self) -> float:
        """||r|| / |value|: the bound on the relative error (inf at a value of 0 with a non-zero residual)."""
        if math.isnan(self.value):
            return math.nan
        return self.residual / abs(self.value) if self.value != 0 else (0.0 if self.residual == 0 else math.inf)


class _Exhausted(Exception):
    """The product budget ran out inside ARPACK."""


class Counted:
    """A symmetric linear map on float64 vectors, counting its products and refusing any past `budget`."""

    def __init__(self, matvec: Callable[[np.ndarray], np.ndarray], n: int, shift: float = 0.0, sign: float = 1.0):
        self.matvec, self.n, self.shift, self.sign = matvec, n, shift, sign
        self.count, self.budget = 0, math.inf

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.count >= self.budget:
            raise _Exhausted
        self.count += 1
        hx = self.matvec(x.reshape(-1))
        return self.shift * x.reshape(-1) + self.sign * hx  # shift I + sign H


def top(op: Counted, v0: np.ndarray, tol: float, max_hvps: int, basis: int) -> tuple[float, np.ndarray | None]:
    """(largest eigenvalue, its unit vector) of `op` by ARPACK, or (nan, None) if `max_hvps` products do not suffice."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    ncv = min(basis, op.n - 1)
    op.budget = op.count + max_hvps
    a = LinearOperator((op.n, op.n), matvec=op, dtype="float64")
    try:  # ARPACK counts restarts, not products, and spends at least one product per restart: the budget stops it
        vals, vecs = eigsh(a, k=1, which="LA", v0=v0, ncv=ncv, tol=tol, maxiter=max_hvps)
    except (_Exhausted, ArpackNoConvergence, ArpackError):
        return math.nan, None
    return float(vals[0]), vecs[:, 0]


def residual(matvec: Callable[[np.ndarray], np.ndarray], value: float, v: np.ndarray) -> float:
    """||H v - value v|| for a unit vector v (one product)."""
    import numpy as np

    return float(np.linalg.norm(matvec(v) - value * v))


def extremes(matvec: Callable[[np.ndarray], np.ndarray], n: int, v0: np.ndarray, options: CurvatureOptions) -> tuple[End, End]:
    """(lambda_max, lambda_min) of the symmetric map `matvec` on R^n, each with its residual, products and flag."""
    import numpy as np

    if n <= options.basis:  # ARPACK needs n > ncv: n products give H itself
        h = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        w, vecs = np.linalg.eigh((h + h.T) / 2)
        ends = [(w[-1], vecs[:, -1]), (w[0], vecs[:, 0])]
        res = [float(np.linalg.norm(h @ v - lam * v)) for lam, v in ends]
        return End(float(w[-1]), res[0], n, True), End(float(w[0]), res[1], 0, True)
    op = Counted(matvec, n)
    hi, v = top(op, v0, options.tol, options.max_hvps, options.basis)
    if v is None:
        return End(math.nan, math.nan, op.count, False), End(math.nan, math.nan, 0, False)
    r_hi = residual(matvec, hi, v)
    upper = End(hi, r_hi, op.count + 1, r_hi <= options.tol * abs(hi))
    # lambda_min = hi - (largest eigenvalue of hi I - H): ARPACK's relative rule on it is a rule on the width
    shifted = Counted(matvec, n, shift=hi, sign=-1.0)
    width, u = top(shifted, v0, options.tol, options.max_hvps, options.basis)
    if u is None:
        return upper, End(math.nan, math.nan, shifted.count, False)
    lo = hi - width
    r_lo = residual(matvec, lo, u)
    return upper, End(lo, r_lo, shifted.count + 1, r_lo <= options.tol * max(hi - lo, abs(lo)))


class Curvature(Measurement):
    name = "curvature"
    Options = CurvatureOptions
    definition = 2  # 1: power iteration, the eigenvalue of largest magnitude; 2: Lanczos, both ends
    columns = [
        ("lambda_max", pa.float64()),
        ("lambda_max_error", pa.float64()),
        ("lambda_max_converged", pa.bool_()),
        ("lambda_min", pa.float64()),
        ("lambda_min_error", pa.float64()),
        ("lambda_min_converged", pa.bool_()),
        ("hvps", pa.int64()),
    ]
    retired = [("iterations", pa.int64()), ("rel_change", pa.float64())]  # definition 1's
    example = {"steps": [2, 7], "max_hvps": 200}

    @staticmethod
    def summary(t: pl.LazyFrame) -> pl.LazyFrame:
        """Per probed step: lambda_max where it converged, else NaN (counted as left out by the analysis); rows of
        definition 1 (power iteration, no flag) count as unconverged."""
        import polars as pl

        converged = pl.col("lambda_max_converged").fill_null(False)
        return (t.select("cell_id", "step", lambda_max=pl.when(converged).then(pl.col("lambda_max")).otherwise(float("nan")))
                .unpivot(index=["cell_id", "step"], variable_name="quantity"))

    def after_backward(self, ctx: StepContext) -> list[dict]:
        import numpy as np
        import torch

        p = {n: v.detach().requires_grad_(True) for n, v in ctx.params().items()}
        ps = list(p.values())
        loss = ctx.loss_at(p)
        grads = torch.autograd.grad(loss, ps, create_graph=True)
        sizes = [t.numel() for t in ps]

        def matvec(x: np.ndarray) -> np.ndarray:  # float64 host vector -> H x, computed in the model's dtype and device
            flat = torch.from_numpy(np.ascontiguousarray(x)).to(ps[0].device, ps[0].dtype)
            v = [t.view_as(q) for t, q in zip(flat.split(sizes), ps)]
            hv = torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]).to("cpu", torch.float64).numpy()

        n = sum(sizes)
        v0 = np.random.default_rng([self.seed, ctx.step]).standard_normal(n)
        upper, lower = extremes(matvec, n, v0, self.options)
        return [{
            "lambda_max": upper.value, "lambda_max_error": upper.error, "lambda_max_converged": upper.converged,
            "lambda_min": lower.value, "lambda_min_error": lower.error, "lambda_min_converged": lower.converged,
            "hvps": upper.hvps + lower.hvps,
        }]
