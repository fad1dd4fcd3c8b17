"""Report and query time against table size: synthetic outputs in the real layout, up to millions of `steps` rows.

    python bench/report_query.py [--sizes 10000 100000 1000000] [--repeats 3]

Each output has 100 cells (2 archs x 2 norms x 5 lrs x 5 seeds), `steps` rows split evenly among
them, an evaluation every 1/10 of the steps, and every measurement table probed every 1/50 of the
steps (landscape at 8 etas, ics and activations at 2 layers). Each report is timed in VARIANTS, side
by side, their order rotating from one repeat to the next: the figure files as they were drawn before
(SVG and PNG, one figure after another in this process, no cache), the default (SVG, drawn by worker
processes) and SVG + PNG with workers, each with an empty figure cache, and the default again with the
cache holding this data's figures, specs and summaries (a report re-run on unchanged data). Times are wall clock, the median
of --repeats runs; the first report of a fresh machine also builds the Vega bundle once (cached under
~/.cache/bnsweep), which is timed apart. These reports run in this process, one after another, so files are
read and verified once, and the imports are paid once. So `bnsweep report` is also timed as a user runs it, in a
new process (imports, reading and verifying every file included): with an empty figure cache, then again with
the cache that run filled. Results: bench/results/report_query.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import draw, html, query, report  # noqa: E402
from bnsweep.console import text_table  # noqa: E402
from bnsweep.records import Store, table  # noqa: E402

ARCHS = {"vgg16": [0.01, 0.03, 0.1, 0.3, 1.0], "dln": [1e-7, 3e-7, 1e-6, 3e-6, 1e-5]}
QUERIES = {
    "count by status (join)": "SELECT status, count(*) AS n FROM steps JOIN cells USING (cell_id) GROUP BY status",
    "mean loss per (arch, norm, lr)": "SELECT arch, norm, lr, avg(loss) AS loss, count(*) AS n FROM steps GROUP BY ALL ORDER BY ALL",
    "one cell's curve": "SELECT step, loss FROM steps WHERE arch = 'dln' AND norm = 'batch' AND lr = 1e-6 AND seed = 0 ORDER BY step",
}
# name -> (formats, cache: "none" / "cold" (empty) / "warm" (this data's figures), drawing processes: None = one per core)
# `bnsweep report` in a new process: an empty figure cache, then the cache that run filled
CLI_VARIANTS = ("bnsweep report (new process), cold cache", "bnsweep report (new process), warm cache")
VARIANTS = {
    "before: svg+png, serial, no cache": (("svg", "png"), "none", 1),
    "svg+png, workers, cold cache": (("svg", "png"), "cold", None),
    "svg (default), workers, cold cache": (("svg",), "cold", None),
    "svg (default), warm cache": (("svg",), "warm", None),
}


def synthesise(output: str, rows: int, seed: int = 0) -> None:
    """An output of 100 cells with `rows` steps rows in all, and evals and measurement tables to match."""
    rng, store = np.random.default_rng(seed), Store(output)
    n = max(rows // 100, 50)
    probes = np.arange(0, n, max(n // 50, 1))
    for arch, lrs in ARCHS.items():
        for norm in ("none", "batch"):
            for lr in lrs:
                for s in range(5):
                    c = SimpleNamespace(cell_id=f"{arch}-{norm}-{lr:g}-{s}", sweep="bench", arch=arch, norm=norm, lr=lr, seed=s)
                    step = np.arange(n)
                    loss = 2.3 * np.exp(-step / (n / 4)) + 0.05 * rng.random(n)
                    acc = None if arch == "dln" else list(1 - loss / 2.5)
                    store.write(
                        "steps", c, table("steps", c, {"step": step.tolist(), "loss": loss.tolist(), "accuracy": acc or [None] * n})
                    )
                    ev = np.arange(0, n + 1, max(n // 10, 1))
                    e_loss = np.repeat(2.3 * np.exp(-ev / (n / 4)), 2)
                    store.write(
                        "evals",
                        c,
                        table(
                            "evals",
                            c,
                            {
                                "step": np.repeat(ev, 2).tolist(),
                                "split": ["train", "test"] * len(ev),
                                "loss": e_loss.tolist(),
                                "accuracy": [None] * len(e_loss) if arch == "dln" else (1 - e_loss / 2.5).tolist(),
                            },
                        ),
                    )
                    _measurements(store, c, probes, rng)
                    store.write(
                        "cells",
                        c,
                        table(
                            "cells", c, {"status": ["done"], "steps": [n], "steps_done": [n], "wall_s": [60.0], "dataset": ["synthetic"]}
                        ),
                    )


def _measurements(store: Store, c, probes: np.ndarray, rng) -> None:
    eta = np.geomspace(0.5, 4, 8) * c.lr
    st, et = np.repeat(probes, 8), np.tile(eta, len(probes))
    diff = rng.random(len(st)) * et * 10
    beta = np.repeat((diff / et).reshape(-1, 8).max(axis=1), 8)
    store.write(
        "landscape",
        c,
        table(
            "landscape",
            c,
            {
                "step": st.tolist(),
                "eta": et.tolist(),
                "eta_rel": (et / c.lr).tolist(),
                "loss": (1 + rng.random(len(st))).tolist(),
                "grad_diff_l2": diff.tolist(),
                "smoothness": (diff / et).tolist(),
                "beta_eff": beta.tolist(),
                "loss_at_w": [1.0] * len(st),
                "grad_norm": [1.0] * len(st),
            },
        ),
    )
    two = np.repeat(probes, 2)
    store.write(
        "ics",
        c,
        table(
            "ics",
            c,
            {
                "step": two.tolist(),
                "layer": [5, 10] * len(probes),
                "l2": rng.random(len(two)).tolist(),
                "cosine": rng.random(len(two)).tolist(),
            },
        ),
    )
    q = {k: rng.normal(size=len(two)).tolist() for k in ("mean", "var", "q05", "q25", "q50", "q75", "q95")}
    store.write("activations", c, table("activations", c, {"step": two.tolist(), "layer": [3, 11] * len(probes), **q}))
    store.write("curvature", c, table("curvature", c, {"step": probes.tolist(), "lambda_max": (10 + rng.random(len(probes))).tolist(),
                                                          "lambda_max_converged": [True] * len(probes)}))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def reports(out: str, tmp: Path, repeats: int) -> dict[str, list[tuple[float, report.Written]]]:
    """Each variant `repeats` times, in an order that rotates by one each repeat: {variant: [(seconds, Written)]}."""
    warm = tmp / "cache-warm"
    report.write(out, tmp / "fill", files=draw.Files(("svg",), warm))  # this data's figures, in the warm cache
    names, runs = list(VARIANTS), {name: [] for name in VARIANTS}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            formats, cache, processes = VARIANTS[name]
            k = names.index(name)
            where = {"none": None, "cold": tmp / f"cache-{k}-{i}", "warm": warm}[cache]
            t = time.perf_counter()
            [w] = report.write(out, tmp / f"report-{k}-{i}", files=draw.Files(formats, where, processes))
            runs[name].append((time.perf_counter() - t, w))
    return runs


def cli_reports(out: str, tmp: Path, repeats: int) -> dict[str, list[float]]:
    """`bnsweep report OUT` as a user runs it, in a new process each time (imports, reading and verifying every file
    included): with an empty figure cache, then with the cache that run filled; `repeats` pairs. {variant: seconds}."""
    bundle = next(html_cache().glob("vega-bundle-*.js"))  # built once per machine: not what is timed here
    runs: dict[str, list[float]] = {name: [] for name in CLI_VARIANTS}
    for i in range(repeats):
        xdg = tmp / f"xdg-{i}"
        (xdg / "bnsweep").mkdir(parents=True)
        shutil.copy(bundle, xdg / "bnsweep" / bundle.name)
        for name in CLI_VARIANTS:  # cold first: it fills the cache the warm run reads
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "bnsweep", "report", out, "-o", str(tmp / f"cli-{i}")], check=True,
                           env={**os.environ, "XDG_CACHE_HOME": str(xdg)}, cwd=ROOT, stdout=subprocess.DEVNULL)
            runs[name].append(time.perf_counter() - t)
    return runs


def html_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnsweep"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bundle_s = timed(html.bundle)  # built once per machine, then read from the cache
    results = []
    for rows in args.sizes:
        tmp = Path(tempfile.mkdtemp(prefix="bnsweep-bench-report-"))
        try:
            out = str(tmp / "out")
            write_s = timed(lambda out=out, rows=rows: synthesise(out, rows))
            for name, runs in reports(out, tmp, args.repeats).items():
                total, w = sorted(runs, key=lambda x: x[0])[len(runs) // 2]
                results.append({"steps_rows": rows, "variant": name, "cells": 100, "write_s": write_s, "report_s": total,
                                "report_all_s": [round(r[0], 3) for r in runs],
                                **{f"report_{k}_s": v for k, v in w.seconds.items()}, "figures": len(w.drawn),
                                "files_from_cache": w.cached})
            for name, secs in cli_reports(out, tmp, args.repeats).items():
                results.append({"steps_rows": rows, "variant": name, "cells": 100, "write_s": write_s,
                                "report_s": statistics.median(secs), "report_all_s": [round(x, 3) for x in secs]})
            q = {name: statistics.median(timed(lambda out=out, sql=sql: query.sql(out, sql)) for _ in range(args.repeats))
                 for name, sql in QUERIES.items()}
            results[-1] |= {f"query: {k}_s": v for k, v in q.items()}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"Vega bundle: {bundle_s:.2f} s (cached after the first build); drawing processes: {draw.workers()}\n")
    cols = ["steps_rows", "variant", "report_s", "report_load_s", "report_figures_s", "report_summaries_s", "report_html_s",
            "report_images_s", "figures", "files_from_cache"]
    print(text_table([{k: (f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, "-"))) for k in cols} for r in results],
                     cols))
    print("\nreport seconds, every repeat:", json.dumps({f"{r['steps_rows']} {r['variant']}": r["report_all_s"] for r in results}))
    qcols = [k for k in results[-1] if k.startswith("query: ")]
    print(text_table([{"steps_rows": str(r["steps_rows"]), **{k: f"{r[k]:.3f}" for k in qcols}} for r in results if qcols[0] in r],
                     ["steps_rows", *qcols]))
    dest = ROOT / "bench" / "results" / "report_query.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                            "load_average": __import__("os").getloadavg()},
                "bundle_s": bundle_s,
                "repeats": args.repeats,
                "drawing_processes": draw.workers(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\n{dest}")


if __name__ == "__main__":
    main()
