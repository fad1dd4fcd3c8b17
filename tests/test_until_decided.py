"""`run --until-decided` end to end through Ray: seeds added in rounds to the groups an undecided claim needs,
interrupted with Ctrl-C and resumed with nothing duplicated, and the report judging by the same looks."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import write_spec
from test_interrupt import Driver

from analysis import sequential
from bnsweep.cli import main
from bnsweep.records import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _spec(tmp_path: Path) -> Path:
    # noisy_bn's primary (noisy_batch vs batch, equal within 0.02 of AUC) cannot be shown from 2 seeds; none and batch
    # alone decide nothing here, so only the groups of noisy_bn's primary may grow
    return write_spec(tmp_path / "seq.yaml", {
        "name": "seq", "output": str(tmp_path / "out"), "device": "cpu", "checkpoint_every": 0,
        "grid": [{"arch": ["vgg_mini"], "norm": ["none", "batch", "noisy_batch"], "lr": [0.2], "seed": [0, 1],
                  "overrides": {"dataset": {"name": "digits"}, "model": {"vgg": {"width": 0.0625}},
                                "train": {"steps": 30, "batch_size": 32, "eval_every": 10}}}],
    })


def _cells(out: Path) -> pl.DataFrame:
    return pl.DataFrame(Store(str(out)).read("cells", "seq")).select("cell_id", "norm", "seed", "status")


def test_until_decided_adds_seeds_only_where_needed_and_resumes_after_ctrl_c(tmp_path):
    spec, out = _spec(tmp_path), tmp_path / "out"
    d = Driver(spec, "--until-decided", "--max-seeds", "4")
    d.wait_for("round 1", lambda: any(line.startswith("round 1:") for line in d.out))
    d.interrupt()
    first = d.finish()
    assert first in (0, 130), d.text()
    assert "noisy_bn: inconclusive (too few seeds" in "".join(d.out), d.text()  # why round 1 came

    again = Driver(spec, "--until-decided", "--max-seeds", "4")
    assert again.finish(600) == 0, again.text()
    cells = _cells(out)
    assert cells["cell_id"].n_unique() == len(cells), "a cell was written twice"
    seeds = {n: sorted(cells.filter(norm=n)["seed"]) for n in ("none", "batch", "noisy_batch")}
    assert seeds == {"none": [0, 1], "batch": [0, 1, 2, 3], "noisy_batch": [0, 1, 2, 3]}, seeds
    design = sequential.read_design(Store(str(out)), "seq")
    assert design == sequential.Design(2, 2, 4) and design.looks() == [2, 4]
    assert sum(design.alphas(0.025)) == pytest.approx(0.025)

    # once more: every look is reached from the stored results, nothing runs and nothing is added
    third = Driver(spec, "--until-decided", "--max-seeds", "4")
    assert third.finish(600) == 0, third.text()
    assert "already have results, 0 to run" in "".join(third.out)
    assert len(_cells(out)) == len(cells)

    # a plain report sees the added seeds and judges by the same looks
    assert main(["report", str(out), "-o", str(tmp_path / "rep")]) == 0
    table = pl.read_csv(tmp_path / "rep" / "seq" / "tables" / "claims.csv")
    noisy = table.filter(claim="noisy_bn", role="primary").row(0, named=True)
    assert noisy["look"] in (0, 1) and noisy["n_a"] == (2 if noisy["look"] == 0 else 4)


def test_a_changed_design_is_refused(tmp_path):
    spec, out = _spec(tmp_path), tmp_path / "out"
    sequential.write_design(Store(str(out)), "seq", sequential.Design(2, 2, 8))
    assert main(["run", str(spec), "--until-decided", "--max-seeds", "4"]) == 2
    assert main(["run", str(spec), "--max-seeds", "4"]) == 2  # --max-seeds alone is a mistake
    assert main(["run", str(spec), "--until-decided", "--max-seeds", "1"]) == 2  # argparse: at least 2
