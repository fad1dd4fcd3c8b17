"""Which reading of the paper's DLN constants reproduces its plots? (docs/dln-protocol.md)

    python studies/dln_protocol.py                       # every reading, 10k steps (see --seeds, --sample-seeds)
    python studies/dln_protocol.py --steps 500 --seeds 2 --readings today half   # a quick look

Each reading is a set of option overrides of bnsweep's `gaussian_regression` data and `dln` model.
Every cell (reading x norm x lr x seed) is a bnsweep CellConfig, trained by studies/dln_batched.py
(checked against bnsweep's train_cell), full batch 1000, plain SGD. Per cell: start = step-0 loss,
end = median loss over the last 100 steps. Per reading: medians over seeds, and the score fixed in
docs/dln-protocol.md. Writes studies/results/dln_protocol.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnsweep.spec import CellConfig, SweepSpec, expand  # noqa: E402
from studies.dln_batched import MOMENT_NORMS, train_batched  # noqa: E402

# reading -> (dataset options, dln options), over BASE; fixed before any was run
READINGS: dict[str, tuple[dict, dict]] = {
    "today": ({}, {}),
    "half": ({"half": True}, {}),
    "mean": ({"reduction": "mean"}, {}),
    "a_scaled": ({"a_std": 0.1 ** 0.5}, {}),
    "norm_last": ({}, {"norm_last": True}),
    "bias": ({}, {"bias": True}),
    "glorot_normal": ({}, {"init": "glorot_normal"}),
}
NORMS = ["none", "batch", "l1", "l2", "linf"]
LRS = [1e-6, 1e-7]
# the paper's plotted values at lr 1e-6 (Figs. 3b, 5b): the start, then the end of each variant
PAPER = {"start": 4e4, "none": 1.6e3, "batch": 5e2, "l1": 1e2, "l2": 5e2, "linf": 1e3}
TAIL = 100  # end = median of the last TAIL steps' losses


BASE = ({"a_std": 1.0}, {})  # `today`: bnsweep's reading before this study, whatever the defaults are now


def options(reading: str) -> tuple[dict, dict]:
    """A reading's overrides over BASE; `a+b` combines readings a and b (the study's second round)."""
    data, model = BASE
    for part in reading.split("+"):
        if part not in READINGS:
            raise SystemExit(f"unknown reading {part!r}; known: {', '.join(READINGS)} (combine with +)")
        data, model = {**data, **READINGS[part][0]}, {**model, **READINGS[part][1]}
    return data, model


def cells_of(reading: str, norms: list[str], lrs: list[float], seeds: int, steps: int) -> list[CellConfig]:
    data, model = options(reading)
    spec = SweepSpec.model_validate({
        "name": f"dln_protocol_{reading.replace('+', '_and_')}", "output": "unused", "device": "cpu",
        "dataset": {"name": "gaussian_regression", **data}, "model": {"dln": model},
        "train": {"steps": steps, "batch_size": 1000, "eval_every": 0},
        "grid": {"arch": ["dln"], "norm": norms, "lr": lrs, "seed": list(range(seeds))}})
    return expand(spec)


def run(readings: list[str], norms: list[str], lrs: list[float], seeds: int, sample_seeds: int, steps: int,
        cache: Path) -> list[dict]:
    """One row per cell: reading, norm, lr, seed, start, end, diverged step.

    Cells are trained in two kinds of group per learning rate (none/batch/l2 on the data's moments,
    l1/linf on the samples), lr 1e-6 (the scored rate) first; each group's rows are appended to
    `cache` (JSON lines) as it finishes, and cells already there are not run again.
    """
    key = lambda r: (r["reading"], r["norm"], r["lr"], r["seed"], r["steps"])
    have = {key(json.loads(line)) for line in cache.read_text().splitlines()} if cache.exists() else set()
    groups: dict[tuple, list[tuple[str, CellConfig]]] = {}
    for r in readings:
        for norm in norms:
            sample = norm not in MOMENT_NORMS
            for c in cells_of(r, [norm], lrs, sample_seeds if sample else seeds, steps):
                if (r, c.norm, c.lr, c.seed, steps) not in have:
                    groups.setdefault((-c.lr, sample), []).append((r, c))
    cache.parent.mkdir(parents=True, exist_ok=True)
    for (lr, sample), members in sorted(groups.items()):
        t0 = time.perf_counter()
        losses, diverged = train_batched([c for _, c in members])
        print(f"  lr {-lr:g} {'samples' if sample else 'moments'}: {len(members)} cells in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        with cache.open("a") as fh:
            for j, (r, c) in enumerate(members):
                tail = losses[-TAIL:, j]
                fh.write(json.dumps({"reading": r, "norm": c.norm, "lr": c.lr, "seed": c.seed, "steps": steps,
                                     "start": losses[0, j].item(), "diverged_step": diverged[j],
                                     "end": tail.median().item() if diverged[j] is None else math.inf}) + "\n")
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    return [r for r in rows if r["reading"] in readings and r["steps"] == steps]


def summarise(rows: list[dict]) -> dict:
    """Per reading: per (norm, lr) medians and ranges over seeds; its score and ordering at lr 1e-6."""
    out: dict = {}
    for r in dict.fromkeys(x["reading"] for x in rows):
        mine = [x for x in rows if x["reading"] == r]
        cells = {}
        for norm in NORMS:
            for lr in LRS:
                sel = [x for x in mine if x["norm"] == norm and x["lr"] == lr]
                if sel:
                    ends = [x["end"] for x in sel]
                    cells[f"{norm}@{lr:g}"] = {"start": statistics.median(x["start"] for x in sel),
                                               "end": statistics.median(ends), "end_min": min(ends), "end_max": max(ends),
                                               "diverged": sum(x["diverged_step"] is not None for x in sel), "n": len(sel)}
        at = {n: cells.get(f"{n}@1e-06") for n in NORMS}
        starts = [x["start"] for x in mine if x["lr"] == 1e-6]
        start = statistics.median(starts) if starts else math.nan  # lr 1e-6 not run: nothing to score
        ours = {"start": start, **{n: at[n]["end"] if at[n] else math.nan for n in NORMS}}
        errs = [math.nan if math.isnan(ours[k]) else math.log10(ours[k] / PAPER[k]) if 0 < ours[k] < math.inf else math.inf
                for k in PAPER]  # nan: not run; inf: diverged
        score = math.sqrt(sum(e * e for e in errs) / len(errs))
        full = all(not math.isnan(ours[n]) for n in NORMS)  # order and tau need every variant's end
        out[r] = {"cells": cells, "values_1e-6": ours, "log10_errors": dict(zip(PAPER, errs)), "score": score,
                  "order": sorted(NORMS, key=lambda n: ours[n]) if full else [],
                  "kendall_tau": kendall([ours[n] for n in NORMS], [PAPER[n] for n in NORMS]) if full else math.nan}
    return out


def kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two rankings (ties in either count as neither concordant nor discordant)."""
    num, ta, tb = 0, 0, 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            sa, sb = (a[i] > a[j]) - (a[i] < a[j]), (b[i] > b[j]) - (b[i] < b[j])
            num += sa * sb
            ta += sa != 0
            tb += sb != 0
    return num / math.sqrt(ta * tb) if ta and tb else math.nan


def choose(summary: dict) -> tuple[str, str]:
    """docs/dln-protocol.md's rule: the best score (Kendall's tau breaks ties within 0.1), if it beats today by 0.1."""
    if missing := [r for r in summary if math.isnan(summary[r]["score"])]:
        return "today", f"incomplete: {', '.join(missing)} lack a variant at lr 1e-6; no choice is made"
    best = min(summary, key=lambda r: summary[r]["score"])
    near = [r for r in summary if summary[r]["score"] <= summary[best]["score"] + 0.1]
    best = max(near, key=lambda r: (summary[r]["kendall_tau"], -summary[r]["score"]))
    if "today" in summary and summary[best]["score"] > summary["today"]["score"] - 0.1:
        return "today", f"no reading beats today by 0.1 in score (best: {best})"
    verdict = "reproduces" if summary[best]["score"] <= 0.3 else "does not reproduce"
    return best, f"{best} {verdict} the paper (score {summary[best]['score']:.2f}; 0.3 = a factor 2)"


def g(v: float) -> str:
    return "div" if v == math.inf else f"{v:.3g}"


def table(summary: dict) -> str:
    head = "| reading | score | tau | order (low -> high) | start | " + " | ".join(f"{n} end [min, max]" for n in NORMS) + " |"
    lines = [head, "|" + "---|" * (5 + len(NORMS)),
             "| paper | 0 | 1 | l1 < batch ~ l2 < linf < none | 4e4 | " + " | ".join(g(PAPER[n]) for n in NORMS) + " |"]
    for lr in LRS:
        for r, s in summary.items():
            c = {n: s["cells"].get(f"{n}@{lr:g}") for n in NORMS}
            if not any(c.values()):
                continue
            starts = [v["start"] for v in c.values() if v]
            scored = lr == 1e-6
            lines.append(f"| {r} @ {lr:g} | {s['score']:.2f} | {s['kendall_tau']:.2f} | {' < '.join(s['order'])} | "
                         if scored else f"| {r} @ {lr:g} | | | | ")
            lines[-1] += f"{g(statistics.median(starts))} | " + " | ".join(
                f"{g(v['end'])} [{g(v['end_min'])}, {g(v['end_max'])}]" + (f" ({v['diverged']} div)" if v["diverged"] else "") if v else "-"
                for v in c.values()) + " |"
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", nargs="+", default=list(READINGS), help=f"of {', '.join(READINGS)}; a+b combines two")
    ap.add_argument("--norms", nargs="+", default=NORMS, choices=NORMS)
    ap.add_argument("--seeds", type=int, default=5, help="seeds of none, batch, l2 (moment form: cheap)")
    ap.add_argument("--sample-seeds", type=int, default=5, help="seeds of l1, linf (trained on the samples: slower)")
    ap.add_argument("--lrs", nargs="+", type=float, default=LRS, help="learning rates (lr 1e-6 is the scored one)")
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--out", default=str(ROOT / "studies" / "results" / "dln_protocol.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for r in a.readings:
        options(r)
    rows = run(a.readings, a.norms, a.lrs, a.seeds, a.sample_seeds, a.steps, Path(a.out).with_suffix(".cells.jsonl"))
    summary = summarise(rows)
    choice, why = choose(summary)
    wall = time.perf_counter() - t0
    print(table(summary))
    print(f"\nchoice: {choice}: {why}\nwall {wall:.0f} s on {platform.processor() or platform.machine()}, 1 torch thread")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"steps": a.steps, "seeds": a.seeds, "sample_seeds": a.sample_seeds, "tail": TAIL,
                                       "paper": PAPER, "wall_s": wall,
                                       "torch": torch.__version__, "choice": choice, "why": why,
                                       "summary": summary, "cells": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
