"""Packed cells against the same cells one after another, in one process (training loop only).

    python bench/pack.py [--arch dln|vgg_mini] [--norm batch] [--steps 200] [--ks 1 2 4 8] [--repeats 3]

For each K: K cells (lr and seed differ) trained by `train_pack` as one pack, and the same K cells by
`train_cell` one after another; alternating, `--repeats` times; the median seconds of each and their
ratio (sequential / packed: above 1 means packing wins). Evaluations only at the start and the end.
The table is printed and written to bench/results/pack_<arch>_<norm>_<device>.txt.
torch uses `--threads` threads (default 1, so the figure does not depend on how loaded the cores are).
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

SETUPS = {  # the paper's DLN (25 layers of 10, full batch of 1000); the digits VGG at 1/16 width
    "dln": ({"name": "gaussian_regression"}, {"depth": 25}, 1000, 1e-6),
    "vgg_mini": ({"name": "digits"}, {"width": 0.0625}, 128, 0.1),
}


def cells(arch: str, norm: str, steps: int, k: int, device: str) -> list[CellConfig]:
    data, model, batch, lr = SETUPS[arch]
    return [CellConfig(sweep="bench", arch=arch, norm=norm, lr=lr * (1 + i / 10), seed=i, dataset=data, model=model,
                       norm_options={}, device=device, resources={"cpu": 1},
                       train=TrainSpec(steps=steps, batch_size=batch, eval_every=0)) for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="dln", choices=list(SETUPS))
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    train_cell(cells(a.arch, a.norm, 5, 1, a.device)[0])  # warm-up: data load, first-call costs
    train_pack(cells(a.arch, a.norm, 5, 2, a.device))
    lines = [f"{a.arch} {a.norm}, {a.steps} steps, {a.threads} thread(s), {a.device}, median of {a.repeats}",
             f"{'K':>3} {'packed s':>9} {'sequential s':>13} {'seq/packed':>11} {'ms/step/cell packed':>20}"]
    print(*lines, sep="\n", flush=True)
    for k in a.ks:
        cs = cells(a.arch, a.norm, a.steps, k, a.device)
        packed, seq = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            train_pack(cs)
            packed.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for c in cs:
                train_cell(c)
            seq.append(time.perf_counter() - t0)
        p, s = statistics.median(packed), statistics.median(seq)
        lines.append(f"{k:>3} {p:>9.2f} {s:>13.2f} {s / p:>11.2f} {1000 * p / a.steps / k:>20.2f}")
        print(lines[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / f"pack_{a.arch}_{a.norm}_{a.device}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
