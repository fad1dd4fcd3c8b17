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
    """SafeLoader reading plain scalars as YAML 1.2's core schema, not YAML 1.1's.

    YAML 1.1 reads `010` as 8 (octal), `1:30` as 90 (base 60), `yes`/`no`/`on`/`off` as booleans and
    `2024-01-01` as a date, which silently changes seeds and names; YAML 1.2 reads `010` as 10 and the
    rest as strings (`0o10` is octal there). Also: 1e-6 is a float (YAML 1.1 wants 1.0e-6), `_` may
    group digits, merge keys (`<<`) work, and duplicate or non-scalar keys and integers no int64
    column can hold are refused.
    """

    yaml_implicit_resolvers: dict = {}  # filled below with the core schema only

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise UserError(f"line {line}: a mapping key must be a plain value, not a {key_node.id}")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: key {short(key)} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        value = sign * int(digits[2:] if base != 10 else digits, base)
        if abs(value) > MAX_INT:
            raise UserError(f"line {node.start_mark.line + 1}: integer {short(value)} out of range; "
                            "integers are at most 2**63 - 1")
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
for _tag, _pattern, _first in (  # YAML 1.2 core schema (yaml.org/spec/1.2.2/#1032-tag-resolution), plus `_` in numbers
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9][0-9_]*|0o[0-7][0-7_]*|0x[0-9a-fA-F][0-9a-fA-F_]*)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float",  # a digit, and a dot or an exponent: 1e-6, 1.0e-6, .5, 2.; not "." nor "10"
     r"^[-+]?(?:\d[\d_]*\.[\d_]*(?:[eE][-+]?\d+)?|\d[\d_]*[eE][-+]?\d+|\.\d[\d_]*(?:[eE][-+]?\d+)?)$"
     r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$", list("-+0123456789.")),
    ("tag:yaml.org,2002:merge", r"^<<$", ["<"]),
):
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


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


def read_yaml(path: str | Path, kind: str = "a sweep spec is a YAML mapping with keys name, output, dataset, grid, ...") -> dict:
    """The YAML mapping in `path`, or a one-line UserError; `kind` says what the mapping should be."""
    p = Path(path)
    try:
        if not p.is_file():
            raise UserError(f"{path}: no such file" if not p.exists() else f"{path}: not a file")
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
        raise UserError(f"{path}: {kind}; got {'an empty file' if raw is None else type(raw).__name__}")
    return raw


def _parse(text: str):
    """Compose, count (aliases expanded), then construct: the count comes before any object is built."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        try:
            return loader.construct_document(node)
        except (ValueError, TypeError, OverflowError) as e:  # an explicit tag on a value it does not fit: `!!int abc`
            raise UserError(f"a value does not fit its tag: {short(' '.join(str(e).split()), 200)}") from None
    finally:
        loader.dispose()


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    from bnsweep import destinations

    raw = read_yaml(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path}: {validation_error(e)}") from None
    try:
        destinations.output(spec.output)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return spec


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
