"""What a measurement sees of a training step, and how it evaluates the network without touching it.

Every evaluation goes through `torch.func.functional_call` with parameter tensors of its own and
clones of the buffers (BatchNorm's running statistics update the clones), replays the step's
noise (the norm layers' generators are reset to their state before the step's forward pass), and
uses `torch.autograd.grad`, so `.grad`, the optimizer state and every generator are left as
training left them. All evaluations are in training mode, on the step's batch [I].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


def generators(model: nn.Module) -> list[torch.Generator]:
    """The random generators the model's layers draw from (noisy_batch's noise)."""
    found = {id(g): g for m in model.modules() if isinstance(g := getattr(m, "generator", None), torch.Generator)}
    return list(found.values())


@dataclass
class StepContext:
    """One training step at the point where its gradient is known and its update is not yet applied."""

    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor  # (B, ...) the step's batch, after augmentation
    y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: float  # the training loss at w on this batch
    rng_before: list[tuple[torch.Generator, torch.Tensor]] = field(default_factory=list)  # states before the forward pass

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def params(self) -> Params:
        """The current weights w (detached views; never modified)."""
        return {n: p.detach() for n, p in self.model.named_parameters()}

    def grad(self) -> Params:
        """The training gradient at w on this batch, as backward() left it in `.grad`."""
        return {n: p.grad.detach() if p.grad is not None else torch.zeros_like(p) for n, p in self.model.named_parameters()}

    def loss_at(self, params: Params) -> torch.Tensor:
        """The loss at `params` on this batch, with this step's noise, in training mode."""
        for g, state in self.rng_before:
            g.set_state(state)
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        out = functional_call(self.model, {**params, **buffers}, (self.x,))
        return self.loss_fn(out, self.y)

    def grad_at(self, params: Params, wrt: list[str] | None = None) -> tuple[float, Params]:
        """(loss, gradient) at `params`; the gradient for the names in `wrt` (default: all)."""
        wrt = list(params) if wrt is None else wrt
        p = {n: v.detach().requires_grad_(n in wrt) for n, v in params.items()}
        loss = self.loss_at(p)
        grads = torch.autograd.grad(loss, [p[n] for n in wrt])
        return loss.item(), dict(zip(wrt, grads))

    def stepped(self) -> Params:
        """w after this step's actual optimizer update, computed on copies (momentum, decay included)."""
        names, ps = zip(*self.model.named_parameters())
        copy_of = {}
        for p in ps:
            c = copy_of[id(p)] = p.detach().clone()
            c.grad = None if p.grad is None else p.grad.detach().clone()
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [copy_of[id(p)] for p in g["params"]]}
                  for g in self.optimizer.param_groups]  # same groups, same order: the state maps one to one
        opt = type(self.optimizer)(groups, **self.optimizer.defaults)
        state = self.optimizer.state_dict()
        opt.load_state_dict(
            {
                "state": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()} for k, s in state["state"].items()},
                "param_groups": state["param_groups"],
            }
        )
        opt.step()
        return {n: copy_of[id(p)] for n, p in zip(names, ps)}


@dataclass
class Known:
    """A step whose weights, gradient and updated weights are given outright (a packed member's, taken from
    the stack): what `Measurement.points` and `Measurement.rows` read, as they read a `StepContext`."""

    step: int
    model: nn.Module  # the member's module: parameter names and layer structure only
    lr: float
    loss: float  # the training loss at w on this batch
    w: Params
    g: Params  # the gradient at w on this batch
    moved: Params  # w after this step's update

    def params(self) -> Params:
        return self.w

    def grad(self) -> Params:
        return self.g

    def stepped(self) -> Params:
        return self.moved


def norm2(ts) -> float:
    """Euclidean norm over a collection of tensors, as if concatenated."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))
