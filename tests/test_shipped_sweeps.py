"""Shipped sweeps: DLN and digits cells run at least 8 seeds; claims_cpu.yaml holds what every claim needs."""

from collections import defaultdict

import pytest
from conftest import ROOT

from bnsweep.norms import NORMS
from bnsweep.specfile import load_cells

CHEAP = [p for p in sorted((ROOT / "sweeps").glob("*.yaml")) if p.name != "quickstart.yaml"]  # quickstart: a 2-minute demo


@pytest.mark.parametrize("path", CHEAP, ids=lambda p: p.name)
def test_dln_and_digits_cells_run_at_least_8_seeds(path):
    seeds = defaultdict(set)
    for c in load_cells(path)[1]:
        if c.arch == "dln" or c.dataset.name == "digits":
            seeds[c.arch, c.norm, c.lr].add(c.seed)
    assert all(len(s) >= 8 for s in seeds.values()), {k: len(s) for k, s in seeds.items() if len(s) < 8}


def test_claims_cpu_measures_what_every_claim_needs():
    cells = load_cells(ROOT / "sweeps/claims_cpu.yaml")[1]
    assert {c.device for c in cells} == {"cpu"} and {c.dataset.name for c in cells} == {"gaussian_regression", "digits"}
    by = lambda arch: [c for c in cells if c.arch == arch]
    vgg, dln = by("vgg_mini"), by("dln")
    assert {c.norm for c in vgg} == set(NORMS)  # Figs. 2, 5: every variant
    assert {c.norm for c in dln} == {"none", "batch", "l1"}  # Fig. 5b's claim: l1 against BatchNorm
    assert {c.norm for c in load_cells(ROOT / "sweeps/dln.yaml")[1]} == {"none", "batch", "l1", "l2", "linf"}  # the whole of Fig. 5b
    for arch_cells in (vgg, dln):  # Figs. 3, 4, 10: ICS and landscape on none and batch
        for norm in ("none", "batch"):
            mine = [c for c in arch_cells if c.norm == norm]
            assert mine and all(c.measure.ics and c.measure.landscape for c in mine)
    lrs = {n: {c.lr for c in vgg if c.norm == n} for n in ("none", "batch")}
    assert lrs["none"] == lrs["batch"] and len(lrs["none"]) >= 3 and max(lrs["none"]) >= 10.0  # Fig. 1: past where none diverges
    assert all(c.measure.activations for c in vgg)
