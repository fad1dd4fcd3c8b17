"""When a measurement runs: every k steps, log-spaced, or an explicit list (cf. cockpit's schedules).

A schedule resolves to the same step set in every cell with the same number of steps, so cells
compare step by step; step 0 and the last step (steps - 1) are always included.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, field_validator, model_validator

from bnsweep.limits import MAX_STEPS
from bnsweep.options import Options, unique


class LogSpacing(Options):
    points: int = Field(ge=2, le=MAX_STEPS, description="Number of log-spaced steps between 1 and the last step (plus step 0).")


class Schedule(Options):
    """Exactly one of `every`, `log` or `steps`."""

    every: int | None = Field(None, gt=0, le=MAX_STEPS, description="Measure every k steps.")
    log: LogSpacing | None = Field(None, description="Measure at log-spaced steps (dense early, sparse late).")
    steps: list[Annotated[int, Field(ge=0, le=MAX_STEPS)]] | None = Field(
        None, min_length=1, description="Measure at exactly these steps (0-based)."
    )

    @field_validator("steps")
    @classmethod
    def _steps_once(cls, v: list[int] | None) -> list[int] | None:
        return v if v is None else unique("steps", v)

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        given = [k for k in ("every", "log", "steps") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a schedule needs exactly one of every, log, steps (got {', '.join(given) or 'none'})")
        return self

    def resolve(self, total: int) -> frozenset[int]:
        """The steps in [0, total) to measure at."""
        last = total - 1
        if self.every is not None:
            chosen = set(range(0, total, self.every))
        elif self.log is not None:
            chosen = set(np.unique(np.round(np.logspace(0, np.log10(max(last, 1)), self.log.points))).astype(int).tolist())
        else:
            chosen = {s for s in self.steps if s <= last}
        return frozenset(chosen | {0, last})
