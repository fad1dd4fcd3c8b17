"""The base of every option model in a sweep file: unknown keys are errors, values immutable, types strict."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Base of every option model: unknown keys are errors, values are immutable, types strict, numbers finite.

    Strict: a bool or a string is never read as a number (`lr: true`, `lr: "0.1"`); finite: inf and
    nan are refused here, not by a worker after the JSON round trip (JSON has no inf).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NoOptions(Options):
    """This variant takes no options."""
