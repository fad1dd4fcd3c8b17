"""`python -m bnsweep report OUTPUT [-o DIR] [--formats svg,png,pdf]`: per sweep, one folder with

    report.html                  self-contained: summaries, claims, every figure (no network needed)
    figures/<name>.vl.json       each figure's Vega-Lite spec, and <name>.<format> for each format asked for
    tables/<name>.{csv,parquet}  lr_robustness, robust_range, smoothness, smoothness_cells, claims (one row per
                                 comparison), claim_verdicts (one row per claim)

The figures come first: their data in one Polars pass (figures.frames), each spec built (or read back from the
cache, analysis/spec_cache.py), its files drawn by worker processes while the report goes on, and cached by content
(analysis/draw.py): an unchanged figure is copied, not drawn again. Meanwhile a thread computes the summaries and
verdicts, or reads them back from the same cache when the sweep's trusted files (by their sha256), the settings,
the cells and the code are unchanged (`summarise_cached`). `Written.seconds` times the stages as this thread
waits on them: load, figures (data and specs), images (copying from the cache; at the end, the wait for the
workers), summaries (the wait for that thread), html.

Default DIR: OUTPUT/reports (one subfolder per sweep). With `spec`, only that spec's sweep and cells
(the cell ids it expands to) are reported, whatever else the output holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import polars as pl

from analysis import claims, draw, figures, groups, load, outcomes, progress, sequential, smoothness, spec_cache, summaries, verdicts
from analysis.html import VL_VERSION, esc, page
from analysis.sections import (
    claims_section,
    figure_block,
    method_section,
    overview,
    progress_section,
    range_section,
    robustness_section,
    smoothness_section,
)
from analysis.settings import DEFAULT, Settings
from bnsweep.errors import UserError


@dataclass
class Written:
    folder: Path
    drawn: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure -> why
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    note: str = ""  # where a sweep still running (or interrupted) stands: cells running, cells still to come
    cached: int = 0  # figure files copied from the cache instead of drawn

    def line(self) -> str:
        return (f"{self.folder / 'report.html'}: {len(self.drawn)} figures drawn, {len(self.skipped)} skipped "
                f"({sum(self.seconds.values()):.1f} s{f'; {self.cached} figure files from the cache' if self.cached else ''})")


def default_dest(output: str) -> Path:
    if "://" in output:
        raise UserError(f"output {output!r} is not a local folder: give the report folder with -o DIR")
    return Path(output) / "reports"


def spec_cells(path: str) -> tuple[str, list[str]]:
    """(sweep name, cell ids) of a sweep file, expanded as `run` would."""
    from bnsweep.specfile import load_cells  # imports torch: only for --spec

    spec, cells = load_cells(path)
    return spec.name, [c.cell_id for c in cells]


def write(output: str, dest: str | Path | None = None, settings: Settings = DEFAULT,
          spec: str | None = None, files: draw.Files | None = None) -> list[Written]:
    """Write one report folder per sweep under `dest` (default OUTPUT/reports); with `spec`, that spec's cells only.
    `files`: which figure files, and how they are drawn and cached (default: draw.Files())."""
    files = files or draw.Files()
    names = load.sweeps(output)
    if not names:
        started = progress.run_sweeps(load.store(output))
        raise UserError(f"no sweep has rows under {output!r} yet" + (f" (running or interrupted: {', '.join(started)}; "
                                                                     "no cell has finished)" if started else ""))
    root = Path(dest) if dest is not None else default_dest(output)
    if spec is None:
        return [write_sweep(output, name, root / name, settings, files=files) for name in names]
    name, ids = spec_cells(spec)
    if name not in names:
        raise UserError(f"sweep {name!r} of {spec} has no rows under {output!r}; sweeps there: {', '.join(names)}")
    return [write_sweep(output, name, root / name, settings, ids, files)]



def _tables(folder: Path, frames: dict[str, pl.DataFrame]) -> None:
    """Each table as Parquet and CSV, encoded in memory and written by Python (a full disk is then an OSError
    naming it; Polars' own Parquet sink reports one as a Thrift transport error)."""
    import io

    (folder / "tables").mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        for suffix, write in (("parquet", df.write_parquet), ("csv", df.write_csv)):
            buf = io.BytesIO()
            write(buf)
            (folder / "tables" / f"{name}.{suffix}").write_bytes(buf.getvalue())


def _stale(folder: Path, name: str, keep: tuple[str, ...]) -> None:
    """Remove the files of figure `name` that this report does not write (an earlier report's, from other data)."""
    for suffix in ("vl.json", *draw.FORMATS):
        if suffix not in keep:
            (folder / "figures" / f"{name}.{suffix}").unlink(missing_ok=True)


@dataclass
class Summed:
    frames: dict[str, pl.DataFrame]  # the tables/ files, by name
    found: list[verdicts.Verdict]  # one per claim
    sequential: sequential.Design | None  # the sweep's sequential design, if it was run --until-decided


def summarise(output: str, sweep: str, tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT) -> Summed:
    """The summaries, the smoothness tables and the claims' verdicts of one sweep's (labelled) tables."""
    cells, evals = tables["cells"], tables["evals"]
    rob = summaries.lr_robustness(cells, evals, settings)
    per_cell = smoothness.per_cell(tables, settings)
    found, seq = sequential.report_verdicts(outcomes.per_cell(cells, evals, settings), per_cell, load.store(output), sweep,
                                            settings)
    frames = {"lr_robustness": rob, "robust_range": summaries.robust_range(rob),
              "smoothness": smoothness.smoothness(tables, settings, per_cell), "smoothness_cells": per_cell,
              "claims": claims.frame(found), "claim_verdicts": claims.verdict_frame(found)}
    return Summed(frames, found, seq)


@cache
def _code() -> bytes:
    """What the summaries depend on besides the data and the settings: this package's code and the libraries'."""
    root = Path(__file__).resolve().parents[1]
    parts = [f.read_bytes() for d in ("analysis", "bnsweep") for f in sorted((root / d).glob("*.py"))]
    return b"\0".join(parts) + "".join(f"\0{lib} {metadata.version(lib)}" for lib in
                                         ("polars", "numpy", "scipy", "statsmodels", "pyarrow")).encode()


def summaries_key(output: str, sweep: str, settings: Settings, cell_ids: list[str] | None) -> str:
    """The content hash of `summarise`'s result: every trusted file of the sweep by its sha256 (bnsweep.verify),
    its sequential design record, the settings, the cells asked for, and the code."""
    store = load.store(output)
    design = store.get_record(sequential.design_file(store.root, sweep))
    what = json.dumps([sweep, repr(settings), sorted(cell_ids) if cell_ids is not None else None, design,
                       store.survey(sweep).digest()], sort_keys=True, default=str)
    return hashlib.sha256(_code() + what.encode()).hexdigest()


def summarise_cached(output: str, sweep: str, tables: dict[str, pl.LazyFrame], settings: Settings,
                     cell_ids: list[str] | None, where: Path | None, key: str | None = None) -> Summed:
    """`summarise`, read back from the cache folder `where` when it holds this data's summaries, else computed and
    kept there beside the figures (pruned with them, analysis/draw.py). None: no cache. `key`: `summaries_key` taken
    before `tables` were read (default: now). The summaries are kept only if the key is the same after them: a file
    that a running sweep writes meanwhile leaves them uncached rather than kept under the new data's key."""
    if where is None:
        return summarise(output, sweep, tables, settings)
    key = key or summaries_key(output, sweep, settings, cell_ids)
    path = where / f"{key}.summaries.pkl"
    try:
        found = pickle.loads(path.read_bytes())  # the user's own cache, written below, named by its content's key
        if isinstance(found, Summed):
            os.utime(path)  # recently used: kept by draw.prune
            return found
    except Exception:  # noqa: BLE001 - absent, pruned meanwhile, cut short, or from code that no longer loads
        pass
    summed = summarise(output, sweep, tables, settings)
    if summaries_key(output, sweep, settings, cell_ids) == key:
        draw.keep(where, path.name, pickle.dumps(summed))
    return summed


def write_sweep(output: str, sweep: str, folder: Path, settings: Settings = DEFAULT,
                cell_ids: list[str] | None = None, files: draw.Files | None = None) -> Written:
    """Summaries, claims, figures and report.html for one sweep (its cells in `cell_ids` only, if given)."""
    out, clock = Written(folder), time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        out.seconds[stage] = out.seconds.get(stage, 0.0) + now - clock
        clock = now

    files = files or draw.Files()
    key = summaries_key(output, sweep, settings, cell_ids) if files.cache is not None else None  # the data as read below
    tables = load.tables(output, sweep)
    for name in ("cells", "evals"):  # absent: empty frames of the right schema
        tables.setdefault(name, load.table(output, name, sweep))
    if cell_ids is not None:
        tables = {k: t.filter(pl.col("cell_id").is_in(cell_ids)) for k, t in tables.items()}
    tables["cells"] = groups.label(tables["cells"])  # once: every summary and figure keys by it
    state = progress.state(load.store(output), sweep, load.table(output, "cells", sweep).select("cell_id", "status").collect())
    out.note = state.line()
    lap("load")
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    specs, blocks = {}, []
    with draw.Drawer(files, VL_VERSION) as drawer, ThreadPoolExecutor(1) as thread:
        # the summaries in a thread (mostly Polars, which lets go of the GIL) while this one builds the figures' specs
        # (Altair, pure Python); each figure's files are drawn by the workers while the report goes on
        summed = thread.submit(summarise_cached, output, sweep, tables, settings, cell_ids, drawer.cache, key)
        for name, df in figures.frames(tables, settings).items():
            fig = figures.FIGURES[name]
            if isinstance(df, figures.Skipped):
                _stale(folder, name, keep=())
                out.skipped[name] = str(df)
                blocks.append(f"<h3>{esc(fig.title)}</h3><p class='note'>Skipped: {esc(df)}.</p>")
                continue
            specs[name] = spec_cache.cached(name, df, drawer.cache)
            _stale(folder, name, keep=("vl.json", *drawer.formats))
            (folder / "figures" / f"{name}.vl.json").write_text(json.dumps(specs[name]))
            lap("figures")
            drawer.submit(specs[name], folder / "figures" / name)
            lap("images")
            out.drawn.append(name)
            blocks.append(figure_block(name, fig, df))

        s = summed.result()
        _tables(folder, s.frames)
        lap("summaries")
        body = "".join([
            overview(sweep, output, tables["cells"], tables, settings),
            progress_section(state),
            claims_section(s.found, s.sequential),
            method_section(settings),
            range_section(s.frames["robust_range"]),
            robustness_section(s.frames["lr_robustness"], settings),
            smoothness_section(s.frames["smoothness"], settings),
            "<h2 id='figures'>Figures</h2>", *blocks,
        ])
        (folder / "report.html").write_text(page(f"bnsweep report: {sweep}", body, specs))
        lap("html")
    out.cached = drawer.cached
    lap("images")  # the figures still being drawn when everything else was written
    return out
