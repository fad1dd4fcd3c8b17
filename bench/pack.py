"""Packed cells against the same cells one after another: cells per hour, DLN and vgg_mini side by side.

    nice python bench/pack.py [--archs dln vgg_mini] [--steps 300 150] [--ks 1 2 4 8 16 32] [--repeats 3]
                              [--profile]

For each arch and K: K cells (lr and seed differ) trained by `train_pack` as one pack, and the same
cells by `train_cell` one after another (for K above `--seq-max`, the first `--seq-max` of them, the
time scaled by K / seq-max: every member costs the same), alternating packed and sequential, `--repeats`
times. Reported: median seconds of each, and the ratio of medians, sequential / packed = packed cells
per hour over unpacked cells per hour (above 1: packing wins). On a shared, loaded machine only the
ratios, taken from alternating runs, mean anything; seconds are what that load allowed.

The setups are claims_cpu.yaml's: the paper's DLN (25 layers of 10, full batch of 1000, lr 1e-6) with
its measurement schedule (ICS at layers 9 and 17 and the landscape with 8 step sizes every 100 steps,
evaluations every 1000), and vgg_mini at width 1/8 on digits (NHWC, `performance: {channels_last: true}`;
batch 64, ICS, landscape and activations every 50 steps, evaluations every 250). `--steps` shortens
the runs (one figure per arch, the same for every K). `--profile`: for each arch a torch.profiler
table of the top operations of one packed K = 8 run.
torch uses `--threads` threads (default 1: a Ray trial's `cpu: 1`). Written to
bench/results/pack_<device>.txt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bnsweep.pack import train_pack  # noqa: E402
from bnsweep.spec import CellConfig, TrainSpec  # noqa: E402
from bnsweep.train import train_cell  # noqa: E402

SETUPS = {  # claims_cpu.yaml's cells: (dataset, model, batch, lr, norm, measure, eval_every)
    "dln": ({"name": "gaussian_regression"}, {"depth": 25}, 1000, 1e-6, "batch",
            {"ics": {"every": 100, "layers": [9, 17]}, "landscape": {"every": 100, "eta": {"from": 0.01, "to": 30, "points": 8}}}, 1000),
    "vgg_mini": ({"name": "digits"}, {"width": 0.125}, 64, 0.2, "batch",
                 {"ics": {"every": 50, "layers": [2, 5]}, "landscape": {"every": 50, "eta": {"from": 0.5, "to": 4, "points": 8}},
                  "activations": {"every": 50, "layers": [2, 5]}}, 250),
}
PERFORMANCE = {"dln": {}, "vgg_mini": {"channels_last": True}}  # claims_cpu.yaml's `performance:`


def cells(arch: str, steps: int, k: int, device: str, norm: str | None = None) -> list[CellConfig]:
    data, model, batch, lr, default_norm, measure, eval_every = SETUPS[arch]
    return [CellConfig(sweep="bench", arch=arch, norm=norm or default_norm, lr=lr * (1 + i / 100), seed=i, dataset=data,
                       model=model, norm_options={}, device=device, resources={"cpu": 1}, measure=measure,
                       performance=PERFORMANCE[arch], train=TrainSpec(steps=steps, batch_size=batch, eval_every=eval_every))
            for i in range(k)]


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def sequential(cs: list[CellConfig]) -> None:
    for c in cs:
        train_cell(c)


def table(arch: str, steps: int, ks: list[int], repeats: int, seq_max: int, device: str, norm: str | None) -> list[str]:
    """One row per K: median packed and sequential seconds, their ratio, and ms per step per cell packed."""
    train_cell(cells(arch, 5, 1, device, norm)[0])  # warm-up: data load, first-call costs
    train_pack(cells(arch, 5, 2, device, norm))
    c0 = cells(arch, steps, 1, device, norm)[0]
    lines = [f"{arch} {c0.norm}, {steps} steps (measurements and evaluations as claims_cpu.yaml: every {c0.train.eval_every}), "
             f"median of {repeats} alternating repeats",
             f"{'K':>3} {'packed s':>9} {'sequential s':>13} {'cells/h ratio':>14} {'ms/step/cell packed':>20}"]
    print(*lines, sep="\n", flush=True)
    for k in ks:
        cs = cells(arch, steps, k, device, norm)
        run = cs[: min(k, seq_max)]
        packed, seq = [], []
        for _ in range(repeats):
            packed.append(timed(train_pack, cs))
            seq.append(timed(sequential, run) * k / len(run))
        p, s = statistics.median(packed), statistics.median(seq)
        note = "" if len(run) == k else f"  (sequential: {len(run)} cells x {k // len(run)})"
        lines.append(f"{k:>3} {p:>9.2f} {s:>13.2f} {s / p:>14.2f} {1000 * p / steps / k:>20.2f}{note}")
        print(lines[-1], flush=True)
    return lines


def profile(arch: str, steps: int, device: str, norm: str | None, rows: int = 15) -> list[str]:
    """torch.profiler's top operations (self CPU time) of one packed K = 8 run."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        train_pack(cells(arch, steps, 8, device, norm))
    text = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=45)
    return [f"{arch}: top operations of one packed K = 8 run of {steps} steps (torch.profiler, self CPU time)", text]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 150], help="per arch, in --archs order")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq-max", type=int, default=8, help="run at most this many cells one after another per repeat")
    ap.add_argument("--norm", default=None, help="instead of each setup's (batch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    steps = dict(zip(a.archs, a.steps + a.steps[-1:] * len(a.archs)))
    lines = [f"bench/pack.py: {a.threads} thread(s), {a.device}, torch {torch.__version__}", ""]
    for arch in a.archs:
        lines += table(arch, steps[arch], a.ks, a.repeats, a.seq_max, a.device, a.norm) + [""]
    if a.profile:
        for arch in a.archs:
            lines += profile(arch, steps[arch], a.device, a.norm) + [""]
            print(*lines[-3:], sep="\n", flush=True)
    out = Path(__file__).resolve().parent / "results" / f"pack_{a.device}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
