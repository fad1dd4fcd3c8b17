"""Command line: `python -m bnsweep {run,validate,plan,schema,report,query,ls} ...`.

Mistakes in the input print one line and exit with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys

from bnsweep.errors import UserError
from bnsweep.limits import MAX_CELLS, short


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
    with quiet_when_closed(), StopOnInterrupt():  # `run | head -1` does not stop the sweep; a signal stops it cleanly
        spec, cells = load_cells(args.spec, args.max_cells)
        ensure_data(c.dataset for c in cells)
        try:
            outcome = runner.run(cells, spec.output, address=args.address, max_concurrent=args.max_concurrent,
                                 log=args.log or [], log_dir=args.log_dir)
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
    from bnsweep.records import Store
    from bnsweep.specfile import stream_cells

    spec, n_cells, cells = stream_cells(args.spec, args.max_cells)
    status = {r["cell_id"]: r["status"] for r in Store(spec.output).read("cells", spec.name).to_pylist()}
    rows, needs = [], Counter()
    for c in cells:  # one config at a time: only its printed row is kept
        rows.append({"cell_id": c.cell_id, "arch": c.arch, "norm": c.norm, "lr": f"{c.lr:g}", "seed": c.seed,
                     "dataset": c.dataset.name, "steps": c.train.steps, "batch": c.train.batch_size,
                     "cpu": f"{c.resources.cpu:g}", "gpu": f"{c.resources.gpu:g}",
                     "status": status.get(c.cell_id, "pending")})
        needs[c.resources] += 1
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
    from analysis import report
    from bnsweep import destinations

    if args.dest is not None:
        destinations.folder(args.dest)
    for written in report.write(args.output, args.dest, spec=args.spec):
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


def _count(least: int):
    """An argparse type: an integer of at least `least`, else the one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{short(text)} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least} (got {value})")
        return value

    parse.__name__ = "integer"
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are the one-line `error: ...` of every other bad input (exit 2)."""

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

    p = _Parser(prog="bnsweep", description="Sweeps of normalisation variants x learning rates x seeds.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every cell of a sweep that has no result yet")
    r.add_argument("spec", help="sweep YAML file")
    r.add_argument("--address", help="Ray cluster to join (e.g. auto); default: embedded local Ray")
    r.add_argument("--max-concurrent", type=_count(1), default=None, help="at most this many cells at once (default: as many as fit)")
    r.add_argument("--log", action="append", choices=list(LOGGERS),
                   help="also stream each cell's evaluations to this tool, through Ray Tune's logger callback (repeatable)")
    r.add_argument("--log-dir", help="folder for --log output (default OUTPUT/_logs/SWEEP; needed when the output is an object store)")
    _max_cells(r)
    r.set_defaults(fn=cmd_run)
    for name, fn, text in (
        ("validate", cmd_validate, "check a sweep file and its data; runs nothing"),
        ("plan", cmd_plan, "list a sweep's cells, their status and resources; runs nothing"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("spec", help="sweep YAML file")
        _max_cells(c)
        c.set_defaults(fn=fn)
    sub.add_parser("schema", help="print the sweep file's JSON Schema").set_defaults(fn=cmd_schema)
    cl = sub.add_parser("cluster", help="cluster files for `ray up`").add_subparsers(dest="action", required=True)
    cv = cl.add_parser("validate", help="check a cluster YAML against Ray's schema, offline (ray up has no dry run)")
    cv.add_argument("file")
    cv.set_defaults(fn=cmd_cluster_validate)
    rep = sub.add_parser("report", help="write report.html, figures (SVG, PNG) and summary tables (CSV, Parquet) per sweep")
    rep.add_argument("output", help="a sweep's output folder (the spec's `output`)")
    rep.add_argument("-o", dest="dest", help="report folder (default OUTPUT/reports); one subfolder per sweep")
    rep.add_argument("--spec", help="report only the cells of this sweep file (as `run` would expand it)")
    rep.set_defaults(fn=cmd_report)
    q = sub.add_parser("query", help="SQL over every table of an output (Polars SQL)")
    q.add_argument("output", help="a sweep's output folder")
    q.add_argument("sql", help='e.g. "SELECT status, count(*) FROM steps JOIN cells USING (cell_id) GROUP BY status"')
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("-o", dest="file", help="write to FILE instead of stdout")
    q.add_argument("--max-rows", type=_count(0), default=50, help="rows printed by --format table (default 50; 0: all)")
    q.set_defaults(fn=cmd_query)
    ls = sub.add_parser("ls", help="list an output's sweeps and cells with status and wall time")
    ls.add_argument("output", help="a sweep's output folder")
    ls.set_defaults(fn=cmd_ls)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # a bad argument (its one line is printed) or --help: the status, also in-process
        return int(e.code or 0)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from bnsweep import interrupt

        print("\ninterrupted", file=sys.stderr)
        return interrupt.status()

