"""Measuring a pack's members at one step: every member's probe points evaluated in stacked passes.

    measure_members(step, {k: Member(...), ...}, evaluate)

A pack (`bnsweep.pack`) trains the step of all its members as one program. A member whose due
measurements all have `points` (ICS, landscape) or read the training forward pass (activations) is
measured here, from copies taken off the stack (w before the update, w after it), instead of taking
its step alone: `evaluate([(member, params, wrt), ...])` gives the (loss, gradient) at each point on that member's batch with that member's
noise, in training mode, the points of all members stacked as the members of one batched network.
The gradient g at w is the step's own (`Member.g`) where the step ran in the points' arithmetic, as
the unpacked step's measurements read the step's `.grad`; where it did not (the moment form that
trains full-batch DLNs rounds differently from the samples, and a difference such as g - g(w - eta g)
at a small eta would show it), g is one more point per member, evaluated as the points are. Rows are
each measurement's own `rows`; a pass's time is shared out by the points evaluated.
A measurement of the forward pass sees the member's own module run forward again at w on the step's
batch with the step's noise (the member's `forward`), the pass it reads in the unpacked step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from bnsweep.measure.base import Measurement
from bnsweep.measure.probe import Known, Params
from bnsweep.measure.session import Measurements

# [(member, parameters, names to differentiate or None for all)] -> [(loss, gradient)], in order
Evaluate = Callable[[list[tuple[int, Params, list[str] | None]]], list[tuple[float, Params]]]


@dataclass
class Member:
    """One member measured at a step: its measurements, its module (names only), lr, training loss, weights
    before and after the step's update."""

    probes: Measurements
    model: nn.Module
    lr: float
    loss: float
    w: Params
    moved: Params
    forward: Callable[[], None]  # its training forward pass again: its module at w, the step's batch and noise
    g: Params | None = None  # the step's gradient at w, where the step ran in the points' arithmetic; else evaluated


def by_points(probes: Measurements, step: int) -> bool:
    """Whether every measurement `probes` has due at `step` is measured by its points (and some is due)."""
    due = probes.due(step)
    return bool(due) and all(m.in_forward or type(m).points is not Measurement.points for m in due)


def measure_members(step: int, members: dict[int, Member], evaluate: Evaluate) -> None:
    """Each member's due measurements at `step` into its `Measurements`, all points in stacked passes."""
    t0 = time.perf_counter()
    unknown = [k for k, m in members.items() if m.g is None]
    at_w = {k: g for k, (_, g) in zip(unknown, evaluate([(k, members[k].w, None) for k in unknown]))}
    jobs = []  # (member, measurement, its context, its points)
    for k, m in members.items():
        ctx = Known(step, m.model, m.lr, m.loss, m.w, m.g if m.g is not None else at_w[k], m.moved)
        jobs += [(k, q, ctx, pts) for q in m.probes.due(step) if (pts := q.points(ctx)) is not None]
    results = evaluate([(k, p, wrt) for k, _, _, pts in jobs for p, wrt in pts])
    per_point = (time.perf_counter() - t0) / max(len(unknown) + len(results), 1)
    own = {k: sum(len(pts) for j, _, _, pts in jobs if j == k) for k in members}  # each member's points
    i = 0
    for k, q, ctx, pts in jobs:
        t1 = time.perf_counter()
        rows = q.rows(ctx, results[i : i + len(pts)])
        i += len(pts)
        share = per_point * len(pts) * (1 + 1 / max(own[k], 1))  # its points and its part of the member's point at w
        members[k].probes.add(q, step, rows, share + time.perf_counter() - t1)
    for m in members.values():
        _in_forward(step, m)


def _in_forward(step: int, m: Member) -> None:
    """The member's measurements that read the training forward pass (activations), from its forward pass again."""
    seen = [q for q in m.probes.due(step) if q.in_forward]
    if not seen:
        return
    t0, hooks = time.perf_counter(), sum(q.hook_s for q in seen)
    for q in seen:
        q.before_forward(step)
    m.forward()
    outside = (time.perf_counter() - t0 - (sum(q.hook_s for q in seen) - hooks)) / len(seen)  # hook time counts itself
    for q in seen:
        m.probes.add(q, step, q.collect(), outside)
