"""Command line: `python -m bnsweep {run,validate,plan,schema,report,query,ls} ...`.

Mistakes in the input print one line and exit with status 2, before anything is written. Every
other failure is one line too, with its own exit status (EXIT_STATUS); an unexpected one also
leaves its traceback in a log file the line names (`--debug` prints it instead).
"""

from __future__ import annotations

import argparse
import decimal
import json
import os
import sys

from bnsweep.errors import UserError
from bnsweep.limits import MAX_CELLS, MAX_INT, short

EXIT_STATUS = {  # README "Exit status" lists these
    0: "done",
    1: "some cells failed (run)",
    2: "bad input: a spec, an argument, a file given; nothing was written",
    3: "run: another driver took the run's lock over; this one wrote nothing more",
    70: "an unexpected error (a bug): the line names the log file holding its traceback",
    74: "a file could not be read or written (disk full, permissions, a folder where a file goes)",
    129: "run stopped by SIGHUP (as by Ctrl-C)",
    130: "interrupted (Ctrl-C)",
    141: "stdout was closed early (`| head`); what was printed until then stands",
    143: "run stopped by SIGTERM (as by Ctrl-C)",
}


def _summary(cells, output: str) -> str:
    import polars as pl

    from analysis import summaries
    from bnsweep.console import mean_sd, text_table
    from bnsweep.records import Store

    store, ids = Store(output), [c.cell_id for c in cells]
    keep = lambda name: store.scan(name, cells[0].sweep).filter(pl.col("cell_id").is_in(ids))
    s = summaries.final_metrics(keep("cells"), keep("evals"))
    rows = [{
        "arch": r["arch"], "norm": r["norm"], "lr": f"{r['lr']:g}",
        "seeds": r["seeds"], "diverged": r["diverged"], "failed": r["failed"],
        "final train loss": mean_sd(r["train_loss_mean"], r["train_loss_sd"], r["train_loss_n"]),
        "train acc": mean_sd(r["train_accuracy_mean"], r["train_accuracy_sd"], r["train_accuracy_n"]),
        "test acc": mean_sd(r["test_accuracy_mean"], r["test_accuracy_sd"], r["test_accuracy_n"]),
    } for r in s.iter_rows(named=True)]
    return text_table(rows)


def cmd_run(args) -> int:
    from bnsweep import interrupt, runner
    from bnsweep.console import quiet_when_closed
    from bnsweep.data import ensure_data
    from bnsweep.interrupt import StopOnInterrupt
    from bnsweep.live import LOGGERS
    from bnsweep.lock import LeaseLost
    from bnsweep.specfile import load_cells

    if args.log_dir and not args.log:
        raise UserError(f"--log-dir {args.log_dir}: it is the folder of --log output; give --log {'|'.join(LOGGERS)} too")
    if args.max_seeds is not None and not args.until_decided:
        raise UserError(f"--max-seeds {args.max_seeds}: it bounds --until-decided; give --until-decided too")
    with quiet_when_closed(), StopOnInterrupt():  # `run | head -1` does not stop the sweep; a signal stops it cleanly
        spec, cells = load_cells(args.spec, args.max_cells)
        ensure_data(c.dataset for c in cells)
        if args.address is None:
            from bnsweep.host import check_local_ray

            check_local_ray()
        go = lambda todo: runner.run(todo, spec.output, address=args.address, max_concurrent=args.max_concurrent,
                                     log=args.log or [], log_dir=args.log_dir)
        try:
            if args.until_decided:  # rounds of seeds until the claims are decided (bnsweep/until_decided.py)
                from bnsweep import until_decided

                return until_decided.run(spec, cells, args.max_seeds, go)
            outcome = go(cells)
        except LeaseLost as e:  # another driver runs the sweep now: no summary of a sweep this driver no longer owns
            print(f"error: {e}", file=sys.stderr)
            return interrupt.LOST_STATUS
        return _run_end(spec, cells, outcome, interrupt.status() if interrupt.signalled() or outcome.interrupted else 0)


def _run_end(spec, cells, outcome, stopped: int) -> int:
    """The summary `run` ends with, and its exit status (`stopped`: the status of a stop request, else 0)."""
    from bnsweep.records import Store

    if outcome.total == 0:
        print("nothing to run: every cell already has a result")
    print(f"\nsweep {spec.name}: final metrics over seeds (mean ± sd over finished seeds, n = seeds)")
    print(_summary(cells, spec.output))
    print(f"\ntables: {Store(spec.output).uri}/{{cells,steps,evals}}/sweep={spec.name}/")
    if stopped:
        print("stopped: run the same command again to finish the remaining cells", file=sys.stderr)
        return stopped
    if outcome.failed:
        print(f"{outcome.failed} cells failed (see the `error` column of the cells table); run again to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_validate(args) -> int:
    from bnsweep.data import ensure_data
    from bnsweep.specfile import stream_cells

    spec, n, cells = stream_cells(args.spec, args.max_cells)
    datasets = {c.dataset for c in cells}  # one cell at a time: only the distinct data sets are kept
    ensure_data(datasets)
    print(f"ok: {args.spec}: sweep {spec.name!r}, {len(spec.grid)} grid(s), {n} cells, output {spec.output}")
    return 0


def cmd_plan(args) -> int:
    from collections import Counter

    from bnsweep.console import text_table
    from bnsweep.data import ensure_data
    from bnsweep.records import Store
    from bnsweep.specfile import stream_cells

    spec, n_cells, cells = stream_cells(args.spec, args.max_cells)
    status = {r["cell_id"]: r["status"] for r in Store(spec.output).read("cells", spec.name).to_pylist()}
    rows, needs, datasets = [], Counter(), set()
    for c in cells:  # one config at a time: only its printed row is kept
        datasets.add(c.dataset)
        rows.append({"cell_id": c.cell_id, "arch": c.arch, "norm": c.norm, "lr": f"{c.lr:g}", "seed": c.seed,
                     "dataset": c.dataset.name, "steps": c.train.steps, "batch": c.train.batch_size,
                     "cpu": f"{c.resources.cpu:g}", "gpu": f"{c.resources.gpu:g}",
                     "status": status.get(c.cell_id, "pending")})
        needs[c.resources] += 1
    ensure_data(datasets)  # as validate and run do: plan shows nothing run would refuse
    print(text_table(rows))
    counts = Counter(r["status"] for r in rows)
    print(f"\n{n_cells} cells: " + ", ".join(f"{counts[s]} {s}" for s in ("done", "diverged", "failed", "pending")))
    for r in sorted(needs, key=lambda r: (r.cpu, r.gpu)):
        n = needs[r]
        print(f"{n} cells need cpu={r.cpu:g}, gpu={r.gpu:g} each (total {n * r.cpu:g} CPU, {n * r.gpu:g} GPU if run at once)")
    return 0


def cmd_cluster_validate(args) -> int:
    import logging

    from bnsweep.cluster import validate_cluster

    for name in ("ray", "ray.autoscaler", "ray.autoscaler._private.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = validate_cluster(args.file)
    print(
        f"ok: {args.file}: node types {', '.join(cfg['available_node_types'])}, head "
        f"{cfg['head_node_type']}, max_workers {cfg['max_workers']}"
    )
    return 0


def cmd_schema(args) -> int:
    from bnsweep.spec import SweepSpec

    print(json.dumps(SweepSpec.model_json_schema(), indent=2))
    return 0


def cmd_report(args) -> int:
    from analysis import draw, report
    from bnsweep import destinations

    formats = draw.parse_formats(args.formats)
    if args.dest is not None:
        destinations.folder(args.dest)
    for written in report.write(args.output, args.dest, spec=args.spec, files=draw.Files(formats)):
        print(f"{written.line()}")
        if written.note:
            print(f"  {written.note}")
        for name, why in written.skipped.items():
            print(f"  skipped {name}: {why}")
    return 0


def cmd_query(args) -> int:
    from analysis import query
    from bnsweep import destinations
    from bnsweep.console import frame_table

    if args.file:
        destinations.file(args.file)
        destinations.outside(args.file, args.output)
    table = args.format == "table"
    limit = args.max_rows + 1 if table and args.max_rows else None  # one row more tells whether there are more
    result = query.sql(args.output, args.sql, limit)
    if table:
        more = limit is not None and len(result) == limit
        text = frame_table(result.head(args.max_rows) if more else result, args.max_rows, more=more)
        if args.file:
            try:
                with open(args.file, "w") as f:
                    f.write(text + "\n")
            except OSError as e:
                raise UserError(f"cannot write {args.file}: {e.strerror}") from None
        else:
            print(text)
        return 0
    if args.format == "parquet" and not args.file and sys.stdout.isatty():
        raise UserError("--format parquet writes binary: give -o FILE, or redirect stdout")
    target = args.file or (sys.stdout.buffer if args.format == "parquet" else sys.stdout)
    try:
        {"csv": result.write_csv, "json": result.write_json, "parquet": result.write_parquet}[args.format](target)
    except Exception as e:  # nested columns in CSV, an unwritable file
        raise UserError(f"cannot write {args.format} to {args.file or 'stdout'}: {str(e).splitlines()[0]}") from None
    return 0


def cmd_ls(args) -> int:
    import polars as pl

    from analysis import query
    from bnsweep.console import frame_table

    states = query.states(args.output)
    cells = query.listing(args.output, states)
    if cells.is_empty() and not any(st.line() for st in states):
        print(f"no cell of {args.output} has finished yet (the cells table is empty)")
        return 0
    totals = {t["sweep"]: t for t in query.totals(cells.filter(pl.col("wall_s").is_not_null())).iter_rows(named=True)}
    for st in states:
        t = totals.get(st.sweep)
        head = (f"sweep {st.sweep}: {t['cells']} cells, {t['done']} done, {t['diverged']} diverged, {t['failed']} failed; "
                f"wall time {t['wall_s']:.1f} s in all, longest cell {t['longest_s']:.1f} s" if t else
                f"sweep {st.sweep}: no cell finished yet")
        print(head + (f"; {st.line()}" if st.line() else ""))
    print()
    print(frame_table(cells, None))
    return 0


def _count(least: int, most: int = MAX_INT):
    """An argparse type: a whole number from `least` to `most` (`1e6` is one), else the one-line error."""

    def parse(text: str) -> int:
        try:
            exact = decimal.Decimal(text.strip().replace("_", ""))
        except decimal.InvalidOperation:
            raise argparse.ArgumentTypeError(f"{short(text)} is not an integer") from None
        if not exact.is_finite() or exact != exact.to_integral_value():
            raise argparse.ArgumentTypeError(f"{short(text)} is not an integer")
        if exact < least:
            raise argparse.ArgumentTypeError(f"must be at least {least} (got {int(exact)})")
        if exact > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,} (got {short(text)})")
        return int(exact)

    parse.__name__ = "integer"
    return parse


def _path(text: str) -> str:
    """An argparse type for a path: `~` expanded here, so what is read and what is written are the same place."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    path = os.path.expanduser(text)
    if (long := max((len(os.fsencode(part)) for part in path.split("/")), default=0)) > 255:
        raise argparse.ArgumentTypeError(f"{short(text)} has a name of {long} bytes; file systems hold 255")
    if len(os.fsencode(os.path.abspath(path))) >= 4096:
        raise argparse.ArgumentTypeError(f"{short(text)} is longer than the 4,095 bytes a path may have")
    return path


def _address(text: str) -> str:
    """An argparse type for --address: auto, local, HOST:PORT or ray://HOST:PORT, else the one-line error."""
    if text in ("auto", "local"):
        return text
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{short(text)} is not a Ray address; give auto, HOST:PORT or ray://HOST:PORT")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are the one-line `error: ...` of every other bad input (exit 2); every
    command and subcommand takes --debug."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="print the traceback of an unexpected error instead of writing it to a log file")

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def _max_cells(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--max-cells",
        type=_count(1),
        default=MAX_CELLS,
        help=f"refuse a spec of more cells than this, counted before expansion (default {MAX_CELLS:,})",
    )


def parser() -> argparse.ArgumentParser:
    from bnsweep.live import LOGGERS

    p = _Parser(prog="bnsweep", description="Sweeps of normalisation variants x learning rates x seeds.",
                epilog="exit status: " + "; ".join(f"{k} {v}" for k, v in EXIT_STATUS.items()))
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every cell of a sweep that has no result yet")
    r.add_argument("spec", type=_path, help="sweep YAML file")
    r.add_argument("--address", type=_address, help="Ray cluster to join (e.g. auto); default: embedded local Ray")
    r.add_argument("--max-concurrent", type=_count(1), default=None, help="at most this many cells at once (default: as many as fit)")
    r.add_argument("--log", action="append", choices=list(LOGGERS),
                   help="also stream each cell's evaluations to this tool, through Ray Tune's logger callback (repeatable)")
    r.add_argument("--log-dir", type=_path,
                   help="folder for --log output (default OUTPUT/_logs/SWEEP; needed when the output is an object store)")
    r.add_argument("--until-decided", action="store_true",
                   help="after the grid, add seeds in rounds to the groups undecided claims need, until each is decided")
    r.add_argument("--max-seeds", type=_count(2), default=None, help="--until-decided stops at this many seeds per group "
                   "(default 4x the spec's)")
    _max_cells(r)
    r.set_defaults(fn=cmd_run)
    for name, fn, text in (
        ("validate", cmd_validate, "check a sweep file and its data; runs nothing"),
        ("plan", cmd_plan, "list a sweep's cells, their status and resources; runs nothing"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("spec", type=_path, help="sweep YAML file")
        _max_cells(c)
        c.set_defaults(fn=fn)
    sub.add_parser("schema", help="print the sweep file's JSON Schema").set_defaults(fn=cmd_schema)
    cl = sub.add_parser("cluster", help="cluster files for `ray up`").add_subparsers(dest="action", required=True)
    cv = cl.add_parser("validate", help="check a cluster YAML against Ray's schema, offline (ray up has no dry run)")
    cv.add_argument("file", type=_path)
    cv.set_defaults(fn=cmd_cluster_validate)
    from analysis.draw import DEFAULT_FORMATS, FORMATS

    rep = sub.add_parser("report", help="write report.html, figure files and summary tables (CSV, Parquet) per sweep")
    rep.add_argument("output", type=_path, help="a sweep's output folder (the spec's `output`)")
    rep.add_argument("-o", dest="dest", type=_path, help="report folder (default OUTPUT/reports); one subfolder per sweep")
    rep.add_argument("--spec", type=_path, help="report only the cells of this sweep file (as `run` would expand it)")
    rep.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                     help=f"figure files to draw, comma-separated from {', '.join(FORMATS)}, or none (default: %(default)s; "
                          "report.html and each figure's .vl.json are always written)")
    rep.set_defaults(fn=cmd_report)
    q = sub.add_parser("query", help="SQL over every table of an output (DuckDB SQL, read-only)")
    q.add_argument("output", type=_path, help="a sweep's output folder")
    q.add_argument("sql", help='e.g. "SELECT status, count(*) FROM steps JOIN cells USING (cell_id) GROUP BY status"')
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("-o", dest="file", type=_path, help="write to FILE instead of stdout")
    q.add_argument("--max-rows", type=_count(0, 10**9), default=50, help="rows printed by --format table (default 50; 0: all)")
    q.set_defaults(fn=cmd_query)
    ls = sub.add_parser("ls", help="list an output's sweeps and cells with status and wall time")
    ls.add_argument("output", type=_path, help="a sweep's output folder")
    ls.set_defaults(fn=cmd_ls)
    return p


def _not_utf8(argv: list[str]) -> str | None:
    """The first argument holding bytes that are not UTF-8 (Python keeps them as surrogates), shown escaped."""
    for a in argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(a).decode("utf-8", "backslashreplace")
    return None


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (`| head`), as poll() reports it."""
    import select

    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (in-process callers): a closed pipe cannot be told
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _log_traceback(argv: list[str]) -> str | None:
    """Write the current exception's traceback to a new log file; its path, or None where no folder takes it."""
    import tempfile
    import time
    import traceback

    text = f"bnsweep {' '.join(argv)}\n\n{traceback.format_exc()}"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (os.path.join(cache, "bnsweep"), tempfile.gettempdir()):
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            with open(path, "x", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:300] + "..."


def _printable(text: str) -> str:
    """`text` with every character that is not printable escaped: a path holding a newline stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for stream in (sys.stdout, sys.stderr):  # a path with odd bytes is printed escaped, never a UnicodeEncodeError
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if (bad := _not_utf8(argv)) is not None:
        shown = bad if len(bad) <= 80 else bad[:80] + "..."
        print(f"error: bnsweep: argument {shown} holds bytes that are not UTF-8; give paths and SQL as UTF-8 text", file=sys.stderr)
        return 2
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # a bad argument (its one line is printed) or --help: the status, also in-process
        return int(e.code or 0)
    try:
        status = args.fn(args)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, not in the interpreter's last flush
        return status
    except UserError as e:
        print(f"error: {_printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from bnsweep import interrupt

        print("\ninterrupted", file=sys.stderr)
        return interrupt.status()
    except BrokenPipeError:
        if not _stdout_closed():
            return _unexpected(argv, args, 74)
        _quiet_stdout()
        return 141
    except OSError:
        return _unexpected(argv, args, 74)
    except Exception:
        return _unexpected(argv, args, 70)


def _unexpected(argv: list[str], args, status: int) -> int:
    """One line for an exception nothing else caught, and its traceback in a log file (on stderr with --debug)."""
    import traceback

    e = sys.exc_info()[1]
    if getattr(args, "debug", False):
        traceback.print_exc()
        return status
    what = (f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename
            else f"{type(e).__name__}: {_one_line(e)}")
    log = _log_traceback(argv)
    if log is None:  # no folder takes the log: the traceback goes to stderr rather than nowhere
        traceback.print_exc()
    where = f"the traceback is in {log}" if log else "the traceback is above"
    kind = "cannot go on" if status == 74 else "unexpected error (a bug; please report it)"
    print(_printable(f"error: {kind}: {what}; {where} (--debug prints it)"), file=sys.stderr)
    return status
