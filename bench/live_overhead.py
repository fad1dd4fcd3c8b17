"""Cost of live logging: one cell run by `bnsweep run` with and without `--log`, each run a fresh process.

    python bench/live_overhead.py [--spec sweeps/quickstart.yaml] [--cell N] [--pairs 3] [--log NAME ...]

Writes a sweep file of one cell (by default the spec's first VGG cell; --cell N: its N-th cell) and
runs pairs: `bnsweep run` without --log ("off") and with every logger named ("on"; default all three,
W&B offline, MLflow on SQLite), each into a fresh output, the order alternating pair by pair so that
drift in the machine's load falls on both sides. Both sides report every evaluation to Tune (the
progress line needs it); what "on" adds is Ray Tune's logger callbacks in the driver and what they
start (W&B's service process, MLflow's database). Per run:

  cell    `wall_s` of the cell's row: its training, evaluations and the writing of its tables
  train   `train_s` of the same row: the training loop alone (no evaluation, no writing)
  process the whole `bnsweep run`: start-up, Ray, the loggers' set-up and shut-down
  cpu     CPU seconds of the run's processes that this script's child reaps (its driver, W&B's service,
          Ray's own processes; Ray's workers escape the count): on minus off is what the loggers add

Prints each pair's ratios on / off and their medians (target for `cell`: at most 1.02), checks that
both sides wrote the same steps and evals tables, and counts the evaluations TensorBoard received.
`--log none` makes the "on" side a second "off" (an A/A run: the noise floor of the pairs).

First, without Ray, the CPU each logger costs the driver and its own processes (W&B's service),
measured in this process on a stand-in trial: once before any cell (the pre-flight check, the
callback and its setup), and per cell (its run's start, one result per evaluation, its end). That is
what a cell competes with on a machine with no idle core. `--driver`: only that.
Writes bench/results/live_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEYS = ("cell", "train", "process", "cpu")


def one_cell_spec(spec_path: str, index: int | None, output: str, dest: Path) -> tuple[Path, str]:
    """A sweep file holding only one cell of `spec_path` (its grid block, narrowed to the cell's keys)."""
    from bnsweep.specfile import load_cells

    _, cells = load_cells(spec_path)
    cell = cells[index] if index is not None else next(c for c in cells if c.arch.startswith("vgg"))
    raw = yaml.safe_load(Path(spec_path).read_text())
    blocks = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
    for block in blocks:
        if all(getattr(cell, k) in block[k] for k in ("arch", "norm", "lr", "seed")):
            one = {**raw, "name": "live_bench", "output": output,
                   "grid": [{**block, **{k: [getattr(cell, k)] for k in ("arch", "norm", "lr", "seed")}}]}
            dest.write_text(yaml.safe_dump(one, sort_keys=False))
            [again] = load_cells(str(dest))[1]
            if again.model_dump(exclude={"sweep"}) == cell.model_dump(exclude={"sweep"}):
                return dest, f"{cell.arch}-{cell.norm}-lr{cell.lr:g}-s{cell.seed}"
    raise SystemExit(f"could not isolate the cell {cell.cell_id} of {spec_path} in a sweep file of its own")


def run_once(spec: Path, output: Path, log: list[str]) -> dict:
    import polars as pl

    shutil.rmtree(output, ignore_errors=True)
    argv = [sys.executable, "-m", "bnsweep", "run", str(spec), *[a for n in log for a in ("--log", n)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    t0, c0 = time.perf_counter(), _children_cpu()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    process, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    row = pl.read_parquet(f"{output}/cells/**/*.parquet", hive_partitioning=False).row(0, named=True)
    return {"cell": row["wall_s"], "train": row["train_s"], "process": process, "cpu": cpu, "status": row["status"]}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tables(output: Path) -> dict:
    import polars as pl

    return {name: pl.read_parquet(f"{output}/{name}/**/*.parquet", hive_partitioning=False).drop("sweep").sort("step")
            for name in ("steps", "evals")}


def logged_evaluations(output: Path) -> int:
    """Evaluations TensorBoard received (train_loss points), read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = list((output / "_logs" / "live_bench" / "tensorboard").iterdir())
    acc = EventAccumulator(str(run))
    acc.Reload()
    return len(acc.Scalars("ray/tune/train_loss"))


def tree_cpu() -> float:
    """CPU seconds of this process and all its descendants alive now (W&B's service), and of those reaped."""
    hz, procs = os.sysconf("SC_CLK_TCK"), {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / hz)
    mine, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        mine.add(pid)
        todo += [c for c, (parent, _) in procs.items() if parent == pid and c not in mine]
    return sum(procs[p][1] for p in mine if p in procs) + _children_cpu()


def driver_cost(names: list[str], evaluations: int, folder: Path) -> dict:
    """Per logger: CPU before any cell, and per cell of `evaluations` evaluations (a stand-in trial of one cell)."""
    from bnsweep import live

    class Trial:
        experiment_dir_name, local_path = "bench", str(folder)

        def __init__(self, i: int):
            self.trial_id = f"bench_{i:05d}"
            self.config = {"cell": {"runs": [{"cell_id": f"c{i}", "sweep": "bench", "arch": "vgg_mini", "norm": "batch",
                                              "lr": 0.05, "seed": i, "name": f"vgg_mini-batch-lr0.05-s{i}"}]}}

        def init_local_path(self):
            pass

        def __str__(self):
            return self.trial_id

    out = {}
    for name in names:
        logs = folder / name
        c0 = tree_cpu()
        live.check([name], str(logs))
        [cb] = live.callbacks([name], str(logs), "bench")
        cb.setup()
        spent = {"before_s": tree_cpu() - c0}
        for i, which in enumerate(("first_cell_s", "next_cell_s")):  # the first run's start pays the lazy imports
            c1, trial = tree_cpu(), Trial(i)
            cb.log_trial_start(trial)
            for k in range(evaluations):
                m = {"step": k * 250, "steps": 1500, "train_loss": 1 / (k + 1), "train_accuracy": 0.9, "test_loss": 0.6,
                     "test_accuracy": 0.8}
                cb.log_trial_result(k + 1, trial, {"cells": {trial.config["cell"]["runs"][0]["cell_id"]: [m]}})
            cb.log_trial_end(trial)
            cb.on_experiment_end([trial])  # waits for what a logger does in the background (W&B's run thread)
            spent[which] = tree_cpu() - c1
        out[name] = spent
        print(f"driver CPU, {name}: {spent['before_s']:.2f} s before any cell (imports, check, set-up); per cell of {evaluations} "
              f"evaluations (start, results, end): first {spent['first_cell_s'] * 1e3:.0f} ms, next {spent['next_cell_s'] * 1e3:.0f} ms",
              flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(ROOT / "sweeps" / "quickstart.yaml"))
    p.add_argument("--cell", type=int, default=None, help="index of the cell in the spec (default: its first VGG cell)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--log", action="append", help="loggers for the 'on' side (default: tensorboard, mlflow, wandb; none: an A/A run)")
    p.add_argument("--driver", action="store_true", help="only the loggers' driver CPU, no pairs")
    args = p.parse_args()
    log = [n for n in args.log or ["tensorboard", "mlflow", "wandb"] if n != "none"]
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    tmp = Path(tempfile.mkdtemp(prefix="bnsweep-live-bench-"))
    driver, pairs = {}, []
    try:
        driver = driver_cost(log, 7, tmp / "driver") if log else {}
        if args.driver:
            args.pairs = 0
        specs = {side: one_cell_spec(args.spec, args.cell, str(tmp / side), tmp / f"{side}.yaml") for side in ("off", "on")}
        name = specs["on"][1]
        for i in range(args.pairs):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            got = {}
            for side in order:
                got[side] = run_once(specs[side][0], tmp / side, log if side == "on" else [])
                print(f"pair {i + 1} {side:3s}: cell {got[side]['cell']:.2f} s, train {got[side]['train']:.2f} s, "
                      f"process {got[side]['process']:.1f} s, cpu {got[side]['cpu']:.1f} s", flush=True)
            a, b = tables(tmp / "off"), tables(tmp / "on")
            got["identical"] = all(a[k].equals(b[k]) for k in a)
            got["logged"] = logged_evaluations(tmp / "on") if "tensorboard" in log else None
            got["evaluations"] = len(b["evals"]) // 2
            got["ratio"] = {k: got["on"][k] / got["off"][k] for k in KEYS}
            got["extra_cpu"] = got["on"]["cpu"] - got["off"]["cpu"]
            print(f"pair {i + 1} ratios on/off: " + ", ".join(f"{k} {got['ratio'][k]:.4f}" for k in KEYS) +
                  f"; extra CPU {got['extra_cpu']:+.2f} s; tables identical: {got['identical']}; "
                  f"evaluations logged to TensorBoard: {got['logged']} of {got['evaluations']}", flush=True)
            pairs.append(got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    if not pairs:
        (out / "live_overhead.json").write_text(json.dumps({"log": log, "driver": driver, "load": os.getloadavg()}, indent=1))
        return
    median = {k: statistics.median(p["ratio"][k] for p in pairs) for k in KEYS}
    extra = statistics.median(p["extra_cpu"] for p in pairs)
    print(f"\n{name}, loggers {', '.join(log)}, {len(pairs)} pairs: median ratio on/off: cell {median['cell']:.4f} "
          f"(target <= 1.02; range {min(p['ratio']['cell'] for p in pairs):.4f}..{max(p['ratio']['cell'] for p in pairs):.4f}), "
          + ", ".join(f"{k} {median[k]:.4f}" for k in KEYS[1:]) + f"; median extra CPU {extra:+.2f} s per run")
    (out / "live_overhead.json").write_text(json.dumps({"cell": name, "log": log, "driver": driver, "pairs": pairs, "median": median,
                                                        "extra_cpu": extra, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
