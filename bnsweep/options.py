"""The base of every option model in a sweep file: unknown keys are errors, values immutable, types strict."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Base of every option model: unknown keys are errors, values are immutable, types strict, numbers finite.

    Strict: a bool or a string is never read as a number (`lr: true`, `lr: "0.1"`); finite: inf and
    nan are refused here, not by a worker after the JSON round trip (JSON has no inf).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # Fields added after cell ids were fixed: left out of a cell's identity while at their default,
    # so the cells of earlier sweeps keep their ids (see `identity`).
    late_fields: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The JSON dump that goes into a cell id: every field, less late fields left at their default."""
        d = self.model_dump(mode="json")
        for k in self.late_fields:
            if getattr(self, k) == type(self).model_fields[k].default:
                del d[k]
        return d


class NoOptions(Options):
    """This variant takes no options."""
