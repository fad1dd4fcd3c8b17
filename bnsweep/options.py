"""The base of every option model in a sweep file: unknown keys are errors, values immutable, types strict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Base of every option model: unknown keys are errors, values are immutable, types strict, numbers finite.

    Strict: a bool or a string is never read as a number (`lr: true`, `lr: "0.1"`); finite: inf and
    nan are refused here, not by a worker after the JSON round trip (JSON has no inf).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # Fields added after cell ids were fixed, each with the value every earlier cell had: left out of a
    # cell's identity at that value, so earlier cells keep their ids, and a changed default changes ids.
    late_fields: ClassVar[Mapping[str, Any]] = {}

    def identity(self) -> dict[str, Any]:
        """The JSON dump that goes into a cell id: every field, less late fields at their earlier value."""
        d = self.model_dump(mode="json")
        for k, before in self.late_fields.items():
            if d[k] == before:
                del d[k]
        return d


class NoOptions(Options):
    """This variant takes no options."""


def unique(kind: str, values: list) -> list:
    """`values`, refused (ValueError) when one appears twice; linear in their number (Counter, not list.count)."""
    from bnsweep.limits import short

    if dupes := sorted((v for v, n in Counter(values).items() if n > 1), key=str):
        raise ValueError(f"duplicate {kind} values {short(dupes)}; each value may appear once")
    return values
