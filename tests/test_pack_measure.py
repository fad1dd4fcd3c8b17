"""Packed members measured on the stack: ICS and the landscape of every due member in stacked passes.

In float64 on CPU each member's rows (and losses and evaluations) equal its unpacked `train_cell` run to
1e-10 relative, for every norm variant, on the moment form and on the samples, with a member that diverges
mid-pack; and a pack trains exactly as it does with its measurements off.
"""

import pytest
import torch
from test_pack import F64, members, same_result

import bnsweep.pack
from bnsweep.measure.stacked import by_points
from bnsweep.norms import NORMS
from bnsweep.pack import train_pack
from bnsweep.spec import CellConfig
from bnsweep.train import train_cell

STACKED = {"ics": {"every": 4, "layers": [2, 3]}, "landscape": {"every": 5, "eta": {"points": 3}}}


def no_unpacked_step(monkeypatch):
    """A measured member takes no step of its own: `train_step` is never called in the pack."""
    def refuse(*a, **k):
        raise AssertionError("a member stepped unpacked")

    monkeypatch.setattr(bnsweep.pack, "train_step", refuse)


def with_batch(cells, batch_size):
    return [CellConfig.model_validate({**c.model_dump(by_alias=True), "train": {**c.train.model_dump(), "batch_size": batch_size}})
            for c in cells]


@pytest.mark.parametrize("norm", NORMS)
def test_stacked_measurements_equal_unpacked(monkeypatch, norm):
    """Three members (full batch: the moment form for none, batch, l2; the samples for the others)."""
    cells = members("dln", norm, steps=14, eval_every=7, lrs=[1e-4, 3e-4, 1e-3], seeds=[0, 1, 2], measure=STACKED)
    no_unpacked_step(monkeypatch)
    packed = train_pack(cells, dtype=F64)
    monkeypatch.undo()
    for c, p in zip(cells, packed):
        u = train_cell(c, dtype=F64)
        assert {len(u.measure_rows["ics"]), len(u.measure_rows["landscape"])} == {2 * 5, 3 * 4}
        same_result(u, p)
    assert packed[0].measure_rows != packed[1].measure_rows


@pytest.mark.parametrize("norm", ["batch", "noisy_batch", "linf"])
def test_stacked_measurements_on_minibatches(monkeypatch, norm):
    """Mini-batches of 16 (each member its own batch order): every point on its member's batch and noise."""
    cells = with_batch(members("dln", norm, steps=12, eval_every=6, lrs=[1e-3, 3e-3], measure=STACKED), 16)
    no_unpacked_step(monkeypatch)
    packed = train_pack(cells, dtype=F64)
    monkeypatch.undo()
    for c, p in zip(cells, packed):
        same_result(train_cell(c, dtype=F64), p)


@pytest.mark.parametrize("arch,norm,lrs", [("dln", "none", [1e-4, 1e-1, 5e-5]), ("dln", "l1", [1e-4, 1e-1, 5e-5]),
                                           ("vgg_mini", "noisy_batch", [0.05, 10.0, 0.1])])
def test_member_diverging_mid_pack_with_stacked_measurements(arch, norm, lrs):
    """The middle member diverges; it is finished at once with its rows so far and leaves the stack, the others
    measured on (their slots, batches and noise now those of a pack of 2)."""
    cells = members(arch, norm, steps=40, eval_every=20, lrs=lrs, seeds=[0, 2, 1],
                    measure={"ics": {"every": 3, "layers": [2]}, "landscape": {"every": 3, "eta": {"points": 2}}})
    ended: list[int] = []
    packed = train_pack(cells, dtype=F64, finished=lambda k, res: ended.append(k))
    assert packed[1].status == "diverged" and ended[0] == 1 and 0 < packed[1].diverged_step < 39
    for c, p in zip(cells, packed):
        same_result(train_cell(c, dtype=F64), p)


@pytest.mark.slow
def test_vgg_members_measured_on_the_stack(monkeypatch):
    """vgg_mini: the points run as members of the pack's vmapped program."""
    cells = members("vgg_mini", "batch", steps=6, eval_every=3, measure={"ics": {"every": 5, "layers": [2]},
                                                                        "landscape": {"every": 5, "eta": {"points": 2}}})
    no_unpacked_step(monkeypatch)
    packed = train_pack(cells, dtype=F64)
    monkeypatch.undo()
    for c, p in zip(cells, packed):
        same_result(train_cell(c, dtype=F64), p)


@pytest.mark.parametrize("arch,norm", [("dln", "batch"), ("dln", "noisy_batch"), ("dln", "l1"), ("vgg_mini", "noisy_batch")])
def test_measurements_do_not_change_packed_training(arch, norm):
    """A pack with its measurements on trains bit for bit as with them off (the same program every step)."""
    cells = members(arch, norm, steps=11, eval_every=5, measure=STACKED)
    off = members(arch, norm, steps=11, eval_every=5)
    for on, plain in zip(train_pack(cells, dtype=F64), train_pack(off, dtype=F64)):
        assert on.measure_rows and not plain.measure_rows
        assert (on.steps, on.evals, on.status) == (plain.steps, plain.evals, plain.status)


def test_only_curvature_takes_the_step_unpacked():
    """ICS and the landscape are measured by points, activations from the forward pass again; curvature reads the
    member's own module, so a step where it is due is no stacked step."""
    from bnsweep.measure.session import Measurements
    from bnsweep.models import build_model
    from bnsweep.norms import norm_layer

    c = members("dln", "batch", steps=10, measure={**STACKED, "activations": {"every": 3, "layers": [1]},
                                                   "curvature": {"steps": [8]}})[0]
    model = build_model(c.arch, c.model, norm_layer(c.norm, c.norm_options, None), _info(c))
    probes = Measurements(c.measure, model, 10, 0)
    assert [by_points(probes, s) for s in (0, 3, 4, 5, 6, 8, 9)] == [False, True, True, True, True, False, False]
    assert not by_points(probes, 1)  # nothing due


@pytest.mark.parametrize("arch,norm", [("dln", "noisy_batch"), ("dln", "l2"),
                                       pytest.param("vgg_mini", "noisy_batch", marks=pytest.mark.slow)])
def test_activations_from_the_forward_pass_again(monkeypatch, arch, norm):
    """Activations with ICS and the landscape, all on the stack: the member's forward pass again, its noise redrawn."""
    measure = {**STACKED, "activations": {"every": 2, "layers": [1, 3]}}
    cells = members(arch, norm, steps=6 if arch == "vgg_mini" else 10, eval_every=5, measure=measure)
    no_unpacked_step(monkeypatch)
    packed = train_pack(cells, dtype=F64)
    monkeypatch.undo()
    for c, p in zip(cells, packed):
        u = train_cell(c, dtype=F64)
        assert u.measure_rows["activations"]
        same_result(u, p)


def _info(c):
    from bnsweep.data import load_data

    return load_data(c.dataset, "cpu").info


@pytest.mark.parametrize("norm", ["batch", "l1"])
def test_dln_probe_points_are_one_stacked_pass_per_chunk(monkeypatch, norm):
    """All members' points go through the stacked program together (not one pass per member or per point). Where
    the training step runs in the points' arithmetic (the samples: l1), g at w is the step's own gradient, as the
    unpacked measurements read the step's `.grad`: no pass at w (the rows equal the unpacked run's:
    test_stacked_measurements_equal_unpacked). The moment form (batch) trains in other arithmetic: g is evaluated."""
    import bnsweep.dln_pack

    calls: list[int] = []
    forward = bnsweep.dln_pack.StackedDLN.forward
    monkeypatch.setattr(bnsweep.dln_pack.StackedDLN, "forward",
                        lambda self, p, *a: calls.append(next(iter(p.values())).shape[0]) or forward(self, p, *a))
    cells = members("dln", norm, steps=2, eval_every=0, lrs=[1e-4, 2e-4, 3e-4], seeds=[0, 1, 2],
                    measure={"landscape": {"steps": [0], "eta": {"points": 4}}})
    train_pack(cells, dtype=F64)
    # per measured step (0 and the last): the three members' training step (l1) or their pass at w (batch: the
    # training step reads no samples), then their 3 x 4 points
    assert calls == [3, 12, 3, 12]
    assert torch.get_default_dtype() == torch.float32
