"""The GPU path: VGG-16 on CUDA end to end, measurements against a CPU float64 reference, resume, shared GPUs.

    python -m pytest -m gpu tests/test_gpu.py        # on a machine with CUDA; skipped everywhere else
    BNSWEEP_TEST_DEVICE=cpu python -m pytest -m gpu tests/test_gpu.py   # the same tests on the CPU, VGG-16 at width 1/8

bench/device_check.sh runs them (and bench/gpu.py) in one command; CI runs it with `--device cpu --tiny`, which
sets BNSWEEP_TEST_DEVICE=cpu, so the code and assertions here run somewhere on every change, not only on a GPU.

The data is CIFAR-shaped noise written in torchvision's on-disk format (tests/test_data.py), so
nothing is downloaded. Tolerances, and why:
- measurements: each float within RTOL = 1e-3 of the float64 value, relative to the largest magnitude
  of that column in the cell; ICS within ICS_RTOL = 1e-2. Measured on CPU, float32 against float64 for
  this cell at width 1/8: ICS cosine 2.2e-3, ICS l2 2e-4, landscape 1.5e-4, activations 1.3e-5, losses
  below 1e-6. Lanczos (curvature) starts from one host float64 vector on every device, so what differs
  is the device's Hessian-vector products; both ends converge to 1e-3 either way;
- resume: bit for bit with `performance: {deterministic: true}`; within RESUME_RTOL = 1e-3 with the
  default cuDNN autotuning, whose algorithms may sum in a different order after a restart.
"""

import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_spec, write_spec
from test_data import publish, write_fake_cifar10

from bnsweep.cell import run_cell
from bnsweep.records import SCHEMAS, Store
from bnsweep.spec import CellConfig
from bnsweep.train import TrainState, train_cell

DEVICE = os.environ.get("BNSWEEP_TEST_DEVICE", "cuda")
assert DEVICE in ("cuda", "cpu"), f"BNSWEEP_TEST_DEVICE={DEVICE!r}: use cuda or cpu"
WIDTH = 1.0 if DEVICE == "cuda" else 0.125  # full width on a GPU; on a CPU the width the tolerances were measured at
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]
# the cells row's execution choices: (precision, tf32, cudnn_benchmark, check_every) by device (bnsweep/performance.py)
CHOICES = {"cuda": ("highest", False, True, 200), "cpu": ("highest", False, False, 25)}

RTOL, ICS_RTOL, RESUME_RTOL = 1e-3, 1e-2, 1e-3
EVERY_MEASUREMENT = {"ics": {"steps": [0, 1, 2], "layers": [2, 7, 13]},
                     "landscape": {"steps": [0, 1, 2], "eta": {"from": 0.5, "to": 4, "points": 4}},
                     "activations": {"steps": [0, 1, 2], "layers": [2, 9, 13]},
                     "curvature": {"steps": [0, 2]}}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root, per_batch=64)  # 320 training and 64 test images
    with pytest.MonkeyPatch.context() as mp:
        publish(mp, root)
        yield str(root)


def vgg16(root: str, steps: int, measure: dict | None = None, lr: float = 0.05, **perf) -> CellConfig:
    """A VGG-16 cell with BatchNorm on DEVICE (noise-free, so CPU and CUDA draw nothing different)."""
    return CellConfig.model_validate({
        "sweep": "gpu", "arch": "vgg16", "norm": "batch", "lr": lr, "seed": 0,
        "dataset": {"name": "cifar10", "root": root}, "model": {"width": WIDTH}, "norm_options": {},
        "train": {"steps": steps, "batch_size": 32, "eval_every": 10}, "device": DEVICE,
        "resources": {"gpu": 1} if DEVICE == "cuda" else {}, "measure": measure or {}, "performance": perf,
        "checkpoint_every": 8})


def assert_rows_close(name: str, ref: list[dict], got: list[dict], rtol: float) -> None:
    """Every row of `got` against `ref`: ints equal, floats within rtol of the column's largest magnitude."""
    assert len(ref) == len(got), name
    scale = {k: max((abs(r[k]) for r in ref if isinstance(r[k], float) and math.isfinite(r[k])), default=1.0)
             for k in ref[0]}
    for a, b in zip(ref, got):
        for k, v in a.items():
            if name == "curvature" and (k == "hvps" or k.endswith("_error")):
                continue  # Lanczos' stopping diagnostics: products rounded apart may stop one restart apart
            if isinstance(v, float):
                assert abs(v - b[k]) <= rtol * max(scale[k], 1e-12), (name, k, a["step"], v, b[k])
            else:
                assert v == b[k], (name, k)


def read(store: Store, name: str) -> pa.Table:
    """A table of sweep `gpu` with pyarrow alone: the GPU host has no Polars, which Store.read scans with."""
    good, bad = store.files(name, "gpu")
    assert good and not bad, (name, bad)
    return pa.concat_tables(pq.read_table(p).select(SCHEMAS[name].names).cast(SCHEMAS[name]) for p in good)


def test_vgg16_cell_end_to_end_on_the_device_with_every_measurement(cifar_root, tmp_path):
    c = vgg16(cifar_root, steps=24, measure={**EVERY_MEASUREMENT, "curvature": {"steps": [0, 23], "max_hvps": 200}})
    store = Store(str(tmp_path / "out"))
    assert run_cell(c, store)["status"] == "done"
    row = read(store, "cells").to_pylist()[0]
    assert row["device"].startswith(DEVICE) and row["steps_done"] == 24
    assert bool(row["cuda_version"]) or DEVICE == "cpu"
    assert (row["precision"], row["tf32"], row["cudnn_benchmark"], row["check_every"]) == CHOICES[DEVICE]
    for name in EVERY_MEASUREMENT:
        assert read(store, name).num_rows > 0 and row[f"{name}_s"] > 0, name
    steps = read(store, "steps")
    assert steps.column("step").to_pylist() == list(range(24))
    assert all(math.isfinite(v) for v in steps.column("loss").to_pylist())
    assert sorted(set(read(store, "evals").column("step").to_pylist())) == [0, 10, 20, 24]


@pytest.mark.slow  # the float64 reference runs full-width VGG-16 on the CPU
def test_each_measurement_on_the_device_matches_the_cpu_float64_reference(cifar_root):
    # lr 0.01: on random labels, lr 0.05 already amplifies float32 rounding to 2.5e-3 by step 2 (seen on CPU)
    c = vgg16(cifar_root, steps=3, measure=EVERY_MEASUREMENT, lr=0.01, deterministic=True)
    ref = train_cell(c, device="cpu", dtype=torch.float64)
    got = train_cell(c, device=DEVICE)  # float32
    assert got.device.startswith(DEVICE) and ref.device == "cpu"
    assert_rows_close("steps", [{"step": s, "loss": v} for s, v in zip(ref.steps["step"], ref.steps["loss"])],
                      [{"step": s, "loss": v} for s, v in zip(got.steps["step"], got.steps["loss"])], RTOL)
    assert ref.measure_rows.keys() == got.measure_rows.keys() == EVERY_MEASUREMENT.keys()
    for name, rows in ref.measure_rows.items():
        assert_rows_close(name, rows, got.measure_rows[name], ICS_RTOL if name == "ics" else RTOL)


def _resumed(c: CellConfig, at: int):
    saved = {}

    class Stop(Exception):
        pass

    def save(blob: bytes, step: int):
        saved["state"] = state = TrainState.read(blob)
        if state["step"] == at:
            raise Stop

    with pytest.raises(Stop):
        train_cell(c, checkpoint=save, checkpoint_every=c.checkpoint_every)
    return train_cell(c, resume=saved["state"])


@pytest.mark.parametrize("deterministic", [True, False])
def test_resume_on_the_device(cifar_root, deterministic):
    c = vgg16(cifar_root, steps=32, measure={"ics": {"every": 8, "layers": [3]}}, deterministic=deterministic)
    whole, resumed = train_cell(c), _resumed(c, at=16)
    assert resumed.resumed_from == 16
    if deterministic:
        assert (resumed.steps, resumed.evals, resumed.measure_rows) == (whole.steps, whole.evals, whole.measure_rows)
        return
    assert resumed.steps["step"] == whole.steps["step"]
    assert_rows_close("steps", [{"loss": v} for v in whole.steps["loss"]], [{"loss": v} for v in resumed.steps["loss"]],
                      RESUME_RTOL)
    assert_rows_close("evals", [{"loss": e["loss"]} for e in whole.evals], [{"loss": e["loss"]} for e in resumed.evals],
                      RESUME_RTOL)  # accuracy is a count: one flipped argmax would be 1/320


@pytest.mark.ray
@pytest.mark.slow
def test_two_cells_share_one_gpu_through_bnsweep_run(tmp_path):
    if DEVICE != "cuda":
        pytest.skip("two cells sharing one GPU needs a CUDA device")
    pytest.importorskip("ray", reason="needs Ray (bnsweep run schedules cells with it); this host has none")
    from bnsweep.cli import main

    grid = {"arch": ["vgg_mini"], "norm": ["batch"], "lr": [0.1], "seed": [0, 1],
            "overrides": {"dataset": {"name": "digits"},
                          "train": {"steps": 3000, "batch_size": 32, "eval_every": 1000}}}
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[grid], name="shared", device="auto",
                                                     resources={"cpu": 1, "gpu": 0.5}))
    assert main(["run", str(spec)]) == 0
    cells = Store(str(tmp_path / "out")).read("cells", "shared").to_pydict()
    assert cells["status"] == ["done", "done"]
    assert all(d.startswith("cuda") for d in cells["device"])
    (s0, s1), (f0, f1) = cells["started_at"], cells["finished_at"]
    assert s0 < f1 and s1 < f0, "the two cells ran one after the other, not side by side on the GPU"
