"""The measurements' bookkeeping with known answers: the summaries' long rows from hand-made tables, the rows'
step, mode and definition, the latest rows and the costs, the registry helpers, and what a measured step
leaves of the optimizer, the buffers and the noise (compared with the same step taken unmeasured).
"""

import copy
import math

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn as nn
from test_measure import LR, close, grads, measured_step, quadratic, tiny

from bnsweep.measure import MEASURES, MeasureSpec, enabled, layered
from bnsweep.measure.activations import Activations
from bnsweep.measure.base import Measurement
from bnsweep.measure.curvature import Curvature
from bnsweep.measure.ics import Ics, weight_names
from bnsweep.measure.landscape import EtaGrid, Landscape
from bnsweep.measure.probe import StepContext, generators, norm2
from bnsweep.measure.schedule import Schedule
from bnsweep.measure.session import Measurements, summarise
from bnsweep.norms import NORMS, norm_layer

NAN = float("nan")


def long(frame: pl.LazyFrame) -> set[tuple]:
    """A summary's rows as a set of tuples, NaN written as the string 'nan' (NaN != NaN)."""
    return {tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r) for r in frame.collect().rows()}


# --- summaries: long rows from tables built by hand --------------------------------------------------------------


def test_ics_summary_is_l2_and_cosine_per_step_and_layer():
    t = pl.LazyFrame({"cell_id": ["a", "a", "b"], "step": [0, 0, 5], "layer": [2, 4, 2], "l2": [0.5, 1.5, 2.0],
                      "cosine": [0.9, -0.1, 0.3], "grad_norm": [7.0, 7.0, 7.0], "grad_prime_norm": [8.0, 8.0, 8.0]})
    out = Ics.summary(t)
    assert out.collect_schema().names() == ["cell_id", "step", "layer", "quantity", "value"]
    assert long(out) == {("a", 0, 2, "ics_l2", 0.5), ("a", 0, 4, "ics_l2", 1.5), ("b", 5, 2, "ics_l2", 2.0),
                         ("a", 0, 2, "ics_cosine", 0.9), ("a", 0, 4, "ics_cosine", -0.1), ("b", 5, 2, "ics_cosine", 0.3)}


def test_landscape_summary_leaves_out_non_finite_points():
    """beta_eff as recorded (the step's first row); grad_predictiveness = the largest finite grad_diff_l2;
    loss_band = largest / smallest finite loss, over the points where both loss and grad_diff_l2 are finite."""
    inf = float("inf")
    t = pl.LazyFrame({
        "cell_id": ["a"] * 5 + ["b"] * 2,
        "step": [3] * 5 + [0] * 2,
        "loss": [2.0, 8.0, inf, 1.0, 100.0, 4.0, 6.0],
        "grad_diff_l2": [0.1, 0.4, 9.0, NAN, 0.2, 1.0, 3.0],
        "beta_eff": [5.5, 5.5, 5.5, 5.5, 5.5, 0.25, 0.25],
    })
    out = Landscape.summary(t)
    assert sorted(out.collect_schema().names()) == ["cell_id", "quantity", "step", "value"]
    assert long(out.select("cell_id", "step", "quantity", "value")) == {
        ("a", 3, "beta_eff", 5.5), ("a", 3, "grad_predictiveness", 0.4), ("a", 3, "loss_band", 100.0 / 2.0),
        ("b", 0, "beta_eff", 0.25), ("b", 0, "grad_predictiveness", 3.0), ("b", 0, "loss_band", 6.0 / 4.0)}


def test_curvature_summary_keeps_only_converged_values():
    t = pl.LazyFrame({"cell_id": ["a", "a", "a"], "step": [0, 1, 2], "lambda_max": [3.0, 4.0, 5.0],
                      "lambda_max_converged": [True, False, None]})
    out = Curvature.summary(t)
    assert out.collect_schema().names() == ["cell_id", "step", "quantity", "value"]
    assert long(out) == {("a", 0, "lambda_max", 3.0), ("a", 1, "lambda_max", "nan"), ("a", 2, "lambda_max", "nan")}


def test_summarise_flattens_the_latest_rows_by_each_summary():
    latest = {
        "ics": [{"step": 4, "layer": 2, "l2": 0.5, "cosine": 0.75, "grad_norm": 1.0, "grad_prime_norm": 1.0},
                {"step": 4, "layer": 3, "l2": NAN, "cosine": float("inf"), "grad_norm": 1.0, "grad_prime_norm": 1.0}],
        "landscape": [{"step": 6, "eta": e, "eta_rel": 1.0, "loss": loss, "grad_diff_l2": d, "grad_norm": 1.0, "loss_at_w": 1.0,
                       "smoothness": 1.0, "beta_eff": 2.5} for e, loss, d in [(0.1, 2.0, 0.5), (0.2, 3.0, 0.25)]],
        "activations": [{"step": 4, "layer": 1, "unit": 0, "mean": 1.0}],  # no summary: left out
        "curvature": [{"step": 8, "lambda_max": 7.0, "lambda_max_converged": False}],  # not converged: NaN, left out
    }
    assert summarise(latest) == {"ics/step": 4, "ics/ics_l2/layer2": 0.5, "ics/ics_cosine/layer2": 0.75,
                                 "landscape/step": 6, "landscape/beta_eff": 2.5, "landscape/grad_predictiveness": 0.5,
                                 "landscape/loss_band": 1.5, "curvature/step": 8}
    assert summarise({}) == {}


# --- the session: rows, latest rows, costs ---------------------------------------------------------------------


def session(spec: dict, steps: int = 10, norm: str = "batch") -> tuple[Measurements, tuple]:
    model, x, y, lf = tiny(norm)
    return Measurements(MeasureSpec.model_validate(spec), model, steps, seed=0), (model, x, y, lf)


def step(probes: Measurements, net, k: int, opt) -> None:
    """Training step `k` as train.py takes it, with the measurements due at `k`."""
    model, x, y, lf = net
    probes.before_forward(k)
    loss = lf(model(x), y)
    opt.zero_grad()
    loss.backward()
    probes.after_backward(k, opt, x, y, lf, loss)
    opt.step()


def test_rows_carry_their_step_mode_and_definition_and_latest_is_the_last_probed_step():
    probes, net = session({"ics": {"steps": [2, 3], "layers": [2, 3]}, "landscape": {"steps": [3], "eta": {"points": 2}},
                           "curvature": {"steps": [2], "basis": 3, "max_hvps": 10}, "activations": {"steps": [1], "layers": [4]}},
                          steps=6)
    opt = torch.optim.SGD(net[0].parameters(), lr=LR)
    for k in range(4):  # steps 0..3; every schedule also takes step 0 (and the last, 5, never reached)
        step(probes, net, k, opt)
    assert [(r["step"], r["mode"], r["definition"], r["layer"]) for r in probes.rows["ics"]] == [
        (0, "train", 1, 2), (0, "train", 1, 3), (2, "train", 1, 2), (2, "train", 1, 3), (3, "train", 1, 2), (3, "train", 1, 3)]
    assert [(r["step"], r["mode"], r["definition"]) for r in probes.rows["landscape"]] == [(0, "train", 1)] * 2 + [(3, "train", 1)] * 2
    assert [(r["step"], r["definition"]) for r in probes.rows["curvature"]] == [(0, 2), (2, 2)]
    assert [(r["step"], r["layer"]) for r in probes.rows["activations"]] == [(0, 4), (1, 4)]
    latest = probes.latest()
    assert list(latest) == ["ics", "landscape", "activations", "curvature"]  # registry order
    assert latest["ics"] == probes.rows["ics"][4:] and latest["landscape"] == probes.rows["landscape"][2:]
    assert latest["curvature"] == probes.rows["curvature"][1:] and latest["activations"] == probes.rows["activations"][1:]
    assert [m.name for m in probes.due(0)] == ["ics", "landscape", "activations", "curvature"]
    assert [m.name for m in probes.due(4)] == [] and [m.name for m in probes.due(5)] == ["ics", "landscape", "activations", "curvature"]


def test_latest_of_a_single_probed_step_is_all_its_rows():
    probes, net = session({"landscape": {"steps": [0], "eta": {"points": 3}}})
    assert probes.latest() == {}
    step(probes, net, 0, torch.optim.SGD(net[0].parameters(), lr=LR))
    assert probes.latest() == {"landscape": probes.rows["landscape"]} and len(probes.rows["landscape"]) == 3


def test_costs_add_up_per_measurement():
    probes, _ = session({"ics": {"every": 2, "layers": [2]}, "activations": {"every": 2, "layers": [1]}})
    ics, act = (m for m, _ in probes.active)
    assert probes.cost() == {"ics": 0.0, "activations": 0.0}
    probes.add(ics, 3, [{"layer": 2}], 1.5)
    probes.add(ics, 4, [{"layer": 2}, {"layer": 2}], 0.25)
    probes.add(act, 4, [], 2.0)
    act.hook_s = 0.125
    assert probes.cost() == {"ics": 1.75, "activations": 2.125}
    assert probes.rows["ics"] == [{"step": 3, "mode": "train", "definition": 1, "layer": 2}] + \
        [{"step": 4, "mode": "train", "definition": 1, "layer": 2}] * 2 and probes.rows["activations"] == []


def test_each_measurement_of_a_step_records_its_cost():
    """Each measurement taken at a step records a positive cost, in the order the session runs them (no speed is
    asserted; the costs' arithmetic is checked on a fake clock below)."""
    probes, net = session({"ics": {"steps": [0], "layers": [2]}, "landscape": {"steps": [0], "eta": {"points": 2}},
                           "curvature": {"steps": [0], "basis": 3, "max_hvps": 10}, "activations": {"steps": [0], "layers": [1]}})
    step(probes, net, 0, torch.optim.SGD(net[0].parameters(), lr=LR))
    cost = probes.cost()
    assert list(cost) == ["ics", "landscape", "activations", "curvature"]
    assert all(c > 0 for c in cost.values()), cost
    act = next(m for m, _ in probes.active if m.name == "activations")
    assert 0 < act.hook_s <= cost["activations"]


def test_nothing_enabled_measures_nothing():
    probes, net = session({})
    assert probes.active == [] and probes.rows == {} and probes.cost() == {} and probes.due(0) == []
    step(probes, net, 0, torch.optim.SGD(net[0].parameters(), lr=LR))
    assert probes.latest() == {}


def test_enabled_and_layered_in_registry_order():
    spec = MeasureSpec.model_validate({"curvature": {"every": 3}, "activations": {"every": 2, "layers": [4, 1]},
                                       "ics": {"every": 1, "layers": [2]}})
    assert [n for n, _ in enabled(spec)] == ["ics", "activations", "curvature"]
    assert layered(spec) == [("ics", [2]), ("activations", [4, 1])]
    assert enabled(None) == [] and layered(None) == [] and enabled(MeasureSpec()) == []
    assert list(MEASURES) == ["ics", "landscape", "activations", "curvature"]


# --- a measured step leaves training as it was ---------------------------------------------------------------------


def test_a_measured_step_leaves_the_optimizer_buffers_weights_and_noise_as_an_unmeasured_one():
    """Two steps of SGD with momentum (so a momentum buffer exists at the measured second step) on a noisy
    BatchNorm net, once with every measurement at step 1 and once without: the same weights, gradients,
    momentum, running statistics and noise state after each step."""
    spec = {"ics": {"steps": [1], "layers": [2, 3]}, "landscape": {"steps": [1], "eta": {"points": 2}},
            "curvature": {"steps": [1]}, "activations": {"steps": [1], "layers": [2]}}
    a, x, y, lf = tiny("noisy_batch")
    b = copy.deepcopy(a)
    probes = Measurements(MeasureSpec.model_validate(spec), a, 10, seed=0)
    opt_a = torch.optim.SGD(a.parameters(), lr=LR, momentum=0.9, weight_decay=0.01)
    opt_b = torch.optim.SGD(b.parameters(), lr=LR, momentum=0.9, weight_decay=0.01)
    for k in range(2):
        for model, opt, measured in ((a, opt_a, True), (b, opt_b, False)):
            if measured:
                probes.before_forward(k + 1)  # steps 1 and 2 of 10: step 1 is measured
            loss = lf(model(x), y)
            opt.zero_grad()
            loss.backward()
            if measured:
                probes.after_backward(k + 1, opt, x, y, lf, loss)
            opt.step()
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q) and torch.equal(p.grad, q.grad), n
            assert torch.equal(opt_a.state[p]["momentum_buffer"], opt_b.state[q]["momentum_buffer"]), n
        for (n, u), v in zip(a.named_buffers(), b.buffers()):
            assert torch.equal(u, v), n
        for g, h in zip(generators(a), generators(b)):
            assert torch.equal(g.get_state(), h.get_state())
    assert len(probes.rows["ics"]) == 2 and len(probes.rows["curvature"]) == 1 and probes.current == []


def test_a_parameter_without_a_gradient_reads_as_zeros():
    """A parameter the loss does not use has no .grad; the context gives zeros of its shape."""
    model, x, y, lf = tiny("none")
    model.unused = nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss = lf(model(x), y)
    loss.backward()
    ctx = StepContext(0, model, opt, x, y, lf, loss.item())
    g = ctx.grad()
    assert torch.equal(g["unused"], torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(g["body.0.weight"], model.body[0].weight.grad)
    moved = ctx.stepped()
    assert torch.equal(moved["unused"], model.unused)
    assert torch.allclose(moved["body.0.weight"], model.body[0].weight - LR * model.body[0].weight.grad, rtol=1e-14, atol=0)
    assert ctx.lr == LR


def test_stepped_follows_each_param_groups_own_settings():
    """Two groups (lr 0 and LR, momentum only in the second) at the second step: the moved weights by hand."""
    model, x, y, lf = tiny("batch")
    ps = list(model.parameters())
    opt = torch.optim.SGD([{"params": ps[:2], "lr": 0.0}, {"params": ps[2:], "lr": LR, "momentum": 0.5}], lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        loss = lf(model(x), y)
        loss.backward()
        if _ == 0:
            opt.step()
    buf = {p: opt.state[p]["momentum_buffer"].clone() for p in ps[2:]}
    moved = StepContext(1, model, opt, x, y, lf, loss.item()).stepped()
    for (n, p) in model.named_parameters():
        expected = p if any(p is q for q in ps[:2]) else p - LR * (0.5 * buf[p] + p.grad)
        assert torch.allclose(moved[n], expected, rtol=1e-12, atol=1e-15), n
    for p in ps[2:]:  # the optimizer's own momentum is untouched
        assert torch.equal(opt.state[p]["momentum_buffer"], buf[p])
    assert StepContext(1, model, opt, x, y, lf, 0.0).lr == 0.0  # the first group's


def test_grad_at_differentiates_only_what_it_is_asked_to():
    model, x, y, lf = tiny("none")
    ctx = StepContext(0, model, torch.optim.SGD(model.parameters(), lr=LR), x, y, lf, 0.0)
    loss, g = ctx.grad_at(ctx.params(), ["body.2.weight"])
    ref_loss, ref = grads(copy.deepcopy(model), x, y, lf, [])
    assert list(g) == ["body.2.weight"] and torch.allclose(g["body.2.weight"], ref["body.2.weight"], rtol=1e-12)
    close(loss, ref_loss, rel=1e-12)
    loss_all, g_all = ctx.grad_at(ctx.params())
    close(loss_all, ref_loss, rel=1e-12)
    assert list(g_all) == [n for n, _ in model.named_parameters()]
    assert all(torch.allclose(g_all[n], ref[n], rtol=1e-12, atol=1e-15) for n in ref)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_generators_are_found_once_each():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(norm_layer("noisy_batch", NORMS["noisy_batch"].Options(), g)(3),
                          norm_layer("noisy_batch", NORMS["noisy_batch"].Options(), g)(3), nn.Linear(3, 3))
    assert generators(model) == [g]
    assert generators(nn.Sequential(nn.Linear(2, 2))) == []
    h = torch.Generator().manual_seed(1)
    two = nn.Sequential(norm_layer("noisy_batch", NORMS["noisy_batch"].Options(), g)(3),
                        norm_layer("noisy_batch", NORMS["noisy_batch"].Options(), h)(3))
    assert generators(two) == [g, h]


# --- landscape and ICS details -----------------------------------------------------------------------------------


def test_eta_grids_by_hand():
    assert EtaGrid(**{"from": 1, "to": 4, "points": 3}).values(0.1) == pytest.approx([0.1, 0.2, 0.4], rel=1e-12)
    assert EtaGrid(**{"from": 1, "to": 4, "points": 3, "spacing": "linear"}).values(0.1) == pytest.approx([0.1, 0.25, 0.4], rel=1e-12)
    assert EtaGrid(**{"from": 1, "to": 4, "points": 3, "relative_to": "none"}).values(0.1) == pytest.approx([1.0, 2.0, 4.0], rel=1e-12)
    assert EtaGrid(**{"from": 2, "to": 2, "points": 1}).values(0.5) == [1.0]
    assert all(type(v) is float for v in EtaGrid().values(0.1))


def test_landscape_rows_state_eta_relative_to_the_learning_rate():
    model, x, y, lf = tiny("batch")
    rows, _, _ = measured_step(model, x, y, lf, {"landscape": {"eta": {"from": 0.5, "to": 2, "points": 3}}})
    assert [r["eta_rel"] for r in rows["landscape"]] == pytest.approx([0.5, 1.0, 2.0], rel=1e-12)
    assert [r["eta"] for r in rows["landscape"]] == pytest.approx([0.5 * LR, LR, 2 * LR], rel=1e-12)


def test_landscape_at_a_stationary_point_has_no_smoothness():
    """At w = 0 of a quadratic the gradient is 0: every eta probes w itself, smoothness and beta_eff are NaN."""
    model, h, lf = quadratic()
    with torch.no_grad():
        model.w.zero_()
    rows, _, _ = measured_step(model, torch.zeros(1), torch.zeros(1), lf, {"landscape": {"eta": {"points": 2}}})
    for r in rows["landscape"]:
        assert r["grad_norm"] == 0.0 and r["grad_diff_l2"] == 0.0 and r["loss"] == 0.0 and r["loss_at_w"] == 0.0
        assert math.isnan(r["smoothness"]) and math.isnan(r["beta_eff"])


def test_weight_names_in_forward_order():
    model, *_ = tiny("batch")
    assert weight_names(model) == ["body.0.weight", "body.2.weight", "body.4.weight", "body.6.weight"]


def test_norm2_is_the_norm_of_the_concatenation():
    ts = [torch.tensor([3.0]), torch.tensor([[4.0, 12.0]])]
    assert norm2(ts) == 13.0 and norm2([]) == 0.0


def test_a_measurement_without_points_measures_in_after_backward():
    class Plain(Measurement):
        name = "plain"

    m = Plain(Schedule(every=1), nn.Linear(1, 1), seed=3)
    assert (m.options, m.seed, m.hook_s) == (Schedule(every=1), 3, 0.0)
    assert m.after_backward(None) == [] and m.collect() == []
    with pytest.raises(NotImplementedError, match="^plain measures in after_backward$"):
        m.rows(None, [])


# --- schedules --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "total", "expected"), [
    ({"every": 1}, 4, {0, 1, 2, 3}),
    ({"every": 3}, 7, {0, 3, 6}),
    ({"every": 3}, 8, {0, 3, 6, 7}),
    ({"steps": [0, 9, 10]}, 10, {0, 9}),
    ({"steps": [4]}, 5, {0, 4}),
    ({"log": {"points": 2}}, 2, {0, 1}),
    ({"log": {"points": 3}}, 3, {0, 1, 2}),
    ({"log": {"points": 3}}, 101, {0, 1, 10, 100}),
    ({"log": {"points": 5}}, 17, {0, 1, 2, 4, 8, 16}),
])
def test_schedules_by_hand(schedule, total, expected):
    steps = Schedule.model_validate(schedule).resolve(total)
    assert steps == expected and all(type(s) is int for s in steps)  # step numbers, not floats equal to them


def test_a_schedule_names_what_it_got():
    with pytest.raises(ValueError, match=r"exactly one of every, log, steps \(got every, steps\)"):
        Schedule.model_validate({"every": 3, "steps": [1]})
    with pytest.raises(ValueError, match=r"exactly one of every, log, steps \(got none\)"):
        Schedule.model_validate({})


# --- activations: the unit and the hook -----------------------------------------------------------------------------


def test_activation_units_are_drawn_from_the_seed_within_each_layers_width():
    """A net of widths 7, 3, 11: each layer's unit is below its own width, and seeds pick different units."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 7), nn.ReLU(), nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 11))
    seen = {k: set() for k in (1, 2, 3)}
    for seed in range(40):
        m = Activations(Activations.Options(every=1, layers=[1, 2, 3]), model, seed)
        assert [(k, mod) for k, mod, _ in m.targets] == [(1, model[0]), (2, model[2]), (3, model[4])]
        for k, _, unit in m.targets:
            seen[k].add(unit)
    assert seen == {1: set(range(7)), 2: set(range(3)), 3: set(range(11))}
    del g


def test_activation_rows_are_the_training_pass_only_and_its_hook_time_counts():
    model, x, y, lf = tiny("batch")
    m = Activations(Activations.Options(every=1, layers=[2]), model, seed=0)
    m.before_forward(0)
    out = model(x)  # the training pass: recorded
    model(x)  # a probe's pass: not recorded
    rows = m.collect()
    assert len(rows) == 1 and rows[0]["layer"] == 2 and rows[0]["count"] == 16 and m.hook_s > 0
    assert m.collect() == [] and m.handles == {}
    m.before_forward(1)
    assert m.collect() == [] and m.handles == {}  # hooks set but no pass: nothing, and the hooks are gone
    model(x)
    assert m.collect() == []
    del out


def test_unit_stats_of_a_known_sample():
    from bnsweep.measure.activations import unit_stats

    s = unit_stats(torch.arange(101.0))  # 0..100: the q-quantile is 100 q
    assert s["count"] == 101 and s["mean"] == 50.0 and s["min"] == 0.0 and s["max"] == 100.0
    assert s["var"] == pytest.approx(np.var(np.arange(101.0)), rel=1e-15)
    assert [s[c] for c in ("q01", "q05", "q10", "q25", "q50", "q75", "q90", "q95", "q99")] == pytest.approx(
        [1, 5, 10, 25, 50, 75, 90, 95, 99], rel=1e-12)


# --- packed members: what each measurement is given, and its time, on a clock that only the work advances -----------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """A measurement by points (`n` of them) or of the forward pass, recording what it is given."""

    def __init__(self, name: str, n: int | None, clock: Clock, in_forward: bool = False):
        self.name, self.n, self.clock, self.in_forward, self.hook_s = name, n, clock, in_forward, 0.0
        self.stepped = []

    def points(self, ctx):
        return None if self.n is None else [({"w": torch.tensor([float(i)])}, [self.name]) for i in range(self.n)]

    def rows(self, ctx, results):
        self.clock.now += 0.5  # its own rows take 0.5
        return [{"ctx": (ctx.step, ctx.model, ctx.lr, ctx.loss, ctx.w, ctx.g, ctx.moved), "results": results}]

    def before_forward(self, step):
        self.stepped.append(step)

    def collect(self):
        return [{"forward": self.name}]


class Probes:
    def __init__(self, due):
        self._due, self.added = due, []

    def due(self, step):
        return self._due

    def add(self, m, step, rows, seconds):
        self.added.append((m.name, step, rows, seconds))


def test_packed_members_get_their_own_points_results_and_a_fair_share_of_the_time(monkeypatch):
    """Three members: #0 with probes of 2 and 1 points, #1 with one of 1 point, #2 with two forward-pass probes only.
    Each evaluated point costs 1 on the clock, each rows() 0.5, member #2's forward pass 3 (of which 0.5 per probe
    inside its hooks). The 2 points at w and the 4 probe points take 6 for 6 points, 1 each; a probe's share is its
    points plus its part of its member's point at w (1 / the member's points): 2 (1 + 1/3), 1 (1 + 1/3), 1 (1 + 1/1)."""
    import bnsweep.measure.stacked as stacked

    clock = Clock()
    monkeypatch.setattr(stacked, "time", type("T", (), {"perf_counter": staticmethod(clock)}))
    a, b, c = Probe("a", 2, clock), Probe("b", 1, clock), Probe("c", 1, clock)
    f, h = Probe("f", None, clock, in_forward=True), Probe("h", None, clock, in_forward=True)
    f.hook_s = h.hook_s = 0.25  # hook time of earlier steps: not this step's
    calls = []

    def evaluate(points):
        calls.append([(k, float(p["w"]) if "w" in p else None, wrt) for k, p, wrt in points])
        clock.now += len(points)
        return [(10.0 * k + i, {"g": torch.tensor([k + 0.5])}) for i, (k, _, _) in enumerate(points)]

    def forward():
        clock.now += 3.0
        f.hook_s += 0.5
        h.hook_s += 0.5

    models = [nn.Linear(1, 1) for _ in range(3)]
    w = [{"w0": torch.tensor([float(k)])} for k in range(3)]
    moved = [{"w0": torch.tensor([k - 1.0])} for k in range(3)]
    members = {k: stacked.Member(Probes(due), models[k], 0.1 * (k + 1), 5.0 + k, w[k], moved[k], forward if k == 2 else None)
               for k, due in enumerate([[a, b], [c], [f, h]])}
    stacked.measure_members(7, members, evaluate)

    assert calls == [[(0, None, None), (1, None, None), (2, None, None)],  # every member's point at w, all differentiated
                     [(0, 0.0, ["a"]), (0, 1.0, ["a"]), (0, 0.0, ["b"]), (1, 0.0, ["c"])]]
    # 3 + 4 points took 7, so 1 each
    added = {k: m.probes.added for k, m in members.items()}
    assert [(n, s) for n, s, _, _ in added[0]] == [("a", 7), ("b", 7)] and [(n, s) for n, s, _, _ in added[1]] == [("c", 7)]
    assert [sec for *_, sec in added[0]] == pytest.approx([2 * (1 + 1 / 3) + 0.5, 1 * (1 + 1 / 3) + 0.5], rel=1e-12)
    assert [sec for *_, sec in added[1]] == pytest.approx([1 * (1 + 1 / 1) + 0.5], rel=1e-12)
    # each probe's rows from its member's context and its own points' results, in order: the second pass returns
    # 10 k + i for its i-th point (a's two, b's, then member 1's c)
    for k, name, losses in [(0, "a", [0.0, 1.0]), (0, "b", [2.0]), (1, "c", [13.0])]:
        rows = next(r for n, _, r, _ in added[k] if n == name)
        step, model, lr, loss, wk, g, mv = rows[0]["ctx"]
        assert (step, model, lr, loss, wk, mv) == (7, models[k], 0.1 * (k + 1), 5.0 + k, w[k], moved[k])
        assert torch.equal(g["g"], torch.tensor([k + 0.5]))  # its gradient at w, from the first pass
        assert [r[0] for r in rows[0]["results"]] == losses
    # forward-pass probes: their rows from the member's forward pass again, the pass's time less the hooks', shared
    assert [(n, s, r) for n, s, r, _ in added[2]] == [("f", 7, [{"forward": "f"}]), ("h", 7, [{"forward": "h"}])]
    assert [sec for *_, sec in added[2]] == pytest.approx([(3.0 - 1.0) / 2] * 2, rel=1e-12)
    assert f.stepped == h.stepped == [7] and a.stepped == []


@pytest.mark.parametrize(("due", "expected"), [([], False), ([Ics], True), ([Ics, Landscape], True), ([Activations], True),
                                               ([Ics, Activations], True), ([Curvature], False), ([Ics, Curvature], False)])
def test_a_member_is_measured_on_the_stack_only_when_every_due_measurement_is(due, expected):
    from bnsweep.measure.stacked import by_points

    class Due:
        def due(self, step):
            assert step == 4
            return [object.__new__(cls) for cls in due]

    assert by_points(Due(), 4) is expected


# --- the curvature probe's parts, on matrices of known spectrum ------------------------------------------------------


def known_matrix(spectrum, seed: int = 0) -> np.ndarray:
    """Q diag(spectrum) Q^T for a random orthogonal Q: a symmetric matrix whose eigenvalues are `spectrum`."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(spectrum), len(spectrum))))
    return q @ np.diag(spectrum) @ q.T


class Products:
    """v -> H v, counting the products."""

    def __init__(self, h: np.ndarray):
        self.h, self.calls = h, 0

    def __call__(self, v):
        self.calls += 1
        return self.h @ v


def test_the_error_bound_of_an_end():
    from bnsweep.measure.curvature import End

    assert End(4.0, 0.5, 1, True).error == 0.125 and End(-4.0, 0.5, 1, True).error == 0.125
    assert End(0.0, 0.0, 1, True).error == 0.0 and End(0.0, 1e-3, 1, True).error == math.inf
    assert math.isnan(End(NAN, NAN, 1, False).error) and math.isnan(End(NAN, 0.0, 1, False).error)


def test_counted_applies_shift_and_sign_and_refuses_past_its_budget():
    from bnsweep.measure.curvature import Counted, _Exhausted

    op = Counted(lambda v: 2.0 * v, 3, shift=5.0, sign=-1.0)
    assert (op.count, op.budget, op.n) == (0, math.inf, 3)
    assert np.array_equal(op(np.ones((3, 1))), np.full(3, 3.0))  # 5 v - 2 v, flattened
    assert np.array_equal(Counted(lambda v: 2.0 * v, 3)(np.ones(3)), np.full(3, 2.0))  # H itself by default
    op.budget = 3
    op(np.ones(3)), op(np.ones(3))
    assert op.count == 3
    with pytest.raises(_Exhausted):
        op(np.ones(3))
    assert op.count == 3


def test_residual_of_a_known_pair():
    from bnsweep.measure.curvature import residual

    h = np.diag([3.0, 1.0])
    v = np.array([0.6, 0.8])
    assert residual(lambda x: h @ x, 2.0, v) == pytest.approx(math.hypot(0.6 * 1.0, 0.8 * -1.0), rel=1e-15)
    assert residual(lambda x: h @ x, 3.0, np.array([1.0, 0.0])) == 0.0


@pytest.mark.parametrize("n", [4, 20])  # up to the basis (20 by default): solved densely from n products
def test_models_up_to_the_basis_are_solved_densely_from_n_products(n):
    from bnsweep.measure.curvature import CurvatureOptions, extremes

    spectrum = np.linspace(-3.0, 7.0, n)
    products = Products(known_matrix(spectrum))
    upper, lower = extremes(products, n, np.ones(n), CurvatureOptions(every=1))
    assert upper.value == pytest.approx(7.0, rel=1e-12) and lower.value == pytest.approx(-3.0, rel=1e-12)
    assert (upper.hvps, lower.hvps, products.calls) == (n, 0, n) and upper.converged and lower.converged
    assert upper.residual < 1e-12 and lower.residual < 1e-12


def test_the_products_stated_are_the_products_made():
    """hvps of both ends together equals the calls of the map, converged or not (ARPACK's own count aside)."""
    from bnsweep.measure.curvature import CurvatureOptions, extremes

    n = 60
    spectrum = np.concatenate([[100.0], np.linspace(-1.0, 1.0, n - 1)])  # an isolated top, a tight bottom pair
    spectrum[1:3] = [-1.0, -0.99999999]
    rng = np.random.default_rng(1)
    for options, converged in [(CurvatureOptions(every=1, tol=1e-6), (True, True)),
                               (CurvatureOptions(every=1, tol=1e-10, max_hvps=12, basis=10), (True, False)),
                               (CurvatureOptions(every=1, tol=1e-10, max_hvps=10, basis=10), (False, False))]:
        products = Products(known_matrix(spectrum))
        upper, lower = extremes(products, n, rng.standard_normal(n), options)
        assert (upper.converged, lower.converged) == converged, options
        assert upper.hvps + lower.hvps == products.calls, options
        assert upper.hvps <= options.max_hvps + 1 and lower.hvps <= options.max_hvps + 1
        if upper.converged:
            assert upper.value == pytest.approx(100.0, rel=options.tol) and upper.error <= options.tol
            assert upper.residual <= options.tol * 100.0  # the converged rule: ||r|| <= tol |lambda_max|
        else:
            assert math.isnan(upper.value) and math.isnan(upper.residual)
        if lower.converged:
            assert lower.value == pytest.approx(-1.0, abs=101.0 * options.tol)
        else:
            assert math.isnan(lower.value) and math.isnan(lower.residual)


def test_activation_units_come_from_the_seed_alone():
    """The same seed picks the same units whatever the global random state, and drawing them leaves that state alone."""
    model, *_ = tiny("batch")
    options = Activations.Options(every=1, layers=[1, 2, 3, 4])
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    a = Activations(options, model, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(2)
    b = Activations(options, model, seed=5)
    assert [t[2] for t in a.targets] == [t[2] for t in b.targets]
    assert (a.options, a.model, a.seed, a.hook_s) == (options, model, 5, 0.0)


def test_activation_hook_time_adds_up_over_layers_and_steps(monkeypatch):
    """On a clock that advances 1 per reading, each hook spends 1: two layers over two steps spend 4."""
    import bnsweep.measure.activations as activations

    ticks = iter(range(100))
    monkeypatch.setattr(activations, "time", type("T", (), {"perf_counter": staticmethod(lambda: float(next(ticks)))}))
    model, x, *_ = tiny("batch")
    m = Activations(Activations.Options(every=1, layers=[1, 3]), model, seed=0)
    for k in range(2):
        m.before_forward(k)
        model(x)
        assert [r["layer"] for r in m.collect()] == [1, 3]
    assert m.hook_s == 4.0


def test_unit_stats_are_taken_on_the_values_own_device_whatever_the_default():
    """Under another default device (here `meta`, as a program may set `cuda`), the quantile levels still go where
    the values are."""
    from bnsweep.measure.activations import unit_stats

    values = torch.arange(101.0)
    with torch.device("meta"):
        s = unit_stats(values)
    assert s["q50"] == 50.0 and s["q99"] == pytest.approx(99.0, rel=1e-12)


def test_landscape_smoothness_of_a_small_gradient_on_a_quadratic():
    """Near the minimum (||g|| well below 1) the smoothness is still ||H g|| / ||g|| at every eta, exactly."""
    model, h, lf = quadratic()
    with torch.no_grad():
        model.w.mul_(1e-3)
    g = h @ model.w.detach()
    assert 0 < g.norm() < 1
    rows, _, _ = measured_step(model, torch.zeros(1), torch.zeros(1), lf, {"landscape": {"eta": {"points": 3}}})
    expected = ((h @ g).norm() / g.norm()).item()
    for r in rows["landscape"]:
        close(r["grad_norm"], g.norm().item(), rel=1e-12)
        close(r["smoothness"], expected, rel=1e-10)
        close(r["beta_eff"], expected, rel=1e-10)


class Recorder(Measurement):
    """A measurement by points that records what it is given: the step before the forward pass, and the names of
    each point's gradient."""

    name = "recorder"

    def __init__(self, wrt):
        super().__init__(Schedule(every=1), None, 0)
        self.wrt, self.steps = wrt, []

    def before_forward(self, step):
        self.steps.append(step)

    def points(self, ctx):
        return [(ctx.params(), self.wrt)]

    def rows(self, ctx, results):
        return [{"names": sorted(g), "loss": loss} for loss, g in results]


def recorded(monkeypatch, wrt, steps=(0, 2)) -> tuple[Recorder, Measurements]:
    """Recorder run by a session at `steps` of 0..2, on a clock that advances 1 per reading."""
    import bnsweep.measure.session as session_module

    ticks = iter(range(1000))
    monkeypatch.setattr(session_module, "time", type("T", (), {"perf_counter": staticmethod(lambda: float(next(ticks)))}))
    model, x, y, lf = tiny("none")
    probes = Measurements(MeasureSpec(), model, 3, seed=0)
    rec = Recorder(wrt)
    probes.active, probes.rows, probes.seconds = [(rec, frozenset(steps))], {"recorder": []}, {"recorder": 0.0}
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for k in range(3):
        step(probes, (model, x, y, lf), k, opt)
    return rec, probes


@pytest.mark.parametrize("wrt", [["body.2.weight"], None])
def test_a_measurement_by_points_gets_the_gradient_it_names_and_its_step(monkeypatch, wrt):
    rec, probes = recorded(monkeypatch, wrt)
    names = wrt or sorted(n for n, _ in tiny("none")[0].named_parameters())
    assert [r["names"] for r in probes.rows["recorder"]] == [names, names]
    assert rec.steps == [0, 2] and [r["step"] for r in probes.rows["recorder"]] == [0, 2]


def test_session_time_adds_up_over_hooks_and_steps(monkeypatch):
    """On a clock that advances 1 per reading, each measured step spends 1 before the forward pass and 1 after the
    backward pass: two measured steps spend 4."""
    _, probes = recorded(monkeypatch, None)
    assert probes.cost() == {"recorder": 4.0}


def test_a_cuda_model_is_synchronised_before_each_timer_and_a_cpu_model_is_not():
    """Checked on the wiring (no GPU needed): parameters that say they are on CUDA select torch.cuda.synchronize."""
    class OnCuda(nn.Module):
        def parameters(self, recurse=True):  # nn.Module's signature
            del recurse
            return iter([type("P", (), {"is_cuda": True})()])

    assert Measurements(MeasureSpec(), OnCuda(), 10, seed=0).sync is torch.cuda.synchronize
    cpu = Measurements(MeasureSpec(), tiny("none")[0], 10, seed=0).sync
    assert cpu is not torch.cuda.synchronize and cpu() is None


class Inputs(Products):
    """Products that keep their inputs."""

    def __init__(self, h):
        super().__init__(h)
        self.inputs = []

    def __call__(self, v):
        self.inputs.append(np.array(v, copy=True))
        return super().__call__(v)


def test_the_dense_residuals_are_each_ends_own_on_the_products_as_computed():
    """Products that are not quite symmetric (float32 rounding does that): the ends are those of the symmetric part,
    each residual ||h v - lambda v|| with the matrix the products give and that end's own vector."""
    from bnsweep.measure.curvature import CurvatureOptions, extremes

    n = 5
    sym = known_matrix(np.array([-2.0, 0.5, 1.0, 3.0, 9.0]))
    h = sym + np.triu(np.full((n, n), 1e-3), 1)  # h v computes this; its symmetric part is sym + (N + N^T) / 2
    upper, lower = extremes(lambda v: h @ v, n, np.ones(n), CurvatureOptions(every=1))
    w, vecs = np.linalg.eigh((h + h.T) / 2)
    expected = [np.linalg.norm(h @ vecs[:, i] - w[i] * vecs[:, i]) for i in (-1, 0)]
    assert upper.value == pytest.approx(w[-1], rel=1e-12) and lower.value == pytest.approx(w[0], rel=1e-12)
    assert upper.residual == pytest.approx(expected[0], rel=1e-9) and lower.residual == pytest.approx(expected[1], rel=1e-9)
    assert abs(expected[0] - expected[1]) > 1e-5  # the two ends' residuals differ here


def test_lanczos_starts_from_the_given_vector_and_spends_no_product_on_anything_else():
    from bnsweep.measure.curvature import CurvatureOptions, extremes

    n = 40
    products = Inputs(known_matrix(np.linspace(-1.0, 5.0, n)))
    v0 = np.random.default_rng(7).standard_normal(n)
    upper, lower = extremes(products, n, v0, CurvatureOptions(every=1, tol=1e-8))
    assert upper.converged and lower.converged
    for first in (products.inputs[0], products.inputs[upper.hvps]):  # each end's first product is along v0
        assert abs(first @ v0) == pytest.approx(np.linalg.norm(first) * np.linalg.norm(v0), rel=1e-12)
    assert all(v.dtype == np.float64 and np.linalg.norm(v) > 0.5 for v in products.inputs)  # unit Krylov vectors


def test_the_start_vector_is_drawn_from_seed_and_step(monkeypatch):
    """The probe's start vector is the standard normal of numpy's generator seeded with (seed, step)."""
    import bnsweep.measure.curvature as curvature

    seen = []

    def capture(matvec, n, v0, options):
        seen.append((n, v0))
        end = curvature.End(1.0, 0.0, 1, True)
        return end, end

    monkeypatch.setattr(curvature, "extremes", capture)
    model, h, lf = quadratic(dim=30)
    probes = Measurements(MeasureSpec.model_validate({"curvature": {"steps": [0, 3]}}), model, 10, seed=4)
    assert probes.active[0][0].seed == 4
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for k in range(4):
        step(probes, (model, torch.zeros(1), torch.zeros(1), lf), k, opt)
    assert [n for n, _ in seen] == [30, 30]
    for (_, v0), k in zip(seen, (0, 3)):
        assert np.array_equal(v0, np.random.default_rng([4, k]).standard_normal(30))


def test_a_float32_model_is_solved_densely_in_float64():
    """Float32 weights: the products are rounded to float32, but the small eigenproblem is solved in float64, so
    the ends are those of the float32 Hessian itself to float64 precision."""
    model, h, lf = quadratic(dim=4)
    model, h = model.float(), h.float()
    lf32 = lambda out, y: 0.5 * out @ h @ out
    rows, _, _ = measured_step(model, torch.zeros(1), torch.zeros(1), lf32, {"curvature": {}})
    eig = np.linalg.eigvalsh(h.double().numpy())
    assert rows["curvature"][0]["lambda_max"] == pytest.approx(eig[-1], rel=1e-12)
    assert rows["curvature"][0]["lambda_min"] == pytest.approx(eig[0], rel=1e-12)


@pytest.mark.parametrize(("gap", "converged"), [(0.1, True), (0.05, False)])
def test_an_end_stops_only_when_converged_or_out_of_products(gap, converged):
    """A top eigenvalue 1 + gap over 99 spread on [0, 1], a budget of 40 products with a basis of 10: the wider gap
    converges within 40 products (to 1.1), the narrower one needs about 46 and so spends exactly its 40, then says
    it is unconverged: never giving up early on ARPACK's count of restarts."""
    from bnsweep.measure.curvature import CurvatureOptions, extremes

    n = 100
    products = Products(known_matrix(np.concatenate([[1.0 + gap], np.linspace(0.0, 1.0, n - 1)])))
    upper, _ = extremes(products, n, np.ones(n), CurvatureOptions(every=1, tol=1e-8, max_hvps=40, basis=10))
    assert upper.converged is converged
    if converged:
        assert upper.value == pytest.approx(1.1, rel=1e-8) and upper.hvps <= 41
    else:
        assert math.isnan(upper.value) and upper.hvps == 40
