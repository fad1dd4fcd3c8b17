"""Packed cells: K cells trained as one program over stacked parameters give each cell's unpacked result.

Everything in float64 on CPU: losses, evaluations and measurement rows agree with `train_cell` to 1e-10
relative over 50 steps, for every norm variant on both architectures. The DLN packs as one batched
network (bnsweep/dln_pack.py): full-batch none / batch / l2 members on the data's moments, mini-batch
members and the other norms on the samples; both forms are compared with the unpacked run here.
"""

import math

import pytest
import torch
from conftest import MEASURE_ALL, TINY_DLN, tiny_spec
from test_train import cell

from bnsweep.errors import UserError
from bnsweep.norms import NORMS
from bnsweep.pack import train_pack
from bnsweep.spec import PACK_AUTO, CellConfig, expand, pack_size, packs
from bnsweep.specfile import load_spec
from bnsweep.train import TrainResult, TrainState, train_cell

F64 = torch.float64
REL = 1e-10
ZERO = 1e-14  # values zero but for rounding (a BatchNorm output's batch mean, 6e-17) compare absolutely
LRS = {"dln": [1e-4, 3e-4], "vgg_mini": [0.1, 0.05]}


def close(a, b, rel=REL) -> bool:
    """Equal structure; numbers equal to `rel` relative (NaN matches NaN; both within ZERO of 0 match)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return ((math.isnan(a) and math.isnan(b)) or abs(a - b) <= rel * max(abs(a), abs(b)) or a == b
                or max(abs(a), abs(b)) <= ZERO)
    return a == b


def same_curvature(a: dict, b: dict, rel=REL) -> bool:
    """Two curvature rows of one probe. Lanczos amplifies rounding (1e-16 in a Hessian-vector product) in what it
    has not converged, so an eigenvalue is as exact as the probe says: within the sum of the rows' own relative
    error bounds (a Ritz value is within its residual of an eigenvalue), and the bounds themselves agree in whether
    they met the tolerance. Everything else (step, counts, flags) is equal as usual."""
    ends = ("lambda_max", "lambda_min")
    rest = {k for k in a if not k.startswith(ends)}
    if a.keys() != b.keys() or not close({k: a[k] for k in rest}, {k: b[k] for k in rest}, rel):
        return False
    for end in ends:
        x, y, bound = a[end], b[end], a[f"{end}_error"] + b[f"{end}_error"]
        if a[f"{end}_converged"] != b[f"{end}_converged"] or not (close(x, y, rel) or abs(x - y) <= bound * max(abs(x), abs(y))):
            return False
    return True


def same_result(u: TrainResult, p: TrainResult, rel=REL) -> None:
    assert (p.status, p.diverged_step, p.resumed_from) == (u.status, u.diverged_step, u.resumed_from)
    assert close(u.steps, p.steps, rel), "step records differ"
    assert close(u.evals, p.evals, rel), "evaluations differ"
    um, pm = dict(u.measure_rows), dict(p.measure_rows)
    uc, pc = um.pop("curvature", []), pm.pop("curvature", [])
    assert close(um, pm, rel), "measurement rows differ"
    assert len(uc) == len(pc) and all(same_curvature(a, b, rel) for a, b in zip(uc, pc)), "curvature rows differ"


def members(arch, norm, steps=50, eval_every=25, lrs=None, seeds=(0, 1), measure=None) -> list[CellConfig]:
    out = [cell(arch, norm, lr, seed=s, steps=steps, eval_every=eval_every) for lr, s in zip(lrs or LRS[arch], seeds)]
    if measure:
        out = [CellConfig.model_validate({**c.model_dump(by_alias=True), "measure": measure}) for c in out]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["dln", "vgg_mini"])
@pytest.mark.parametrize("norm", NORMS)
def test_packed_equals_unpacked(arch, norm):
    cells = members(arch, norm)
    packed = train_pack(cells, dtype=F64)
    for c, p in zip(cells, packed):
        same_result(train_cell(c, dtype=F64), p)


def test_packed_dln_batch_equals_unpacked():
    """The quick member of the test above (BatchNorm on (N, C) inputs: the member-by-member kernel path)."""
    cells = members("dln", "batch", steps=30, eval_every=10)
    for c, p in zip(cells, train_pack(cells, dtype=F64)):
        same_result(train_cell(c, dtype=F64), p)


@pytest.mark.parametrize("norm", NORMS)
def test_packed_minibatch_dln_equals_unpacked(norm):
    """Mini-batches (16 of 64 samples, a fresh permutation each epoch): every norm on the samples form."""
    cells = [CellConfig.model_validate({**c.model_dump(by_alias=True),
                                        "train": {**c.train.model_dump(), "batch_size": 16}})
             for c in members("dln", norm, steps=30, eval_every=10, lrs=[1e-3, 3e-3], seeds=[0, 1])]
    for c, p in zip(cells, train_pack(cells, dtype=F64)):
        same_result(train_cell(c, dtype=F64), p)


def test_dln_pack_is_batched_math_not_vmap(monkeypatch):
    import bnsweep.pack

    def refuse(*a, **k):
        raise AssertionError("vmap on the DLN path")

    monkeypatch.setattr(bnsweep.pack, "vmap", refuse)
    for norm in ("batch", "l1"):  # the moment form and the samples form
        cells = members("dln", norm, steps=5, eval_every=0)
        assert [r.status for r in train_pack(cells, dtype=F64)] == ["done", "done"]


@pytest.mark.slow
def test_moment_form_gathers_only_the_batches_something_reads(monkeypatch):
    """A full-batch DLN on the data's moments reads no samples: a member's batch is gathered only at its measured
    steps (the probes run on the samples), its batch order drawn every step all the same, so it equals its unpacked
    run, which gathers every step; a pack on the samples (l1) gathers every member's batch every step."""
    import bnsweep.pack

    gathered = []
    real = bnsweep.pack.next_batch

    def spy(st, *a, **k):
        gathered.append(st)
        return real(st, *a, **k)

    monkeypatch.setattr(bnsweep.pack, "next_batch", spy)
    measure = {"ics": {"every": 4, "layers": [2]}}
    cells = members("dln", "batch", steps=12, eval_every=6, measure=measure)
    saved: dict = {}
    packed = train_pack(cells, dtype=F64, checkpoints=[lambda b, step, k=k: saved.__setitem__(("pack", k, step), b)
                                                       for k in range(2)], checkpoint_every=5)
    measured = {r["step"] for r in packed[0].measure_rows["ics"]}
    assert measured and len(gathered) == 2 * len(measured) < 2 * 12
    for k, (c, p) in enumerate(zip(cells, packed)):
        same_result(train_cell(c, dtype=F64, checkpoint=lambda b, step, k=k: saved.__setitem__(("alone", k, step), b),
                               checkpoint_every=5), p)
        for step in (5, 10):  # the batch order where it stands: the pack's checkpoint is the unpacked one's
            a, b = (TrainState.read(saved[(w, k, step)]) for w in ("alone", "pack"))
            assert torch.equal(a["generators"]["order"], b["generators"]["order"]) and a["order"]["pos"] == b["order"]["pos"]
            assert torch.equal(a["order"]["perm"], b["order"]["perm"])
    gathered.clear()
    train_pack(members("dln", "batch", steps=10, eval_every=5), dtype=F64)
    assert gathered == []
    train_pack(members("dln", "l1", steps=10, eval_every=5), dtype=F64)
    assert len(gathered) == 2 * 10


@pytest.mark.parametrize("arch,norm", [("dln", "noisy_batch"), ("dln", "batch"), ("dln", "l1"), ("vgg_mini", "batch")])
def test_measurements_run_per_member(arch, norm):
    cells = members(arch, norm, steps=12, eval_every=6, measure=MEASURE_ALL)
    packed = train_pack(cells, dtype=F64)
    for c, p in zip(cells, packed):
        u = train_cell(c, dtype=F64)
        assert u.measure_rows and all(u.measure_rows.values())
        same_result(u, p)
    assert packed[0].measure_rows != packed[1].measure_rows  # each member measured itself


@pytest.mark.parametrize("arch,norm", [("dln", "batch"), pytest.param("vgg_mini", "noisy_batch", marks=pytest.mark.slow)])
def test_momentum_and_weight_decay_as_torch_sgd(arch, norm):
    """SGD with momentum and decay on the stack; measured steps hand the momentum to torch.optim.SGD and back."""
    cells = [CellConfig.model_validate({**c.model_dump(by_alias=True),
                                        "train": {**c.train.model_dump(), "momentum": 0.9, "weight_decay": 1e-3}})
             for c in members(arch, norm, steps=20, eval_every=10, measure={"ics": {"every": 6, "layers": [2]}})]
    for c, p in zip(cells, train_pack(cells, dtype=F64)):
        same_result(train_cell(c, dtype=F64), p)


class Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("arch,norm", [("dln", "noisy_batch"), ("vgg_mini", "l2")])
def test_resumed_pack_equals_uninterrupted_pack(arch, norm):
    cells = [CellConfig.model_validate({**c.model_dump(by_alias=True), "checkpoint_every": 8})
             for c in members(arch, norm, steps=24, eval_every=5,
                              measure={"landscape": {"every": 7, "eta": {"points": 2}}})]
    whole = train_pack(cells, dtype=F64)
    saved: dict[int, dict] = {}

    def save(k):
        def put(blob: bytes, step: int):
            saved[k] = state = TrainState.read(blob)  # through bytes, as in the store
            assert state["step"] == step
            if k == len(cells) - 1 and state["step"] == 16:
                raise Stop
        return put

    with pytest.raises(Stop):
        train_pack(cells, dtype=F64, checkpoints=[save(k) for k in range(len(cells))], checkpoint_every=8)
    assert {s["step"] for s in saved.values()} == {16}
    resumed = train_pack(cells, dtype=F64, resumes=[saved[k] for k in range(len(cells))])
    for w, r in zip(whole, resumed):
        assert r.resumed_from == 16
        assert (r.steps, r.evals, r.measure_rows, r.status) == (w.steps, w.evals, w.measure_rows, w.status)
    # a member's checkpoint is its own TrainState: it resumes unpacked too
    alone = train_cell(cells[0], dtype=F64, resume=saved[0])
    same_result(train_cell(cells[0], dtype=F64, resume=saved[0]), alone)
    assert close(alone.steps, whole[0].steps)


def test_diverged_member_stops_alone(monkeypatch):
    """A diverged member ends at once and leaves the stack (the others go on as a pack of 2): the others' results
    are those of a pack without it, and its own that of its unpacked run."""
    from bnsweep.pack import Stack

    kept: list[list[int]] = []
    keep = Stack.keep
    monkeypatch.setattr(Stack, "keep", lambda self, live: (kept.append(list(live)), keep(self, live))[1])
    lrs, seeds = [1e-4, 1e-1, 5e-5], [0, 2, 1]
    cells = members("dln", "none", steps=50, eval_every=25, lrs=lrs, seeds=seeds)
    ended: list[int] = []
    with3 = train_pack(cells, dtype=F64, finished=lambda k, res: ended.append(k))
    assert kept == [[0, 2]]
    without = train_pack([cells[0], cells[2]], dtype=F64)
    assert with3[1].status == "diverged" and ended[0] == 1  # finished as soon as it diverged
    same_result(train_cell(cells[1], dtype=F64), with3[1])
    for a, b in zip([with3[0], with3[2]], without):
        assert b.status == "done"
        same_result(b, a)


def test_pack_setting_and_identity(tmp_path, spec_file):
    base = tiny_spec(tmp_path / "out", grids=[TINY_DLN])
    plain = expand(load_spec(spec_file(base)))
    packed = expand(load_spec(spec_file({**base, "execution": {"pack": 3}}, "p.yaml")))
    assert [c.cell_id for c in plain] == [c.cell_id for c in packed]  # packing is not identity
    groups = packs(packed)
    assert [len(g) for g in groups] == [3, 1, 3, 1]  # per norm: 4 cells (2 lr x 2 seeds) in packs of 3
    assert all(len({(c.norm, c.arch) for c in g}) == 1 for g in groups)
    assert [len(g) for g in packs(plain)] == [1] * len(plain)
    auto = expand(load_spec(spec_file({**base, "execution": {"pack": "auto"}}, "a.yaml")))
    assert {pack_size(c) for c in auto} == {PACK_AUTO["cpu"]["dln"]} and PACK_AUTO["cpu"]["dln"] > 1  # auto on CPU
    assert [len(g) for g in packs(auto)] == [4, 4]  # per norm, all 4 cells in one pack
    on_gpu = auto[0].model_copy(update={"device": "auto", "resources": auto[0].resources.model_copy(update={"gpu": 1.0})})
    assert pack_size(on_gpu) == 8 and on_gpu.cell_id == auto[0].cell_id
    over = {**TINY_DLN, "overrides": {**TINY_DLN["overrides"], "execution": {"pack": 2}}}
    overridden = expand(load_spec(spec_file(tiny_spec(tmp_path / "o", grids=[over]), "g.yaml")))
    assert [len(g) for g in packs(overridden)] == [2] * 4


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5])
def test_bad_pack_is_one_line(tmp_path, spec_file, bad):
    path = spec_file({**tiny_spec(tmp_path / "out", grids=[TINY_DLN]), "execution": {"pack": bad}})
    with pytest.raises(UserError) as e:
        load_spec(path)
    assert "execution.pack" in str(e.value) and "\n" not in str(e.value)


def test_cells_that_differ_in_more_than_lr_and_seed_do_not_pack():
    with pytest.raises(ValueError, match="everything but lr and seed"):
        train_pack([cell("dln", "batch"), cell("dln", "none")])


@pytest.mark.ray
@pytest.mark.slow
def test_packed_sweep_through_ray_then_rerun_only_unfinished_members(tmp_path, capsys):
    """`bnsweep run` with pack 2: one trial per pack writes its members' results; a lost member alone runs again."""
    import polars as pl
    from conftest import write_spec

    from bnsweep.cli import main
    from bnsweep.records import Store

    grid = {**TINY_DLN, "norm": ["batch", "noisy_batch"]}
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "out", grids=[grid], execution={"pack": 2}))
    assert main(["run", str(spec)]) == 0
    store = Store(str(tmp_path / "out"))
    cells = store.read("cells", "tiny").to_pylist()
    assert len(cells) == 8 and {c["status"] for c in cells} == {"done"}
    assert {c["pack_size"] for c in cells} == {2} and sorted(c["pack_index"] for c in cells) == [0] * 4 + [1] * 4
    steps = pl.from_arrow(store.read("steps", "tiny"))
    evals = pl.from_arrow(store.read("evals", "tiny"))
    by_pack = {}  # the tables hold each member's result of its pack (float32; float64 equality is tested above)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (resources.cpu: 1): float32 sums depend on the thread count
    try:
        for p in packs(expand(load_spec(spec))):
            by_pack.update({c.cell_id: r for c, r in zip(p, train_pack(p))})
    finally:
        torch.set_num_threads(threads)
    for cell_id, r in by_pack.items():
        mine = steps.filter(pl.col("cell_id") == cell_id).sort("step")
        assert mine["loss"].to_list() == r.steps["loss"]
        ev = evals.filter(pl.col("cell_id") == cell_id).sort("step", "split")
        assert ev["loss"].to_list() == [e["loss"] for e in sorted(r.evals, key=lambda e: (e["step"], e["split"]))]

    lost = cells[0]["cell_id"]  # a member whose trial died before its rows were written
    for f in (tmp_path / "out").rglob(f"{lost}.parquet"):
        f.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.parquet")}
    capsys.readouterr()
    assert main(["run", str(spec)]) == 0
    assert "8 cells: 7 already have results, 1 to run" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # the finished members were not run again
    again = {c["cell_id"]: c for c in store.read("cells", "tiny").to_pylist()}
    assert again[lost]["status"] == "done" and again[lost]["pack_size"] == 1


class Crash(BaseException):
    """The process dies (not an exception a trial records as `failed`)."""


def test_pack_killed_then_rerun_resumes_only_the_unfinished_member(tmp_path):
    from bnsweep.cell import run_pack
    from bnsweep.records import Store

    cells = [CellConfig.model_validate({**c.model_dump(by_alias=True), "checkpoint_every": 10})
             for c in members("dln", "none", steps=50, eval_every=25, lrs=[1e-4, 1e-1], seeds=[0, 2])]

    class Dying(Store):
        def put(self, path, data):
            super().put(path, data)
            if path == self.checkpoint_path(cells[0]) and TrainState.read(data)["step"] == 30:
                raise Crash

    with pytest.raises(Crash):
        run_pack(cells, Dying(str(tmp_path / "out")))
    store = Store(str(tmp_path / "out"))
    first = {c["cell_id"]: c for c in store.read("cells", "t").to_pylist()}
    assert list(first) == [cells[1].cell_id] and first[cells[1].cell_id]["status"] == "diverged"  # written at once
    assert first[cells[1].cell_id]["pack_size"] == 2 and first[cells[1].cell_id]["pack_index"] == 1
    diverged_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob(f"{cells[1].cell_id}.parquet")}

    outs = run_pack(cells, store)  # a retried trial: the finished member is left alone
    assert [o["status"] for o in outs] == ["done", "diverged"]
    assert all(p.stat().st_mtime_ns == t for p, t in diverged_files.items())
    again = {c["cell_id"]: c for c in store.read("cells", "t").to_pylist()}
    assert again[cells[0].cell_id]["resumed_from"] == 30 and again[cells[0].cell_id]["steps_done"] == 50
    assert store.get(store.checkpoint_path(cells[0])) is None
