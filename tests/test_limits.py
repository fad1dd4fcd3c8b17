"""Stated bounds: queries read only the tables and compute only the rows they print; specs are
counted before they are expanded, expanded one cell at a time, and checked for duplicates in linear time."""

from __future__ import annotations

import pytest
from conftest import TINY_DLN, tiny_spec, write_spec

from analysis import query
from bnsweep.cli import main
from bnsweep.errors import UserError
from bnsweep.records import Store, table


def test_read_csv_prints_nothing_of_the_file(tmp_path, capsys):
    import synthetic

    synthetic.write_runs(str(tmp_path / "out"))
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    assert main(["query", str(tmp_path / "out"), f"SELECT * FROM read_csv('{secret}')"]) == 2
    got = capsys.readouterr()
    assert "hunter2" not in got.out + got.err and "password" not in got.out + got.err
    assert "file system operations are disabled by configuration" in got.err


def _cells_with_errors(out, n: int) -> None:
    """n cells rows whose `error` column is a number as text, except the last (a word)."""
    from types import SimpleNamespace

    store = Store(str(out))
    for i in range(n):
        c = SimpleNamespace(cell_id=f"c{i:04d}", sweep="lazy", arch="dln", norm="none", lr=0.1, seed=i)
        store.write("cells", c, table("cells", c, {"status": ["failed"], "error": [str(i) if i < n - 1 else "boom"]}))


def test_table_format_computes_only_the_rows_it_prints(tmp_path, capsys):
    """The last row cannot be cast to an integer: computing it fails. --max-rows 5 never reaches it."""
    _cells_with_errors(tmp_path / "out", 40)
    sql = "SELECT cell_id, CAST(error AS INTEGER) AS n FROM cells"
    assert main(["query", str(tmp_path / "out"), sql, "--max-rows", "5"]) == 0
    out = capsys.readouterr().out
    assert "c0004" in out and "c0005" not in out and "more than 5 rows; the first 5 shown" in out
    assert main(["query", str(tmp_path / "out"), sql, "--max-rows", "0"]) == 2  # every row: the bad one is reached
    assert "query failed" in capsys.readouterr().err
    assert query.sql(str(tmp_path / "out"), sql, limit=7).height == 7


def test_table_format_counts_a_short_result(tmp_path, capsys):
    _cells_with_errors(tmp_path / "out", 4)
    assert main(["query", str(tmp_path / "out"), "SELECT cell_id FROM cells", "--max-rows", "4"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(4 rows)")


def test_cell_count_is_checked_before_any_cell_is_built(tmp_path, monkeypatch, capsys):
    from bnsweep import spec as spec_module
    from bnsweep import specfile

    built = []

    def counting(spec):
        for cell in real(spec):
            built.append(cell)
            yield cell

    real = spec_module.iter_cells
    monkeypatch.setattr(spec_module, "iter_cells", counting)
    monkeypatch.setattr(specfile, "iter_cells", counting)
    grid = {**TINY_DLN, "lr": [i * 1e-6 for i in range(1, 1001)], "seed": list(range(1000))}  # 2 x 1000 x 1000 cells
    path = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[grid]))
    for command in ("validate", "plan", "run"):
        assert main([command, str(path)]) == 2
        assert "expands to 2,000,000 cells" in capsys.readouterr().err
    assert built == []
    assert main(["validate", str(path), "--max-cells", "1999999"]) == 2
    assert (
        main(
            [
                "validate",
                str(write_spec(tmp_path / "t.yaml", tiny_spec(tmp_path / "out", grids=[TINY_DLN]))),
                "--max-cells",
                "8",
            ]
        )
        == 0
    )
    assert len(built) == 8  # the counting wrapper does see cells when they are built


def test_cells_stream_one_at_a_time(tmp_path):
    """iter_cells yields the first cell before it builds the rest; duplicates across grids are still found."""
    from bnsweep.spec import iter_cells
    from bnsweep.specfile import load_spec

    spec = load_spec(
        write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[TINY_DLN, {**TINY_DLN, "seed": [1, 2]}]))
    )
    cells = iter_cells(spec)
    first = next(cells)
    assert first.arch == "dln" and first.seed == 0
    with pytest.raises(UserError, match="appears in more than one grid"):
        list(cells)


@pytest.mark.slow
def test_a_100k_cell_spec_validates_and_plans(tmp_path, capsys):
    """10^5 cells (the default maximum): validate and plan answer, and plan lists every cell once."""
    grid = {
        **TINY_DLN,
        "norm": ["none", "batch", "l1", "l2", "linf"],
        "lr": [i * 1e-6 for i in range(1, 201)],
        "seed": list(range(100)),
    }
    path = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[grid]))
    assert main(["validate", str(path)]) == 0
    assert "100000 cells" in capsys.readouterr().out
    assert main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = [line.split()[0] for line in lines[2:100002]]
    assert len(set(ids)) == 100_000 and "100000 cells: 0 done, 0 diverged, 0 failed, 100000 pending" in lines


def test_duplicates_are_found_in_linear_time():
    """Counter, not list.count: 2 x 10^5 values with one duplicate pair finish (quadratic would be 4e10 steps)."""
    from bnsweep.options import unique

    values = list(range(200_000)) + [7]
    with pytest.raises(ValueError, match=r"duplicate seed values \[7\]"):
        unique("seed", values)
    assert unique("seed", list(range(200_000))) == list(range(200_000))


def test_huge_values_are_cut_in_messages():
    from bnsweep.limits import short

    assert len(short(list(range(10**5)))) < 120 and "(100000 items)" in short(list(range(10**5)))
    assert short("x" * 1000).endswith("(1002 characters)")
    assert short(0.1) == "0.1"
