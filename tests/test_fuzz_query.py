"""Property-based fuzzing of the SQL given to `query`: fragments that read, write, load or unlock, wrapped in
every quoting and comment form DuckDB knows, spliced with random text, through the CLI in-process.

For every generated query: exit 0 or 2, never an exception; exactly one `error:` line on exit 2; the
contents of a file beside the output never printed; and no file anywhere under the scratch folder (the
output included) created, changed or removed.
"""

from __future__ import annotations

import contextlib
import io
import uuid

import pytest
import synthetic  # noqa: E402
from conftest import tree_digest  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bnsweep.cli import main  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = uuid.uuid4().hex  # in the secret file only: no fragment or generated text can hold it by chance

# what a hostile query wants; {secret} is a file beside the output, {tmp} the scratch folder, {cells} a result file
WANTS = [
    "read_csv('{secret}')", "read_csv_auto('{secret}', header = false)", "read_text('{secret}')", "read_blob('{secret}')",
    "read_json_auto('{secret}')", "read_parquet('{cells}')", "glob('{tmp}/*')", "parquet_schema('{cells}')", "'{secret}'",
    "sniff_csv('{secret}')", "query_table('{secret}')", "query('SELECT * FROM read_text(''{secret}'')')",
]
STATEMENTS = [
    "COPY cells TO '{tmp}/w.csv'", "COPY (SELECT 1) TO '{cells}' (FORMAT parquet)", "ATTACH '{tmp}/w.db' AS w",
    "INSTALL httpfs", "LOAD '{tmp}/w.so'", "PRAGMA enable_external_access", "SET enable_external_access = true",
    "RESET lock_configuration", "EXPORT DATABASE '{tmp}/exported'", "CREATE TABLE t AS SELECT * FROM cells",
    "CALL pragma_version()", "DROP VIEW cells", "DETACH memory", "USE system", "CHECKPOINT", "SET temp_directory = '{tmp}/spill'",
]
SELECTS = ["SELECT * FROM cells", "SELECT count(*) FROM steps", "SELECT status, count(*) FROM cells GROUP BY ALL",
           "WITH x AS (SELECT * FROM evals) SELECT * FROM x", "FROM cells", "SELECT 1", "SUMMARIZE cells", "VALUES (1)"]
WRAPS = [  # how a fragment hides: comments (nested), strings, dollar quotes, identifiers
    "{}", "/* {} */", "/* /* */ {} */", "/* /* */ ' */ , {} -- '", "-- {}\n", "'{}'", "$${}$$", "$q${}$q$", "\"{}\"",
    "E'{}'", "({})", "(SELECT * FROM {})", "{};", "; {}", "$${}", "/*{}", "'{}",
]
SEPARATORS = [" ", "\n", ", ", ";", " FROM ", " JOIN ", " UNION ALL ", " WHERE ", "(", ")", " AS ", "::", ""]

fragment = st.one_of(st.sampled_from(WANTS).map(lambda w: "SELECT * FROM " + w), st.sampled_from(WANTS),
                     st.sampled_from(STATEMENTS), st.sampled_from(SELECTS), st.text(max_size=12))
wrapped = st.tuples(st.sampled_from(WRAPS), fragment).map(lambda t: t[0].replace("{}", t[1]))
queries = st.lists(st.tuples(wrapped, st.sampled_from(SEPARATORS)), min_size=1, max_size=6).map(
    lambda parts: "".join(w + s for w, s in parts))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzq")
    synthetic.write_runs(str(root / "out"))
    (root / "secret.csv").write_text(f"token\n{TOKEN}\n")
    return root


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sql=queries, fmt=st.sampled_from(["table", "csv"]))
def test_hostile_sql_reads_and_writes_nothing(scratch, sql, fmt):
    cells = next((scratch / "out" / "cells").rglob("*.parquet"))
    text = sql.replace("{secret}", str(scratch / "secret.csv")).replace("{tmp}", str(scratch)).replace("{cells}", str(cells))
    before = tree_digest(scratch)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["query", str(scratch / "out"), text, "--format", fmt])
    out, err = stdout.getvalue(), stderr.getvalue()
    event(f"exit {status}")
    assert status in (0, 2), (status, err[:500])
    assert TOKEN not in out + err, f"the secret file was read: {text!r}"
    assert tree_digest(scratch) == before, f"a query wrote, changed or removed files: {text!r}"
    if status == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 2000, err[:1000]
    else:
        assert err == "", err[:1000]
