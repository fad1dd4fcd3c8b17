"""Reading a sweep file: YAML with line-numbered syntax errors, then `SweepSpec` validation.

Every failure becomes a one-line `UserError` naming the file, the field and what is allowed.
The YAML is composed into nodes first and its size counted with every alias expanded (shared
nodes counted once per use, in time linear in the file), so an alias bomb is refused before
anything is built from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import ValidationError

from bnsweep.errors import UserError, validation_error
from bnsweep.limits import MAX_CELLS, MAX_INT, MAX_SPEC_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, short
from bnsweep.spec import CellConfig, SweepSpec, check_count, expand, iter_cells


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-6 as a float (YAML 1.1 wants 1.0e-6), rejects duplicate and
    non-scalar keys, and integers no int64 column can hold."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise UserError(f"line {line}: a mapping key must be a plain value, not a {key_node.id}")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: key {short(key)} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        value = super().construct_yaml_int(node)
        if abs(value) > MAX_INT:
            raise UserError(f"line {node.start_mark.line + 1}: integer {short(value)} out of range; "
                            "integers are at most 2**63 - 1")
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def expanded_size(root: yaml.Node) -> int:
    """Nodes in the document with every alias expanded: a shared node counts once per use.

    Iterative and memoised on node identity, so linear in the composed (unexpanded) document;
    refuses recursive aliases, nesting deeper than MAX_YAML_DEPTH, and more than MAX_YAML_NODES.
    """
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    open_: set[int] = set()
    while stack:
        node, depth, children_done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            size[id(node)] = 1
            continue
        kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            open_.discard(id(node))
            size[id(node)] = total = 1 + sum(size[id(k)] for k in kids)
            if total > MAX_YAML_NODES:
                raise UserError(f"line {node.start_mark.line + 1}: the document expands (aliases included) to "
                                f"more than {MAX_YAML_NODES:,} values; a sweep file may hold at most that many")
            continue
        if id(node) in size:
            continue
        if depth > MAX_YAML_DEPTH:
            raise UserError(f"line {node.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep")
        open_.add(id(node))
        stack.append((node, depth, True))
        for k in kids:
            if id(k) in open_:
                raise UserError(f"line {k.start_mark.line + 1}: a recursive alias (a collection that contains itself)")
            if id(k) not in size:
                stack.append((k, depth + 1, False))
    return size[id(root)]


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
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise UserError(f"{path}: {p.stat().st_size:,} bytes; a sweep file may be at most {MAX_SPEC_BYTES:,} bytes")
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}") from None
    try:
        raw = _parse(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(e.problem).split())[:200]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: YAML syntax error{at}: {problem}") from None
    except yaml.YAMLError as e:  # the reader's errors: control characters, NUL bytes
        raise UserError(f"{path}: not a YAML text: {' '.join(str(e).split())[:200]}") from None
    except RecursionError:
        raise UserError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a sweep spec is a YAML mapping with keys name, output, dataset, grid, ...; got {type(raw).__name__}")
    return raw


def _parse(text: str):
    """Compose, count (aliases expanded), then construct: the count comes before any object is built."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    raw = read_yaml(path)
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path}: {validation_error(e)}") from None


def load_cells(path: str | Path, max_cells: int = MAX_CELLS) -> tuple[SweepSpec, list[CellConfig]]:
    """Read, validate and expand a sweep file (its cell count checked before expansion)."""
    spec = load_spec(path)
    try:
        return spec, expand(spec, max_cells)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def stream_cells(path: str | Path, max_cells: int = MAX_CELLS) -> tuple[SweepSpec, int, Iterator[CellConfig]]:
    """Read and validate a sweep file; its cell count (checked) and its cells one at a time."""
    spec = load_spec(path)
    try:
        n = check_count(spec, max_cells)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None

    def cells() -> Iterator[CellConfig]:
        try:
            yield from iter_cells(spec)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

    return spec, n, cells()
