"""What one device does with the paper's cells, side by side in one run, and the sweeps' device-hours.

    python bench/gpu.py                          # CUDA if present: VGG-16 on CIFAR-shaped data, batch 128
    python bench/gpu.py --device cpu --steps 60  # any machine: the DLN and the narrow VGG (digits)
    python bench/gpu.py --device cpu --tiny      # every part for a few steps: checks the script, not the device

For each workload: ms per step and images/s of one cell alone; of K cells at once as separate
processes on the one device (what Ray's fractional `gpu` trials are); of packs of K
(`bnsweep.pack`, where this build has it); peak memory; each execution choice of
`bnsweep/performance.py` (CUDA: precision, cuDNN autotuning, channels_last); the paper schedule's
measurement cost, as run and projected to 15,000 steps. From the CUDA figures it projects the
GPU-hours of sweeps/lr_grid.yaml and sweeps/paper.yaml (bench/projection.py). Every variant runs in
a fresh process after a warm-up, so memory peaks and cuDNN caches are its own; ms per step and images/s
are over the whole timed `train_cell` (steps, and the evaluations at step 0 and the end). Writes
gpu_<device>.json and gpu_<device>.md (the same figures as Markdown tables) under --out (default $OUT, else
bench/results), after every part, so a run stopped early keeps what it measured. bench/device_check.sh runs it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from measure_overhead import fake_cifar10  # noqa: E402
from projection import project  # noqa: E402

PAPER = ROOT / "sweeps" / "paper.yaml"


def workloads(device: str, steps: int, data_root: str) -> dict[str, dict]:
    """The cells to time, as CellConfig dicts: VGG-16 on a GPU; the DLN and the narrow VGG on a CPU."""
    base = {"sweep": "bench", "norm": "batch", "seed": 0, "norm_options": {}, "device": device, "resources": {},
            "checkpoint_every": 0}
    if device == "cuda":
        return {"vgg16": {**base, "arch": "vgg16", "lr": 0.1, "model": {},
                          "dataset": {"name": "cifar10", "root": data_root},
                          "train": {"steps": steps, "batch_size": 128, "eval_every": 0}}}
    return {
        "dln": {**base, "arch": "dln", "lr": 1e-6, "model": {}, "dataset": {"name": "gaussian_regression"},
                "train": {"steps": steps, "batch_size": 1000, "eval_every": 0}},
        "vgg_mini": {**base, "arch": "vgg_mini", "lr": 0.1, "model": {"width": 0.125}, "dataset": {"name": "digits"},
                     "train": {"steps": steps, "batch_size": 128, "eval_every": 0}},
    }


def paper_measure(arch: str) -> dict:
    """The measure block sweeps/paper.yaml gives `arch` (VGG-16's for the narrow VGG)."""
    import yaml

    spec = yaml.safe_load(PAPER.read_text())
    want = "dln" if arch == "dln" else "vgg16"
    return next(g["overrides"]["measure"] for g in spec["grid"] if want in g["arch"])


# --- one process ------------------------------------------------------------------------------
def _job(kind: str, cells: list[dict], warm: int, barrier, queue) -> None:
    """In a fresh process: warm up, wait for the others, train (one cell or one pack), report."""
    import resource

    import torch

    from bnsweep.spec import CellConfig
    from bnsweep.train import train_cell

    torch.set_num_threads(1)
    cfgs = [CellConfig.model_validate(c) for c in cells]
    if kind == "pack":
        from bnsweep.pack import train_pack
        run = lambda cs: train_pack(cs)  # noqa: E731
    else:
        run = lambda cs: [train_cell(cs[0])]  # noqa: E731
    short = [c.model_copy(update={"train": c.train.model_copy(update={"steps": warm}),
                                  "measure": c.measure.__class__()}) for c in cfgs]
    run(short)  # data on the device, kernels chosen, caches warm
    cuda = cfgs[0].device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    barrier.wait()
    t0 = time.time()
    results = run(cfgs)
    if cuda:
        torch.cuda.synchronize()
    t1 = time.time()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"t0": t0, "t1": t1, "peak_bytes": peak, "train_s": [r.train_s for r in results],
               "eval_s": [r.eval_s for r in results], "measure_s": [r.measure_s for r in results],
               "status": [r.status for r in results]})


def timed(kind: str, groups: list[list[dict]], warm: int) -> dict:
    """Run each group (one cell, or the members of one pack) in its own process, all at once."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(len(groups)), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(kind, g, warm, barrier, queue)) for g in groups]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a {kind} process exited with {p.exitcode}")
    wall = max(o["t1"] for o in out) - min(o["t0"] for o in out)
    cells = [c for g in groups for c in g]
    steps, batch = cells[0]["train"]["steps"], cells[0]["train"]["batch_size"]
    return {
        "processes": len(groups), "cells": len(cells), "wall_s": round(wall, 3),
        "ms_per_cell_step": round(1000 * wall / (steps * len(cells)), 3),
        "images_per_s": round(len(cells) * steps * batch / wall, 1),
        "peak_mb_per_process": round(max(o["peak_bytes"] for o in out) / 2**20, 1),
        "peak_mb_total": round(sum(o["peak_bytes"] for o in out) / 2**20, 1),
        "train_s": [s for o in out for s in o["train_s"]], "eval_s": [s for o in out for s in o["eval_s"]],
        "measure_s": [s for o in out for s in o["measure_s"]],
        "status": [s for o in out for s in o["status"]],
    }


def member(cell: dict, i: int, **update) -> dict:
    """Cell `i` of a group: its own seed and learning rate (what packs and fractional trials share out)."""
    return {**cell, "seed": i, "lr": cell["lr"] * (1 + 0.1 * i), **update}


# --- the comparisons --------------------------------------------------------------------------
def concurrent(cell: dict, ks: list[int], warm: int) -> dict:
    """One cell alone, then K cells as K processes sharing the device."""
    return {f"K={k}": timed("cell", [[member(cell, i)] for i in range(k)], warm) for k in [1, *ks]}


def packs(cell: dict, ks: list[int], warm: int) -> dict:
    """Packs of K cells, one process each; kept apart: packing is built elsewhere and may be absent."""
    try:
        import bnsweep.pack  # noqa: F401
    except ImportError:
        return {"status": "packing not available in this build"}
    out = {}
    for k in ks:
        try:
            out[f"K={k}"] = timed("pack", [[member(cell, i) for i in range(k)]], warm)
        except Exception as e:  # report, do not hide: the other figures still stand
            out[f"K={k}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def choices(cell: dict, device: str, warm: int) -> dict:
    """One cell alone under each execution choice that can change its speed on this device."""
    variants = {"default": {}, "channels_last": {"channels_last": True}}
    if device == "cuda":
        variants |= {"precision_high_tf32": {"precision": "high"}, "no_cudnn_benchmark": {"cudnn_benchmark": False},
                     "deterministic": {"deterministic": True},
                     "channels_last+tf32": {"channels_last": True, "precision": "high"}}
    elif cell["arch"] == "dln":
        return {"note": "no choice changes a CPU run of the DLN (no convolutions)"}
    return {name: timed("cell", [[{**cell, "performance": perf}]], warm) for name, perf in variants.items()}


def measurement_cost(cell: dict, warm: int) -> dict:
    """The paper schedule on vs off, one cell alone; the cost per probe projects it to 15,000 steps."""
    from bnsweep.measure import MeasureSpec, enabled

    measure = paper_measure(cell["arch"])
    if cell["arch"] == "vgg_mini":  # the narrow VGG has 7 weight layers
        measure = {**measure, "ics": {**measure["ics"], "layers": [2, 5]},
                   "activations": {**measure["activations"], "layers": [2, 3, 6]}}
    off, on = timed("cell", [[cell]], warm), timed("cell", [[{**cell, "measure": measure}]], warm)
    steps = cell["train"]["steps"]
    spec = MeasureSpec.model_validate(measure)
    per_probe = {n: on["measure_s"][0][n] / len(o.resolve(steps)) for n, o in enabled(spec)}
    paper_steps = 15000 if cell["arch"] != "dln" else 10000
    train_per_step = off["train_s"][0] / steps
    extra = sum(per_probe[n] * len(o.resolve(paper_steps)) for n, o in enabled(spec))
    return {"measure": measure, "off_s": off["wall_s"], "on_s": on["wall_s"],
            "ratio_as_run": round(on["wall_s"] / off["wall_s"], 3),
            "seconds_per_probe": {k: round(v, 4) for k, v in per_probe.items()},
            "ratio_projected_to_paper_steps": round(1 + extra / (train_per_step * paper_steps), 3),
            "paper_steps": paper_steps}


TINY = {"steps": 8, "warm": 2, "ks": "2"}  # --tiny: every part runs, in seconds per part on a CPU


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, help="timed steps per cell (default: 300 on CUDA, 100 on CPU)")
    ap.add_argument("--warm", type=int, default=20, help="warm-up steps before timing")
    ap.add_argument("--ks", default="2,4,8", help="cells per device / per pack")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to leave out: concurrent, packs, choices, measurement")
    ap.add_argument("--tiny", action="store_true",
                    help=f"every part for a few steps ({TINY['steps']} timed, {TINY['warm']} warm-up, K = {TINY['ks']}): "
                         "a check that the script runs, not figures")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"),
                    help="folder for gpu_<device>.json and .md (default: $OUT, else bench/results)")
    args = ap.parse_args()
    if args.tiny:
        args.steps, args.warm, args.ks = TINY["steps"], TINY["warm"], TINY["ks"]
    steps = args.steps or (300 if args.device == "cuda" else 100)
    ks, skip = [int(k) for k in args.ks.split(",")], set(filter(None, args.skip.split(",")))
    result = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "cores": os.cpu_count(), "torch": torch.__version__, "steps": steps, "warm": args.warm,
              "tiny": args.tiny, "workloads": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cuda":
            fake_cifar10(Path(tmp), n=10000)
        for name, cell in workloads(args.device, steps, tmp).items():
            w = result["workloads"][name] = {}
            parts = (("concurrent", lambda cell=cell: concurrent(cell, ks, args.warm)),
                     ("packs", lambda cell=cell: packs(cell, ks, args.warm)),
                     ("choices", lambda cell=cell: choices(cell, args.device, args.warm)),
                     ("measurement", lambda cell=cell: measurement_cost(cell, args.warm)))
            for part, fn in parts:
                if part not in skip:
                    w[part] = fn()
                    print(name, part, json.dumps(summary(w[part])), flush=True)
                    if args.device == "cuda" and "concurrent" in w:
                        result["projection"] = project(w, steps, [ROOT / "sweeps" / "lr_grid.yaml", PAPER])
                    save(result, out)
    if "projection" in result:
        print("projection", json.dumps(result["projection"], indent=1))
    print(f"wrote {out / f'gpu_{args.device}.json'} and .md")


def save(result: dict, out: Path) -> None:
    """gpu_<device>.json and .md under `out`, each replaced whole (a reader never sees half a file)."""
    for suffix, text in (("json", json.dumps(result, indent=2)), ("md", markdown(result))):
        path = out / f"gpu_{result['device']}.{suffix}"
        tmp = path.with_suffix(f".{suffix}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def markdown(result: dict) -> str:
    """The figures of `result` as Markdown: one table per workload and part, then the measurement cost and projection."""
    head = (f"# bench/gpu.py: {result['device_name']} ({result['device']}), torch {result['torch']}, "
            f"{result['cores']} cores, {result['steps']} timed steps after {result['warm']} warm-up"
            + (" (--tiny: a check that it runs, not figures)" if result.get("tiny") else ""))
    lines = [head, ""]
    cols = "| {} | cells | processes | images/s | ms per cell-step | peak MB per process | status |"
    for name, w in result["workloads"].items():
        for part in ("concurrent", "packs", "choices"):
            if part not in w:
                continue
            lines += [f"## {name}: {part}", "", cols.format("variant"), "|---" * 7 + "|"]
            for k, r in w[part].items():
                if isinstance(r, dict) and "wall_s" in r:
                    lines.append(f"| {k} | {r['cells']} | {r['processes']} | {r['images_per_s']:,.0f} | {r['ms_per_cell_step']} | "
                                 f"{r['peak_mb_per_process']:,.0f} | {', '.join(sorted(set(r['status'])))} |")
                else:  # a note, "packing not available", or the error of that variant
                    lines.append(f"| {k} | | | | | | {r.get('error') if isinstance(r, dict) else r} |")
            lines.append("")
        if "measurement" in w:
            m = w["measurement"]
            probes = ", ".join(f"{k} {v} s" for k, v in m["seconds_per_probe"].items())
            lines += [f"## {name}: the paper's measurement schedule", "",
                      f"on / off: {m['ratio_as_run']} as run ({m['on_s']} s / {m['off_s']} s); projected to "
                      f"{m['paper_steps']:,} steps: {m['ratio_projected_to_paper_steps']}. Seconds per probe: {probes}.", ""]
    if "projection" in result:
        lines += ["## GPU-hours projected from these figures", "", "| sweep | cells projected | mode | GPU-hours |", "|---|---|---|---|"]
        for sweep, p in result["projection"]["sweeps"].items():
            lines += [f"| {sweep} | {p['cells_projected']} | {mode} | {h} |" for mode, h in p["gpu_hours"].items()]
        lines.append("")
    return "\n".join(lines)


def summary(part: dict) -> dict:
    """The headline figures of one part, for the console."""
    keep = ("ms_per_cell_step", "images_per_s", "peak_mb_per_process", "status", "error", "note",
            "ratio_as_run", "ratio_projected_to_paper_steps", "seconds_per_probe")
    out = {}
    for k, v in part.items():
        if k in keep:
            out[k] = v
        elif isinstance(v, dict) and k != "measure":
            out[k] = {kk: vv for kk, vv in v.items() if kk in keep}
    return out


if __name__ == "__main__":
    main()
