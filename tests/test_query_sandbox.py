"""`query` reads the output's tables and nothing else, writes nothing, and a hostile query is one error line.

The sandbox is DuckDB's: `analysis.sandbox.connect` registers the tables, then turns file access off and
locks the configuration. These tests go past the one-SELECT check straight to that connection, so the
engine's own switch is what they show; and they run whole queries through the CLI for what a user sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import synthetic
from conftest import tree_digest
from test_s3 import s3_uri  # noqa: F401  (the fixture: moto serving S3 on loopback)

from analysis import query, sandbox
from bnsweep.cli import main
from bnsweep.errors import UserError
from bnsweep.layout import SCHEMAS


@pytest.fixture
def out(tmp_path):
    synthetic.write_runs(str(tmp_path / "out"))
    return tmp_path / "out"


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "secret.csv"
    p.write_text("password,pin\nhunter2,4242\n")
    return p


def _engine(out: Path):
    """The engine's connection over the verified cells files of `out`, as the child process builds it."""
    store, files = query.load.verified(str(out))
    return sandbox.connect({"cells": (files["cells"], SCHEMAS["cells"])}, store.uri)


# statements that would read or write a file, load code, or unlock the switch: each fails inside the engine itself
ESCAPES = [
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM read_parquet('{cells_file}')",  # even a table's own file, by path: only the registered tables
    "SELECT * FROM parquet_metadata('{cells_file}')",
    "SELECT * FROM glob('{tmp}/*')",
    "SELECT * FROM sniff_csv('{secret}')",
    "COPY (SELECT 1) TO '{tmp}/written.csv'",
    "COPY cells TO '{tmp}/written.parquet' (FORMAT parquet)",
    "ATTACH '{tmp}/written.db' AS w",
    "EXPORT DATABASE '{tmp}/exported'",
    "INSTALL httpfs",
    "LOAD '{tmp}/written.duckdb_extension'",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "SET temp_directory = '{tmp}/spill'",
    "SET memory_limit = '1000GB'",
    "SET threads = 512",
    "SET allowed_paths = ['{secret}']",
    "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
]


@pytest.mark.parametrize("statement", ESCAPES)
def test_the_engine_itself_refuses_every_file_access_and_unlock(out, secret, tmp_path, statement):
    con = _engine(out)
    cells_file = query.load.verified(str(out))[1]["cells"][0]
    before = tree_digest(tmp_path)
    with pytest.raises(duckdb.Error) as e:
        con.execute(statement.format(secret=secret, tmp=tmp_path, cells_file=cells_file)).fetchall()
    msg = str(e.value)
    assert ("disabled by configuration" in msg or "configuration has been locked" in msg
            or "disabled through configuration" in msg), msg
    assert "hunter2" not in msg
    assert tree_digest(tmp_path) == before
    assert con.execute("SELECT current_setting('enable_external_access')").fetchone()[0] is False
    assert con.execute("SELECT count(*) FROM cells").fetchone()[0] == 42  # the registered table still reads


def test_registered_tables_are_the_verified_files_only(out, capsys):
    """A garbage file in a partition is named and never read; the rest reads whole (brute force: pyarrow)."""
    bad = out / "steps" / f"sweep={synthetic.SWEEP}" / "arch=vgg" / "norm=batch" / "garbage.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"PAR1 not parquet at all PAR1")
    good = [p for p in out.rglob("*.parquet") if p != bad]
    expect = {name: sum(pq.read_metadata(p).num_rows for p in good if p.relative_to(out).parts[0] == name)
              for name in ("cells", "evals")}
    capsys.readouterr()
    got = query.sql(str(out), "SELECT (SELECT count(*) FROM cells) AS cells, (SELECT count(*) FROM evals) AS evals")
    assert got.row(0, named=True) == expect
    assert f"skipped {bad}" in capsys.readouterr().err


@pytest.mark.parametrize("sql", [
    "SELECT * FROM cells /* /* */ ' */ , read_csv('{secret}', header = false) -- '",  # nested comments
    "SELECT $$'$$ AS x, * FROM read_csv('{secret}') -- '",  # dollar quoting
    "SELECT $tag$ ' $tag$ AS x, * FROM read_csv('{secret}')",
    "SELECT * FROM \"read_csv\"('{secret}')",
    "SELECT * FROM cells WHERE cell_id IN (SELECT column0 FROM read_csv('{secret}'))",
    "WITH s AS (SELECT * FROM read_text('{secret}')) SELECT * FROM s",
    "SELECT * FROM query_table('{secret}')",
    "SELECT * FROM query('SELECT * FROM read_csv(''{secret}'')')",
    "FROM read_csv('{secret}')",
])
def test_no_quoting_or_commenting_reads_a_file(out, secret, tmp_path, capsys, sql):
    before = tree_digest(tmp_path)
    capsys.readouterr()
    assert main(["query", str(out), sql.format(secret=secret)]) == 2
    got = capsys.readouterr()
    assert "hunter2" not in got.out + got.err and got.err.count("\n") == 1 and got.err.startswith("error: query")
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("sql", [
    "SELECT " + "+".join(["1"] * 10_000),
    "SELECT " + "(" * 100_000 + "1" + ")" * 100_000,
    "SELECT " + "-" * 100_000 + "1",
    "SELECT " + "NOT " * 50_000 + "true",
    "SELECT " + "[" * 20_000 + "1" + "]" * 20_000,
    "SELECT 1 " + "/*" * 50_000 + "*/" * 50_000,
    "SELECT " + "x" * 100_000 + " FROM cells",  # an error that quotes the query's huge name: cut
    "SELEC '" + "y" * 100_000 + "'",
])
def test_a_hostile_expression_is_one_error_line(out, capsys, sql):
    capsys.readouterr()
    status = main(["query", str(out), sql])
    err = capsys.readouterr().err
    assert status in (0, 2)  # deep comments may simply parse; anything else is one line and exit 2
    if status == 2:
        assert err.startswith("error: query") and err.count("\n") == 1 and len(err) < 1000, err[:500]


def test_a_crash_of_the_engine_is_one_line_and_exit_2(out, monkeypatch, capsys):
    """A segfault of DuckDB ends its child process only: the CLI names the signal."""
    monkeypatch.setattr(query, "ENGINE", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    capsys.readouterr()
    assert main(["query", str(out), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: query failed: the query engine stopped on signal SIGSEGV (a query too large or too deeply nested?)\n"


def test_a_query_that_is_not_utf8_is_one_line(out, capsys):
    """Refused where the arguments are read (every argument is), before the engine starts; the sandbox's own check
    of the SQL text stands behind it for callers that are not the CLI."""
    assert main(["query", str(out), "SELECT 'caf\udce9'"]) == 2
    assert capsys.readouterr().err == ("error: bnsweep: argument SELECT 'caf\\xe9' holds bytes that are not UTF-8; "
                                       "give paths and SQL as UTF-8 text\n")
    with pytest.raises(UserError, match=r"^query refused: character 12 is not valid UTF-8 \(bytes that are not text\)$"):
        query.sql(str(out), "SELECT 'caf\udce9'")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "table"])
def test_o_never_overwrites_a_result(out, tmp_path, capsys, fmt):
    result = next((out / "cells").rglob("*.parquet"))
    alias = tmp_path / "alias"
    alias.symlink_to(out)
    before = tree_digest(out)
    for dest in (result, alias / result.relative_to(out), out / "new.parquet"):
        capsys.readouterr()
        assert main(["query", str(out), "SELECT * FROM cells", "--format", fmt, "-o", str(dest)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: -o {dest}: is inside the output {out}, whose files are results; write the query's result elsewhere\n"
    assert tree_digest(out) == before
    assert main(["query", str(out), "SELECT count(*) AS n FROM cells", "--format", fmt, "-o", str(tmp_path / "q")]) == 0


def test_a_result_larger_than_memory_is_one_error_line(out, monkeypatch, capsys):
    """The limits travel to the engine's process; small ones here, so going over them is quick."""
    monkeypatch.setattr(sandbox, "memory_limit", lambda: "200MiB")
    monkeypatch.setattr(sandbox, "address_limit", lambda: 3 << 30)
    capsys.readouterr()
    assert main(["query", str(out), "SELECT * FROM range(2000000000)", "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: query failed: Out of Memory Error") and err.count("\n") == 1, err[:500]
    assert main(["query", str(out), "SELECT count(*) AS n FROM cells", "--format", "csv"]) == 0  # normal queries fit
    assert capsys.readouterr().out.split() == ["n", "42"]


def test_the_engine_runs_with_limits(out, monkeypatch):
    assert sandbox.memory_limit().endswith("MiB") and int(sandbox.memory_limit()[:-3]) > 0
    monkeypatch.setattr(sandbox, "memory_limit", lambda: "100MiB")  # small, so going over it is quick
    con = _engine(out)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    assert 1 <= threads <= sandbox.THREADS
    assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] == ""
    assert con.execute("SELECT current_setting('lock_configuration')").fetchone()[0] is True
    with pytest.raises(duckdb.OutOfMemoryException):  # over the limit: an error, never a swap storm
        con.execute(f"SELECT list(range) FROM range({10**9})").fetchall()


def test_an_object_store_output_is_queried_through_the_same_sandbox(s3_uri, secret, capsys):  # noqa: F811
    """Tables on S3 (moto on loopback) are read by pyarrow inside the engine's process; local files still are not."""
    synthetic.write_runs(s3_uri)
    capsys.readouterr()
    assert main(["query", s3_uri, "SELECT count(*) AS n, count(DISTINCT cell_id) AS cells FROM cells", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n,cells", "42,42"]
    assert main(["query", s3_uri, f"SELECT * FROM read_csv('{secret}')"]) == 2
    assert "disabled by configuration" in capsys.readouterr().err
