"""How often the verdict rule is wrong, measured: simulated claims with known truth through the real decision code.

    python bench/verdict_calibration.py              # a table
    python bench/verdict_calibration.py --json       # the same as JSON
    python bench/verdict_calibration.py --claims 500 # fewer simulated claims per setting (default 2,000)

Each setting draws per-seed values of a claim's primary comparison and of one secondary with the same
truth (normal on the analysis scale) at a seed-to-seed spread read off claims_cpu's tables (README, "Every
claim on a laptop": the 95 % interval of each comparison with 8 seeds a side gives the per-seed
spread as half its width / (t_0.975 sqrt(2/8)) ), with a known true difference, and passes them through
verdicts.comparison and verdicts.judge, the code `report` runs, at 8 seeds per side (fixed n) and
through sequential.decide with looks at 8, 16, 24, 32 seeds (the sequential mode; a claim's seeds are
drawn up front and each look sees the first n). For rates the seeds are Bernoulli draws.

Truth per setting: `holds` (the claimed direction, or equality inside the margin) makes `contradicted`
the wrong verdict; `fails` (no effect for a direction claim, a difference at or beyond the margin for
equality) makes `supported` wrong. Settings at the margin itself are the hardest case for each test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import sequential, verdicts  # noqa: E402
from analysis.declared import METRICS, ClaimSpec, Declared  # noqa: E402
from analysis.settings import DEFAULT  # noqa: E402
from analysis.verdicts import CONTRADICTED, SUPPORTED, Key, Side  # noqa: E402

SEEDS = 8  # per side, as claims_cpu
DESIGN = sequential.Design(first=8, step=8, max_seeds=32)
M_LOG, M_ACC, M_RATE = math.log10(DEFAULT.factor_tolerance), DEFAULT.accuracy_tolerance, DEFAULT.rate_margin


@dataclass(frozen=True)
class Setting:
    name: str
    metric: str
    test: str
    sd: float  # per-seed spread on the analysis scale (rates: unused)
    effect: float  # true mean(a) - mean(b) (rates: rate a - rate b)
    truth: str  # holds | fails
    base: float = 0.0  # rates: b's true rate


# spreads (sd per seed) from claims_cpu's intervals, 8 seeds a side: VGG beta_eff x0.53 [x0.45, x0.62] -> 0.07 decade;
# DLN beta_eff x1.45 [x0.52, x4.0] -> 0.42; ICS l2 x17.1 [x2.9, x100] -> 0.73; DLN gradient predictiveness
# x0.0079 [x5e-6, x12] -> 3.0; noisy vs batch accuracy -0.058 [-0.124, +0.008] -> 0.063; DLN l1 vs batch final loss
# x1.03 [x0.74, x1.42] -> 0.13 decade
SETTINGS = [
    Setting("beta_eff vgg: no effect", "beta_eff", "lower", 0.07, 0.0, "fails"),
    Setting("beta_eff vgg: effect at the margin (x0.5)", "beta_eff", "lower", 0.07, -M_LOG, "holds"),
    Setting("beta_eff dln: no effect", "beta_eff", "lower", 0.42, 0.0, "fails"),
    Setting("beta_eff dln: effect at the margin (x0.5)", "beta_eff", "lower", 0.42, -M_LOG, "holds"),
    Setting("grad_predictiveness dln: no effect", "grad_predictiveness", "lower", 3.0, 0.0, "fails"),
    Setting("grad_predictiveness dln: effect x0.01", "grad_predictiveness", "lower", 3.0, -2.0, "holds"),
    Setting("ics_l2: equal (not lower holds)", "ics_l2", "not_lower", 0.73, 0.0, "holds"),
    Setting("ics_l2: reduced at the margin (x0.5)", "ics_l2", "not_lower", 0.73, -M_LOG, "fails"),
    Setting("auc_accuracy: equal", "auc_accuracy", "equivalent", 0.063, 0.0, "holds"),
    Setting("auc_accuracy: differ by the margin", "auc_accuracy", "equivalent", 0.063, M_ACC, "fails"),
    Setting("auc_accuracy, tight: equal", "auc_accuracy", "equivalent", 0.01, 0.0, "holds"),
    Setting("auc_accuracy, tight: differ by the margin", "auc_accuracy", "equivalent", 0.01, M_ACC, "fails"),
    Setting("final_loss dln: no effect", "final_loss", "lower", 0.13, 0.0, "fails"),
    Setting("final_loss dln: effect at the margin (x0.5)", "final_loss", "lower", 0.13, -M_LOG, "holds"),
    Setting("divergence: no effect (both 0.9)", "divergence", "lower", 0.0, 0.0, "fails", base=0.9),
    Setting("divergence: lower by the margin (0.4 vs 0.9)", "divergence", "lower", 0.0, -M_RATE, "holds", base=0.9),
]


def _spec(s: Setting) -> ClaimSpec:
    d = Declared("vgg", "batch", "none", s.metric, s.test)
    return ClaimSpec("sim", "-", s.name, d, (Declared("dln", "batch", "none", s.metric, s.test, "all"),))


def _draw(s: Setting, rng: np.random.Generator, n: int) -> tuple:
    """(a, b) for the primary and (a, b) for a secondary with the same truth: n seeds each."""
    if METRICS[s.metric].source == "rate":
        p = lambda r: (rng.random(n) < r).astype(float)
        return (p(s.base + s.effect), p(s.base)), (p(s.base + s.effect), p(s.base))
    z = lambda mu: rng.normal(mu, s.sd, n)
    return (z(s.effect), z(0.0)), (z(s.effect), z(0.0))


def _rows(spec: ClaimSpec, draws: tuple, n: int, alpha: float) -> list[verdicts.Row]:
    out = []
    for role, d, (a, b), arch in (("primary", spec.primary, draws[0], "vgg"), ("secondary", spec.secondary[0], draws[1], "dln")):
        a, b = a[:n], b[:n]
        vals = ((int(a.sum()), n), (int(b.sum()), n)) if METRICS[d.metric].source == "rate" else (a, b)
        sides = (Side(n), Side(n))
        out.append(verdicts.comparison("sim", role, d, Key(arch, 0.1), *vals, sides, False, DEFAULT, alpha, estimate=False))
    return out


def run(s: Setting, claims: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, SETTINGS.index(s)])
    spec = _spec(s)
    fixed, seq, looks = [], [], []
    for _ in range(claims):
        draws = _draw(s, rng, DESIGN.max_seeds)
        fixed.append(verdicts.judge(spec, _rows(spec, draws, SEEDS, DEFAULT.alpha), DEFAULT).verdict)
        v = sequential.decide(spec, lambda n, alpha, draws=draws: _rows(spec, draws, n, alpha), DESIGN, DEFAULT)
        seq.append(v.verdict)
        looks.append(DESIGN.looks()[v.look])
    wrong = CONTRADICTED if s.truth == "holds" else SUPPORTED
    right = SUPPORTED if s.truth == "holds" else CONTRADICTED

    def rates(v: list[str]) -> dict:
        v = np.array(v)
        return {"wrong": float(np.mean(v == wrong)), "right": float(np.mean(v == right)),
                "wrong_supported": float(np.mean(v == SUPPORTED)) if s.truth == "fails" else 0.0,
                "wrong_contradicted": float(np.mean(v == CONTRADICTED)) if s.truth == "holds" else 0.0}

    return {"setting": s.name, "metric": s.metric, "test": s.test, "sd": s.sd, "effect": s.effect, "truth": s.truth,
            "claims": claims, "fixed": {"seeds": SEEDS, **rates(fixed)},
            "sequential": {"looks": DESIGN.looks(), **rates(seq), "mean_seeds": float(np.mean(looks))}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--claims", type=int, default=2000, help="simulated claims per setting (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = [run(s, args.claims, args.seed) for s in SETTINGS]
    worst = max(max(r["fixed"]["wrong"], r["sequential"]["wrong"]) for r in rows)
    out = {"alpha": DEFAULT.alpha, "settings": rows, "worst_wrong_rate": worst, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{'setting':48} {'truth':5} | fixed n=8: wrong right | sequential 8..32: wrong right mean seeds")
        for r in rows:
            f, q = r["fixed"], r["sequential"]
            print(f"{r['setting']:48} {r['truth']:5} | {f['wrong']:10.4f} {f['right']:.4f} | "
                  f"{q['wrong']:22.4f} {q['right']:.4f} {q['mean_seeds']:.1f}")
        print(f"worst wrong-verdict rate {worst:.4f} ({args.claims} claims per setting, {out['seconds']} s)")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
