"""Reading a sweep file: YAML with line-numbered syntax errors, then `SweepSpec` validation.

Every failure becomes a one-line `UserError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from bnsweep.errors import UserError, validation_error
from bnsweep.spec import CellConfig, SweepSpec, expand


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-6 as a float (YAML 1.1 wants 1.0e-6) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(  # a digit, and a dot or an exponent: 1e-6, 1.0e-6, .5, 2.; not "." nor "10"
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.\d*(?:[eE][-+]?\d+)?|\d[\d_]*[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?)$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such spec file" if not p.exists() else f"{path}: not a file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise UserError(f"{path}: YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {e.problem}") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a sweep spec is a YAML mapping with keys name, output, dataset, grid, ...; got {type(raw).__name__}")
    return raw


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    raw = read_yaml(path)
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path}: {validation_error(e)}") from None


def load_cells(path: str | Path) -> tuple[SweepSpec, list[CellConfig]]:
    """Read, validate and expand a sweep file."""
    spec = load_spec(path)
    try:
        return spec, expand(spec)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
