"""The hostile-input corpus: one file per case in tests/hostile/, each with the error text it must give.

`NAME.yaml`: a sweep file (`@OUTPUT@` stands for an output folder that already holds an earlier
result); `validate`, `plan` and `run` must each refuse it. `NAME.argv`: a JSON command line
(`{spec}` a valid tiny spec, `{out}` an output with tables, `{tmp}` a scratch folder). Both start
with `# expect: TEXT`. Every case: exit 2, one line `error: ...` containing TEXT, no traceback, and
no file anywhere under the scratch folder (the output included) created, changed or removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY_DLN, tiny_spec, tree_digest, write_spec

from bnsweep.cli import main

CORPUS = Path(__file__).parent / "hostile"
SPECS = sorted(CORPUS.glob("*.yaml"))
ARGVS = sorted(CORPUS.glob("*.argv"))


def expectation(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{path.name}: the first line must be '# expect: TEXT'"
    return first.removeprefix("# expect: ")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A scratch folder (also the working directory) with an output holding an earlier result."""
    out = tmp_path / "out"
    (out / "steps" / "sweep=hostile").mkdir(parents=True)
    (out / "steps" / "sweep=hostile" / "earlier.parquet").write_bytes(b"results of an earlier run")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(argv: list[str], expected: str, folder: Path, capsys) -> None:
    before = tree_digest(folder)
    capsys.readouterr()
    assert main(argv) == 2, f"{argv[0]} did not refuse"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one error line: {err[:500]!r}"
    assert len(err) < 1000, f"error message of {len(err)} characters"
    assert expected in err, f"{expected!r} not in {err!r}"
    assert tree_digest(folder) == before, "a refused command wrote, changed or removed files"


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize("case", SPECS, ids=[p.stem for p in SPECS])
def test_spec_case(case, command, scratch, capsys):
    spec = scratch / "spec.yaml"
    spec.write_bytes(case.read_bytes().replace(b"@OUTPUT@", str(scratch / "out").encode()))
    _refused([command, str(spec)], expectation(case), scratch, capsys)


@pytest.mark.parametrize("case", ARGVS, ids=[p.stem for p in ARGVS])
def test_argv_case(case, scratch, capsys):
    import synthetic

    from bnsweep.records import Store

    synthetic.write_runs(str(scratch / "tables"))
    (scratch / "afile").write_text("a file, not a folder\n")
    spec = write_spec(scratch / "tiny.yaml", tiny_spec(scratch / "out", grids=[TINY_DLN]))
    subst = {"spec": str(spec), "out": str(scratch / "tables"), "tmp": str(scratch)}
    argv = [a.format(**subst) for a in json.loads(case.read_text().split("\n", 1)[1])]
    assert Store(str(scratch / "tables")).read("cells", synthetic.SWEEP).num_rows > 0
    _refused(argv, expectation(case).format(**subst), scratch, capsys)


def test_corpus_is_not_empty():
    assert len(SPECS) >= 30 and len(ARGVS) >= 15
    assert all(os.path.getsize(p) < 200_000 for p in [*SPECS, *ARGVS])
