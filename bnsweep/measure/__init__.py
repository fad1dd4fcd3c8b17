"""The paper's measurements, taken during training without changing it (docs/protocol.md section 4).

A spec's `measure:` block enables any of `MEASURES`, each with a schedule; `session.Measurements`
runs the due ones at a step once its gradient is known and before the optimizer applies it.

This registry imports no torch (each measurement imports it where it computes), so the table
layout (`bnsweep.layout`) and the analysis read the measurements' tables without loading torch.
"""

from __future__ import annotations

import sys

import pyarrow as pa
from pydantic import Field, create_model

from bnsweep.measure.activations import Activations
from bnsweep.measure.base import Measurement
from bnsweep.measure.curvature import Curvature
from bnsweep.measure.ics import Ics
from bnsweep.measure.landscape import Landscape
from bnsweep.options import Options

MEASURES: dict[str, type[Measurement]] = {
    "ics": Ics,
    "landscape": Landscape,
    "activations": Activations,
    "curvature": Curvature,
}

MeasureSpec = create_model(
    "MeasureSpec", __base__=Options,
    **{name: (cls.Options | None, Field(None, description=sys.modules[cls.__module__].__doc__.strip().splitlines()[0]))
       for name, cls in MEASURES.items()},
)

ROW_COLUMNS = [("step", pa.int64()), ("mode", pa.string()), ("definition", pa.int64())]


def enabled(spec) -> list[tuple[str, object]]:
    """(name, options) of every measurement a MeasureSpec turns on, in registry order."""
    return [(n, opts) for n in MEASURES if spec is not None and (opts := getattr(spec, n)) is not None]


def layered(spec) -> list[tuple[str, list[int]]]:
    """(measurement, layers) for every enabled measurement that names weight layers."""
    return [(n, opts.layers) for n, opts in enabled(spec) if hasattr(opts, "layers")]
