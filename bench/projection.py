"""Device-hours of a sweep file, projected from the figures bench/gpu.py measured for one workload.

A cell costs steps x (seconds per step, one cell alone) + evaluations x (seconds per evaluated image x
the data set's images) + for each measurement, probes x (seconds per probe of the paper schedule).
Running K cells at once, or packs of K, divides the total by that mode's measured throughput gain.
Only cells of the measured arch and batch size on a GPU are projected; the rest are counted and named.
"""

from __future__ import annotations

from pathlib import Path

CIFAR10_IMAGES = 60_000  # train + test: what one full evaluation reads [P]
BENCH_IMAGES = 12_000  # bench/gpu.py's CIFAR-shaped data: 10,000 train + 2,000 test


def _gain(mode: dict) -> tuple[str, float]:
    """The best K of a mode and its throughput relative to one cell alone (1.0 when absent)."""
    ok = {k: v for k, v in mode.items() if isinstance(v, dict) and "images_per_s" in v}
    if not ok:
        return "-", 1.0
    k = max(ok, key=lambda k: ok[k]["images_per_s"])
    return k, ok[k]["images_per_s"]


def project(w: dict, steps: int, sweeps: list[Path], arch: str = "vgg16", batch: int = 128) -> dict:
    """GPU-hours of each sweep file in `sweeps`, one cell at a time and at the best measured K.

    `w`: bench/gpu.py's figures for one workload of `arch` at `batch`, each cell timed over `steps` steps.
    """
    from bnsweep.measure import enabled
    from bnsweep.specfile import load_cells

    alone = w["concurrent"]["K=1"]
    per_step = alone["train_s"][0] / steps
    per_image_eval = alone["eval_s"][0] / (2 * BENCH_IMAGES)  # evaluations at step 0 and at the end
    per_probe = w.get("measurement", {}).get("seconds_per_probe", {})
    base = alone["images_per_s"]
    modes = {"one cell at a time": ("K=1", 1.0)}
    for name in ("concurrent", "packs"):
        k, ips = _gain(w.get(name, {}))
        if k != "-":
            modes[f"best {name} ({k})"] = (k, ips / base)
    out = {"seconds_per_step": round(per_step, 5), "seconds_per_eval": round(per_image_eval * CIFAR10_IMAGES, 2),
           "seconds_per_probe": per_probe, "sweeps": {}}
    for path in sweeps:
        _, cells = load_cells(str(path))
        total, skipped, missing = 0.0, 0, set()
        for c in cells:
            if c.arch != arch or c.train.batch_size != batch or c.resources.gpu == 0:
                skipped += 1
                continue
            evals = (c.train.steps // c.train.eval_every if c.train.eval_every else 0) + 1
            s = c.train.steps * per_step + evals * per_image_eval * CIFAR10_IMAGES
            for name, opts in enabled(c.measure):
                if name in per_probe:
                    s += len(opts.resolve(c.train.steps)) * per_probe[name]
                else:
                    missing.add(name)
            total += s * c.resources.gpu
        out["sweeps"][path.name] = {
            "cells_projected": len(cells) - skipped, "cells_not_projected": skipped,
            "measurements_without_a_cost": sorted(missing),
            "gpu_hours": {m: round(total / gain / 3600, 3) for m, (_, gain) in modes.items()},
        }
    return out
