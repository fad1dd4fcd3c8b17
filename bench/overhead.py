"""Overhead of `bnsweep run` (Ray Tune, records, progress) over a bare loop calling the same code.

    python bench/overhead.py [SPEC] [--repeats N]

Each variant is a fresh process timed by wall clock, so Python and torch start-up count on both
sides; all run side by side in this one invocation, alternating, and report the median:
  bare-1    one process, cells one after another, run_cell() directly
  bare-P    P processes (P = the machine's cores), cells shared out, run_cell() directly
  ray-1     python -m bnsweep run SPEC --max-concurrent 1
  ray-P     python -m bnsweep run SPEC            (embedded Ray schedules P cells at once)
Ratios at equal concurrency: ray-1 / bare-1 and ray-P / bare-P (target <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bare(spec: str, output: str, workers: int) -> None:
    """The bare loop: the same run_cell() the Ray trial calls, over a process pool of `workers`."""
    from concurrent.futures import ProcessPoolExecutor

    from bnsweep.specfile import load_cells

    _, cells = load_cells(spec)
    if workers == 1:
        for c in cells:
            _one(c.model_dump_json(), output)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_one, [c.model_dump_json() for c in cells], [output] * len(cells)))


def _one(cell_json: str, output: str) -> None:
    import torch

    from bnsweep.cell import run_cell
    from bnsweep.records import Store
    from bnsweep.spec import CellConfig

    cell = CellConfig.model_validate_json(cell_json)
    torch.set_num_threads(max(1, int(cell.resources.cpu)))
    run_cell(cell, Store(output))


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="sweeps/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare(args.spec, args.output, args.bare)

    import yaml

    p = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bnsweep-bench-"))
    raw = yaml.safe_load((ROOT / args.spec).read_text())
    py = sys.executable
    times: dict[str, list[float]] = {k: [] for k in ("bare-1", f"bare-{p}", "ray-1", f"ray-{p}")}
    try:
        for r in range(args.repeats):
            for name in times:
                out = tmp / f"{name}-{r}"
                spec = tmp / f"{name}-{r}.yaml"
                spec.write_text(yaml.safe_dump({**raw, "output": str(out)}))  # a fresh output: every cell runs
                if name.startswith("bare"):
                    cmd = [py, __file__, str(spec), "--bare", name.split("-")[1], "--output", str(out)]
                else:
                    cmd = [py, "-m", "bnsweep", "run", str(spec)] + (["--max-concurrent", "1"] if name == "ray-1" else [])
                times[name].append(timed(cmd))
                print(f"  {name:8s} run {r + 1}: {times[name][-1]:6.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "spec": args.spec, "repeats": args.repeats, "cores": p, "median_s": {k: round(v, 2) for k, v in med.items()},
        "ratio_concurrency_1": round(med["ray-1"] / med["bare-1"], 3),
        f"ratio_concurrency_{p}": round(med[f"ray-{p}"] / med[f"bare-{p}"], 3),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
