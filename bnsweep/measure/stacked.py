"""Measuring a pack's members at one step: every member's probe points evaluated in stacked passes.

    measure_members(step, {k: Member(...), ...}, evaluate)

A pack (`bnsweep.pack`) trains the step of all its members as one program. A member whose due
measurements all have `points` (ICS, landscape) is measured here, from copies taken off the stack
(w before the update, w after it), instead of taking its step alone: `evaluate([(member, params,
wrt), ...])` gives the (loss, gradient) at each point on that member's batch with that member's
noise, in training mode, the points of all members stacked as the members of one batched network.
The gradient g at w is one more point per member, evaluated the same way, so g and the gradients
at the points come from one arithmetic, as in the unpacked step (the moment form that trains
full-batch DLNs rounds differently from the samples, and a difference such as g - g(w - eta g) at a
small eta would show it). Rows are each measurement's own `rows`; a pass's time is shared out by points.
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


def by_points(probes: Measurements, step: int) -> bool:
    """Whether every measurement `probes` has due at `step` is measured by its points (and some is due)."""
    due = probes.due(step)
    return bool(due) and all(type(m).points is not Measurement.points for m in due)


def measure_members(step: int, members: dict[int, Member], evaluate: Evaluate) -> None:
    """Each member's due measurements at `step` into its `Measurements`, all points in stacked passes."""
    t0 = time.perf_counter()
    at_w = evaluate([(k, m.w, None) for k, m in members.items()])
    jobs = []  # (member, measurement, its context, its points)
    for (k, m), (_, g) in zip(members.items(), at_w):
        ctx = Known(step, m.model, m.lr, m.loss, m.w, g, m.moved)
        jobs += [(k, q, ctx, q.points(ctx)) for q in m.probes.due(step)]
    results = evaluate([(k, p, wrt) for k, _, _, pts in jobs for p, wrt in pts])
    per_point = (time.perf_counter() - t0) / (len(members) + len(results))
    own = {k: sum(len(pts) for j, _, _, pts in jobs if j == k) for k in members}  # each member's points
    i = 0
    for k, q, ctx, pts in jobs:
        t1 = time.perf_counter()
        rows = q.rows(ctx, results[i : i + len(pts)])
        i += len(pts)
        share = per_point * len(pts) * (1 + 1 / max(own[k], 1))  # its points and its part of the member's point at w
        members[k].probes.add(q, step, rows, share + time.perf_counter() - t1)
