"""Overhead of `bnsweep run` (Ray Tune, records, progress) over a bare loop calling the same code.

    python bench/overhead.py [SPEC] [--repeats N] [--reduced] [--also-one]

Each variant is a fresh process timed by wall clock, so Python and torch start-up count on both
sides; all run side by side in this one invocation. By default only full concurrency:
  bare-P    P processes (P = the machine's cores), cells shared out, run_cell() directly
  ray-P     python -m bnsweep run SPEC            (embedded Ray schedules P cells at once)
and with --also-one also bare-1 (cells one after another) and ray-1 (--max-concurrent 1).
Repeats alternate the pair and swap its order each time (bare, ray, ray, bare, ...), so drift in the
machine's load falls on both sides. Each repeat gives a paired ratio ray / bare; the result is the
median of those ratios with their range, and a verdict against the 1.10 target that is only given
when every paired ratio lies on the same side of it (otherwise: not distinguishable from the noise).
--reduced runs the same sweep with one seed and a quarter of the steps (12 cells, a few minutes on
2 cores); Ray's fixed start-up is then a larger share, so its ratio is an upper bound on the full one's.
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
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats of each pair (at least 3)")
    ap.add_argument("--reduced", action="store_true", help="one seed, a quarter of the steps")
    ap.add_argument("--also-one", action="store_true", help="also time one cell at a time (bare-1, ray-1)")
    ap.add_argument("--target", type=float, default=1.10)
    ap.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare(args.spec, args.output, args.bare)

    import yaml

    if args.repeats < 3:
        raise SystemExit(f"error: --repeats {args.repeats}: at least 3 are needed for a median of paired ratios")
    p = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bnsweep-bench-"))
    raw = yaml.safe_load((ROOT / args.spec).read_text())
    if args.reduced:
        raw = reduced(raw)
    py = sys.executable
    levels = ([1] if args.also_one else []) + [p]
    times: dict[str, list[float]] = {f"{side}-{n}": [] for n in levels for side in ("bare", "ray")}
    try:
        for r in range(args.repeats):
            order = [(n, side) for n in levels for side in (("bare", "ray") if r % 2 == 0 else ("ray", "bare"))]
            for n, side in order:
                name = f"{side}-{n}"
                out = tmp / f"{name}-{r}"
                spec = tmp / f"{name}-{r}.yaml"
                spec.write_text(yaml.safe_dump({**raw, "output": str(out)}))  # a fresh output: every cell runs
                if side == "bare":
                    cmd = [py, __file__, str(spec), "--bare", str(n), "--output", str(out)]
                else:
                    cmd = [py, "-m", "bnsweep", "run", str(spec)] + (["--max-concurrent", "1"] if n == 1 else [])
                times[name].append(timed(cmd))
                print(f"  {name:8s} run {r + 1}: {times[name][-1]:6.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"spec": args.spec, "reduced": args.reduced, "repeats": args.repeats, "cores": p,
              "load_average_at_end": os.getloadavg(),
              "times_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
              "concurrency": {str(n): paired(times[f"bare-{n}"], times[f"ray-{n}"], args.target) for n in levels}}
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    name = "overhead_reduced.json" if args.reduced else "overhead.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(result, indent=2))


def reduced(raw: dict) -> dict:
    """The sweep with one seed per cell and a quarter of each grid's steps."""
    grids = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
    out = []
    for g in grids:
        o = dict(g.get("overrides", {}))
        steps = o.get("train", {}).get("steps") or raw.get("train", {}).get("steps")
        if steps:
            o["train"] = {**o.get("train", {}), "steps": max(1, steps // 4)}
        out.append({**g, "seed": g.get("seed", [0])[:1], "overrides": o})
    return {**raw, "grid": out}


def paired(bare: list[float], ray: list[float], target: float) -> dict:
    """Median and range of the paired ratios ray / bare, and whether they tell `target` apart from noise."""
    ratios = sorted(r / b for b, r in zip(bare, ray))
    if ratios[-1] <= target:
        verdict = f"within {target}: every paired ratio is at or below it"
    elif ratios[0] > target:
        verdict = f"above {target}: every paired ratio is above it"
    else:
        verdict = f"not distinguishable from {target} at this noise: paired ratios fall on both sides"
    return {"median_bare_s": round(statistics.median(bare), 2), "median_ray_s": round(statistics.median(ray), 2),
            "paired_ratios": [round(x, 3) for x in ratios], "median_ratio": round(statistics.median(ratios), 3),
            "verdict": verdict}


if __name__ == "__main__":
    main()
