"""Property-based fuzzing of sweep files: mutations of a valid spec, through `validate` and `plan` in-process.

For every generated file: exit 0 or 2, never an exception (a traceback), exactly one `error:` line
on exit 2, and no file anywhere under the scratch folder (the output included) created, changed or
removed, whatever the exit. A spec that validates must also be one a worker accepts: every cell
survives the JSON trip to a worker unchanged, and its batch fits its data set.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import tree_digest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bnsweep.cli import main

pytestmark = pytest.mark.slow

BASE = {
    "name": "fuzz",
    "device": "cpu",
    "dataset": {"name": "gaussian_regression", "samples": 64, "test_samples": 32},
    "train": {"steps": 40, "batch_size": 32, "eval_every": 20},
    "model": {"dln": {"depth": 4}, "vgg": {"width": 0.0625}},
    "grid": [
        {"arch": ["dln"], "norm": ["none", "batch"], "lr": [1e-3, 1e-2], "seed": [0, 1]},
        {"arch": ["vgg_mini"], "norm": ["l2"], "lr": [0.1], "overrides": {"dataset": {"name": "digits"}}},
    ],
}

# Where a mutation lands: every kind of field (numbers, lists, names, nested options, unknown keys).
PATHS = [
    ("name",),
    ("output",),
    ("device",),
    ("checkpoint_every",),
    ("colour",),
    ("dataset",),
    ("dataset", "name"),
    ("dataset", "samples"),
    ("dataset", "dim"),
    ("dataset", "seed"),
    ("dataset", "test_samples"),
    ("train",),
    ("train", "steps"),
    ("train", "batch_size"),
    ("train", "momentum"),
    ("train", "weight_decay"),
    ("train", "eval_every"),
    ("train", "augment"),
    ("train", "divergence_factor"),
    ("train", "eval_batch_size"),
    ("model", "dln", "depth"),
    ("model", "dln", "width"),
    ("model", "vgg", "width"),
    ("model", "vgg", "head"),
    ("norm_options", "batch", "momentum"),
    ("norm_options", "noisy_batch", "n_sigma"),
    ("resources", "cpu"),
    ("resources", "gpu"),
    ("measure", "ics"),
    ("measure", "ics", "layers"),
    ("measure", "ics", "every"),
    ("measure", "curvature", "steps"),
    ("measure", "ics", "log", "points"),
    ("measure", "ics", "steps"),
    ("measure", "landscape", "every"),
    ("measure", "landscape", "eta", "points"),
    ("measure", "landscape", "eta", "to"),
    ("measure", "activations", "layers"),
    ("grid",),
    ("grid", 0),
    ("grid", 0, "arch"),
    ("grid", 0, "norm"),
    ("grid", 0, "lr"),
    ("grid", 0, "seed"),
    ("grid", 0, "lr", 0),
    ("grid", 0, "seed", 1),
    ("grid", 0, "overrides"),
    ("grid", 0, "overrides", "train", "batch_size"),
    ("grid", 0, "overrides", "dataset"),
    ("grid", 1, "overrides", "dataset", "test_fraction"),
    ("grid", 1, "lr"),
    ("grid", 1, "arch", 0),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 2, 64, 65, 1438, 1439, 10**6, 10**6 + 1, 10**15, 10**15 + 1, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 1.0, 2.0]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "0.1", "true", "dln", "batch", "cuda", "digits", "cifar10", "../x", "a" * 300]),
)
hostile_numbers = st.one_of(  # the values that once validated and then failed in a run
    st.sampled_from(
        [math.inf, -math.inf, math.nan, True, False, "0.1", "1", 2**70, 10**12, 10**16, 65, 2000, 300 * "a",
         1e-6, 0.00015, [2, 2, 2], "mock:///x", "foo://x", "/dev/null", "1:30"]
    ),
    st.lists(st.sampled_from([math.inf, math.nan, True, "0.1", 2**70, 0.1, 1]), min_size=1, max_size=3),
)
values = st.one_of(
    hostile_numbers,
    hostile_numbers,
    scalars,
    st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=8,
    ),
)


def _set(doc, path, value) -> None:
    """Set `path` in `doc` to `value`, creating mappings on the way; a path through a non-container is skipped."""
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {}) if not isinstance(key, int) else None
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
        if node is None:
            return
    last = path[-1]
    if isinstance(node, dict) and not isinstance(last, int):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value


def _delete(doc, path) -> None:
    node = doc
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    with contextlib.suppress(KeyError, IndexError, TypeError):
        del node[path[-1]]


mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), values),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
)
text_damage = st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=4)))


def _document(mutations, damage, output: str) -> bytes:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["output"] = output
    for op, path, value in mutations:
        if op == "set":
            _set(doc, path, value)
        else:
            _delete(doc, path)
    data = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
    if damage is not None:  # raw bytes spliced into the text: syntax errors, control characters, bad UTF-8
        at, blob = damage
        at %= len(data) + 1
        data = data[:at] + blob + data[at:]
    return data


NUMBERS = {
    "steps",
    "batch_size",
    "momentum",
    "weight_decay",
    "eval_every",
    "divergence_factor",
    "eval_batch_size",
    "samples",
    "dim",
    "test_samples",
    "depth",
    "width",
    "cpu",
    "gpu",
    "lr",
    "seed",
    "checkpoint_every",
    "n_sigma",
    "every",
}


def _numbers_are_numbers(node, key=None) -> None:
    """In a file that validated, every value of a numeric field is a real int or float (no bool, no string)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _numbers_are_numbers(v, k)
    elif isinstance(node, list):
        for v in node:
            _numbers_are_numbers(v, key)
    elif key in NUMBERS and node is not None:
        assert type(node) in (int, float), f"{key}: {node!r} was accepted as a number"
        assert math.isfinite(node), f"{key}: {node!r} was accepted"


def _worker_accepts(spec_path: Path) -> None:
    """Every cell of a spec that validated survives the trip to a worker, and its batch fits its data."""
    from bnsweep.specfile import read_yaml

    _numbers_are_numbers(read_yaml(spec_path))
    from bnsweep.data import DATASETS
    from bnsweep.spec import CellConfig
    from bnsweep.specfile import load_cells

    _, cells = load_cells(spec_path)
    for c in cells:
        again = CellConfig.model_validate_json(c.model_dump_json())
        assert again == c and again.cell_id == c.cell_id
        info = DATASETS[c.dataset.name].info(c.dataset)
        assert 0 < c.train.batch_size <= info.train_size
        assert all(math.isfinite(x) for x in (c.lr, c.train.momentum, c.train.weight_decay, c.resources.cpu))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    mutations=st.lists(mutation, min_size=1, max_size=4),
    damage=text_damage,
    command=st.sampled_from(["validate", "plan"]),
)
def test_mutated_specs_exit_0_or_2_and_write_nothing(mutations, damage, command):
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        out = scratch / "out"
        (out / "steps" / "sweep=fuzz").mkdir(parents=True)
        (out / "steps" / "sweep=fuzz" / "earlier.parquet").write_bytes(b"results of an earlier run")
        spec = scratch / "spec.yaml"
        spec.write_bytes(_document(mutations, damage, str(out)))
        before = tree_digest(scratch)
        stdout, stderr, cwd = io.StringIO(), io.StringIO(), os.getcwd()
        os.chdir(scratch)  # a relative output, or one written to '.', would land here
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status = main([command, str(spec)])
        finally:
            os.chdir(cwd)
        err = stderr.getvalue()
        event(f"exit {status}")
        assert status in (0, 2), (status, err)
        assert tree_digest(scratch) == before, f"{command} wrote, changed or removed files (exit {status}): {err[:300]}"
        if status == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, err[:1000]
            assert len(err) < 2000, f"error message of {len(err)} characters"
        else:
            assert err == "", err[:1000]
            _worker_accepts(spec)


# --- command lines --------------------------------------------------------------------------------
# Hostile argument values: numbers in every spelling, paths that are not places to write, bytes that
# are not UTF-8 (Python holds them as surrogates), ~, option-like words, Ray addresses.
WORDS = [
    "", " ", "-", "--", "0", "-1", "1e23", "1e3", "2.5", "nan", "inf", "9" * 30, "0x10", "1_000", ":", "host:", ":1",
    "host:0", "host:70000", "auto", "ray://:1", "~", "~/x", "~nobody/x", "/", "/proc", "/proc/x", "/dev/null", "/dev/full",
    "/sys/x", "/etc/passwd", "{tmp}/afile", "{tmp}/afile/x", "{tmp}/missing/x.csv", "{tmp}", "{out}", "{spec}", "x" * 300,
    "a\udcffb", "\udcfe", "é", "\x00", "line\nbreak", "--help", "--debug", "-o", "table", "csv", "json", "parquet",
]
FLAGS = {
    "validate": ["--max-cells"],
    "plan": ["--max-cells"],
    "query": ["--max-rows", "--format", "-o"],
    "ls": [],
    "cluster validate": [],
    "report": ["-o", "--spec"],
    "run": ["--address", "--max-concurrent", "--log", "--log-dir", "--max-cells"],
}
POSITIONAL = {"validate": ["{spec}"], "plan": ["{spec}"], "query": ["{out}", "SELECT count(*) AS n FROM cells"],
              "ls": ["{out}"], "cluster validate": ["{spec}"], "report": ["{out}"], "run": ["{spec}"]}
word = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))


@st.composite
def command_lines(draw, commands):
    command = draw(st.sampled_from(commands))
    positional = [draw(st.one_of(st.just(p), word)) for p in POSITIONAL[command]]
    options = [x for _ in range(draw(st.integers(0, 3)))
               for x in (draw(st.one_of(st.sampled_from(FLAGS[command] or ["--debug"]), word)), draw(word))]
    return command.split() + positional + options


def _in_scratch(argv: list[str], scratch: Path) -> list[str]:
    spec = scratch / "tiny.yaml"
    return [a.replace("{tmp}", str(scratch)).replace("{out}", str(scratch / "tables")).replace("{spec}", str(spec))
            for a in argv]


@pytest.fixture(scope="module")
def tables_template(tmp_path_factory):
    import synthetic

    folder = tmp_path_factory.mktemp("tables")
    synthetic.write_runs(str(folder / "tables"))
    return folder / "tables"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=command_lines(["validate", "plan", "query", "ls", "cluster validate"]))
def test_command_lines_exit_cleanly_and_refusals_write_nothing(argv, tables_template):
    """Any command line of the commands that run no sweep: exit 0 or 2 (or 141, never here), never a
    traceback; a refusal is one `error:` line and leaves every file as it was."""
    import shutil

    from conftest import TINY_DLN, tiny_spec, write_spec

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        shutil.copytree(tables_template, scratch / "tables")
        (scratch / "afile").write_text("a file, not a folder\n")
        write_spec(scratch / "tiny.yaml", tiny_spec(scratch / "out", grids=[TINY_DLN]))
        args = _in_scratch(argv, scratch)
        before = tree_digest(scratch)
        stdout, stderr, cwd = io.StringIO(), io.StringIO(), os.getcwd()
        os.chdir(scratch)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status = main(args)
        finally:
            os.chdir(cwd)
        err = stderr.getvalue()
        event(f"{argv[0]} exit {status}")
        assert status in (0, 2), (status, args, err[-2000:])
        assert "Traceback" not in err, err[-2000:]
        if status == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, (args, err[:1000])
            assert tree_digest(scratch) == before, f"a refused command wrote, changed or removed files: {args}"


@settings(max_examples=500, deadline=None)
@given(argv=command_lines(["run", "report", "query", "validate"]))
def test_every_command_line_parses_or_is_one_error_line(argv):
    """The argument parsing of every command, `run` and `report` included (which this does not start):
    parsed, or one `error:` line and status 2; --help exits 0."""
    from bnsweep.cli import parser

    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        try:
            parser().parse_args(argv)
            status = None
        except SystemExit as e:
            status = e.code
    err = stderr.getvalue()
    if status is None:
        return
    assert status in (0, 2), (argv, status, err)
    if status == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
