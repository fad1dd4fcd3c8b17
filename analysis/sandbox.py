"""The engine under `query`: DuckDB in a child process, able to read the output's tables and nothing else.

The parent (`analysis.query.sql`) sends one JSON request on stdin: the output's URI, for each table its
verified files and Arrow schema, the SQL, and a row limit. The child registers each table as a
pyarrow dataset over exactly those files (read by pyarrow, so local and object-store outputs work
alike), then turns DuckDB's own file-access switch off and locks the configuration:

    SET enable_external_access = false   -- no read_csv/read_parquet/glob/COPY/ATTACH/INSTALL/LOAD of any path
    SET lock_configuration = true         -- no SET or RESET can turn it back on, or raise the limits below

with a memory limit, a thread limit and no spilling to disk (temp_directory ''), so a query writes no
file either. DuckDB's own parser then decides what the query is: exactly one SELECT statement.
The result goes back on stdout as an Arrow IPC stream; an error as one line on stderr, exit 2.
A crash of the engine (a segfault on a hostile expression) ends only this child: the parent turns
its signal into one error line. Only duckdb and pyarrow are imported here, nothing of bnsweep.
"""

from __future__ import annotations

import base64
import json
import os
import sys

THREADS = 4  # at most; fewer on a smaller machine
MEMORY_SHARE = 0.5  # of physical memory: DuckDB's limit (its default is 80 %); a query fails with "Out of Memory"
ADDRESS_SHARE = 0.75  # of physical memory: the whole process's address space (Arrow results are outside DuckDB's limit)
MIN_ADDRESS = 4 << 30  # bytes; a trivial query maps 2.4 GB (thread stacks, allocator arenas)
REFUSED = 2  # exit status of a refused or failed query (its one line on stderr)


class Refused(Exception):
    """A query that is not one SELECT."""


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> str:
    """DuckDB's memory limit: MEMORY_SHARE of this machine's physical memory, in MiB."""
    total = physical_memory()
    return "80%" if total is None else f"{int(total * MEMORY_SHARE) >> 20}MiB"  # 80 %: DuckDB's own default


def address_limit() -> int | None:
    """The engine process's address-space limit in bytes (RLIMIT_AS): a result too large for memory is an
    "Out of Memory" error line, not the machine swapping or the OOM killer picking a process."""
    total = physical_memory()
    return None if total is None else max(int(total * ADDRESS_SHARE), MIN_ADDRESS)


def limit_address_space(limit: int | None) -> None:
    """Lower this process's RLIMIT_AS to `limit` (never raise it above what it was)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit is not None:
        cap = [x for x in (soft, hard, limit) if x != resource.RLIM_INFINITY]
        resource.setrlimit(resource.RLIMIT_AS, (min(cap), hard))


def connect(tables: dict, uri: str | None = None, memory: str | None = None):
    """An in-memory DuckDB connection with `tables` ({name: (paths, pa.Schema)}) registered and every
    file access, extension load and setting change locked off; `memory`: DuckDB's limit (default memory_limit())."""
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    threads = max(1, min(THREADS, os.cpu_count() or 1))
    pa.set_cpu_count(threads)
    con = duckdb.connect(":memory:", config={
        "threads": threads, "memory_limit": memory or memory_limit(),
        "temp_directory": "",  # never spill to disk: a query writes no file
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    })
    fs = None
    if tables and uri is not None:
        fs = pafs.LocalFileSystem() if "://" not in uri else pafs.FileSystem.from_uri(uri)[0]
    for name, (paths, schema) in tables.items():
        con.register(name, ds.dataset(paths, schema=schema, format="parquet", filesystem=fs))
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def one_select(con, sql: str) -> None:
    """Raise Refused unless `sql` is exactly one SELECT, as DuckDB's parser reads it."""
    import duckdb

    statements = con.extract_statements(sql)
    if not statements:
        raise Refused("query refused: it is empty; give one SELECT statement")
    if len(statements) > 1:
        raise Refused(f"query refused: {len(statements)} statements; give one SELECT")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise Refused(f"query refused: only a SELECT is allowed, not {kind.name}; a query reads the tables and changes nothing")


def run(request: dict):
    """The result table of `request` (the JSON the parent sends), as a pyarrow Table."""
    import pyarrow as pa

    tables = {name: (t["paths"], pa.ipc.read_schema(pa.py_buffer(base64.b64decode(t["schema"]))))
              for name, t in request["tables"].items()}
    limit_address_space(request.get("address_limit"))
    con = connect(tables, request["uri"], request.get("memory_limit"))
    one_select(con, request["sql"])
    rel = con.sql(request["sql"])
    if request.get("limit") is not None:
        rel = rel.limit(request["limit"])
    return rel.to_arrow_table()


MAX_MESSAGE = 400  # characters of an engine error kept: it may quote a huge token of the query


def one_line(e: BaseException) -> str:
    """An engine error as one line: its first line ("Binder Error: ..."), white space collapsed, cut to MAX_MESSAGE."""
    text = str(e).strip() or type(e).__name__
    line = " ".join(text.splitlines()[0].split())
    return line if len(line) <= MAX_MESSAGE else f"{line[:MAX_MESSAGE]}... ({len(line):,} characters)"


def main() -> int:
    import warnings

    import pyarrow as pa

    warnings.simplefilter("ignore")
    try:
        table = run(json.load(sys.stdin))
    except MemoryError:
        print("query failed: out of memory", file=sys.stderr)
        return REFUSED
    except Refused as e:
        print(e, file=sys.stderr)
        return REFUSED
    except Exception as e:  # any engine error (duckdb.Error, Arrow errors on reading a file): one line
        print(f"query failed: {one_line(e)}", file=sys.stderr)
        return REFUSED
    with pa.ipc.new_stream(sys.stdout.buffer, table.schema) as w:
        w.write_table(table)
    return 0


class _NoPandas:
    """An import hook that says pandas is not installed: pyarrow.dataset imports it when present (1.8 s of a
    2.5 s start on a loaded 2-core machine) and nothing here uses it; both libraries run without it."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _NoPandas)
    sys.exit(main())
