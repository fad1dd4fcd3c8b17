"""Packed cells: K cells that differ only in lr and seed, trained as one program over stacked parameters.

    from bnsweep.pack import train_pack
    results = train_pack(cells)      # one TrainResult per member, as train_cell would give each

Each member is a full `TrainState` (its own seeded initialisation, generators, batch order and
probes). Between steps the weights, buffers and momentum live stacked, (K, ...) per tensor; a DLN
step is the batched network of `bnsweep.dln_pack`, a VGG's with a linear head the grouped network of
`bnsweep.vgg_pack` (neither uses vmap), any other net's one `torch.vmap` of `torch.func.functional_call`
over a parameter-free (meta) copy of the net; either way one autograd pass through the stack. What is
drawn from a member's generators is drawn per member outside that program, in the unpacked order:
batch indices and augmentation, and noisy BatchNorm's noise, passed in as stacked inputs.
BatchNorm's and l_p's running statistics are stacked buffers the program updates in place.

Measurements made of losses and gradients at points on the step's batch (ICS, landscape) and those
of the forward pass (activations) leave the member's step in the stack, the program it runs
unmeasured, so they cannot change its training: they are taken afterwards by `measure.stacked` from
copies off the stack, every due member's points and its gradient at w run as the members of one
stacked network on the samples (`_evaluator`; for the DLN the samples form of `StackedDLN`, also where
the moment form trains), activations from the member's module run forward again at w (`_again`).
A member with curvature due (Hessian-vector products on its own module) takes that step unpacked
(`train.train_step` on its module, synced from and back to the stack). Evaluations and checkpoints
go through the member's module; a checkpoint is that member's
`TrainState`, so a member resumes in any pack (or unpacked) from it. A diverged member stops
updating (its slots are masked) and is finished at once; the others go on.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from bnsweep.data import DATASETS, Data, load_data
from bnsweep.dln_pack import MOMENT_NORMS, StackedDLN, moments
from bnsweep.measure.stacked import Evaluate, Member, by_points, measure_members
from bnsweep.models import build_model
from bnsweep.norms import BatchNorm, NoisyBatchNorm, norm_layer, sample_noise
from bnsweep.performance import applied, checks_every
from bnsweep.spec import CellConfig, pack_key
from bnsweep.train import (
    Checkpoint,
    OnEval,
    TrainResult,
    TrainState,
    cast_data,
    check_divergence,
    due,
    finish,
    loss_fn,
    new_state,
    next_batch,
    record_eval,
    resolve_device,
    train_step,
)
from bnsweep.vgg_pack import StackedVGG


class _StackedBatchNorm(torch.autograd.Function):
    """Training-mode `F.batch_norm` whose vmap rule runs the native kernel on the physical stacked tensors.

    vmap's own batch-norm rule differs from the unpacked kernel's backward by an ulp, which a deep net
    amplifies to 1e-9 in 50 steps. Here (N, C, H, W) inputs are folded to (N, K*C, H, W), one kernel
    call whose per-channel arithmetic is the unpacked one (on CPU, bit for bit); (N, C) inputs, whose
    CPU kernel assigns channels to vector lanes by position, run member by member. Autograd records the
    native ops, so `backward` here is never called. Running statistics are views of the stacked buffers.
    """

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, momentum, eps):
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)

    @staticmethod
    def setup_context(ctx, _inputs, _output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("_StackedBatchNorm is only applied under vmap")

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, running_mean, running_var, momentum, eps):
        K = info.batch_size
        x, w, b, rm, rv = (t.movedim(d, 0) if d is not None else t.expand(K, *t.shape)
                           for t, d in zip((x, weight, bias, running_mean, running_var), in_dims[:5]))
        if x.dim() == 3:
            return torch.stack([F.batch_norm(x[k], rm[k], rv[k], w[k], b[k], True, momentum, eps) for k in range(K)]), 0
        n, c, rest = x.shape[1], x.shape[2], x.shape[3:]
        folded = x.transpose(0, 1).reshape(n, K * c, *rest)
        out = F.batch_norm(folded, rm.view(K * c), rv.view(K * c), w.reshape(K * c), b.reshape(K * c),
                           True, momentum, eps)
        return out.view(n, K, c, *rest).transpose(0, 1), 0


class _PackedBatchNorm(BatchNorm):
    """The template's BatchNorm (training mode, running statistics tracked, as `BatchNorm` with momentum set)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        return _StackedBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                       self.momentum, self.eps)


class _GivenNoise(_PackedBatchNorm):
    """The template's noisy BatchNorm: its (s, m) noise is handed in (`given`) instead of drawn."""

    given: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, m = self.given
        return s * super().forward(x) + m


class Stack:
    """The members' weights, buffers and momentum buffers, stacked along a leading member dimension."""

    def __init__(self, states: list[TrainState], momentum: float, weight_decay: float, lrs: list[float]):
        self.states, self.momentum, self.weight_decay = states, momentum, weight_decay
        first = states[0].model
        dev = next(first.parameters()).device
        params = [dict(s.model.named_parameters()) for s in states]
        buffers = [dict(s.model.named_buffers()) for s in states]
        self.params = {n: torch.stack([p[n].detach() for p in params]).requires_grad_() for n in params[0]}
        self.buffers = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        self.bufs = {n: torch.zeros_like(p) for n, p in self.params.items()} if momentum else {}
        self.started = torch.zeros(len(states), dtype=torch.bool, device=dev)  # has a momentum buffer (SGD's 1st step)
        dtype = next(iter(self.params.values())).dtype
        self.neg_lr = torch.tensor([-lr for lr in lrs], dtype=dtype, device=dev)
        self.slots = list(range(len(states)))  # the member in each slot of the stack, in order
        self.at = {k: k for k in self.slots}  # member -> its slot
        for k in range(len(states)):
            self.push(k)  # momentum from a resumed optimizer

    def keep(self, members: list[int]) -> None:
        """Only `members` stay on the stack (the others ended): the pack computes what is still training."""
        idx = torch.tensor([self.at[k] for k in members], device=self.started.device)
        self.params = {n: p.detach().index_select(0, idx).requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
        self.bufs = {n: b.index_select(0, idx) for n, b in self.bufs.items()}
        self.started, self.neg_lr = self.started.index_select(0, idx), self.neg_lr.index_select(0, idx)
        self.slots, self.at = list(members), {k: j for j, k in enumerate(members)}

    def member(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights, copied off the stack."""
        return {n: p[self.at[k]].detach().clone() for n, p in self.params.items()}

    def pull(self, k: int) -> None:
        """Member k's module and optimizer take their stacked values."""
        st, j = self.states[k], self.at[k]  # member k sits in slot j
        with torch.no_grad():
            for n, p in st.model.named_parameters():
                p.copy_(self.params[n][j])
            for n, b in st.model.named_buffers():
                b.copy_(self.buffers[n][j])
            st.optimizer.state.clear()
            if self.momentum and self.started[j]:
                for n, p in st.model.named_parameters():
                    st.optimizer.state[p]["momentum_buffer"] = self.bufs[n][j].clone()

    def push(self, k: int) -> None:
        """The stack takes member k's module and optimizer values."""
        st, j = self.states[k], self.at[k]  # member k sits in slot j
        with torch.no_grad():
            for n, p in st.model.named_parameters():
                self.params[n][j] = p.detach()
            for n, b in st.model.named_buffers():
                self.buffers[n][j] = b
            if self.momentum:
                have = [st.optimizer.state.get(p, {}).get("momentum_buffer") for _, p in st.model.named_parameters()]
                self.started[j] = any(b is not None for b in have)
                for (n, _), b in zip(st.model.named_parameters(), have):
                    if b is not None:
                        self.bufs[n][j] = b

    def update(self, grads: dict[str, torch.Tensor | None], mask: torch.Tensor,
               old_buffers: dict[str, torch.Tensor]) -> None:
        """torch.optim.SGD's update (weight decay, momentum without dampening) for the members in `mask`;
        the others keep their weights, momentum and buffers (which the stacked forward pass touched)."""
        every = bool(mask.all())  # the common case: no slot to keep
        with torch.no_grad():
            for n, b in self.buffers.items() if not every else ():
                b.copy_(torch.where(_col(mask, b), b, old_buffers[n]))
            for n, p in self.params.items():
                g = grads[n]
                if g is None:  # no gradient: SGD skips the parameter
                    continue
                m = _col(mask, p)
                if self.weight_decay:
                    g = g.add(p, alpha=self.weight_decay)
                if self.momentum:
                    buf = torch.where(_col(self.started, p), self.bufs[n] * self.momentum + g, g)
                    self.bufs[n] = buf if every else torch.where(m, buf, self.bufs[n])
                    g = buf
                if every:
                    p.addcmul_(g, _col(self.neg_lr, p))  # = p.add_(g, alpha=-lr), torch.optim.SGD's last line
                else:
                    p.copy_(torch.where(m, torch.addcmul(p, g, _col(self.neg_lr, p)), p))
            self.started |= mask


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (K,) vector shaped to broadcast over (K, ...) `like`."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _template(cell: CellConfig, data: Data, dtype: torch.dtype | None) -> tuple[nn.Module, list[str]]:
    """The net without storage (meta device), for functional_call; its noisy norms take given noise."""
    with torch.device("meta"):
        net = build_model(cell.arch, cell.model, norm_layer(cell.norm, cell.norm_options, None), data.info)
        net = net.to(dtype) if dtype is not None else net
    for m in net.modules():  # the template only trains: its norms need no eval-mode path
        if isinstance(m, BatchNorm):
            m.__class__ = _GivenNoise if isinstance(m, NoisyBatchNorm) else _PackedBatchNorm
    return net.train(), [n for n, m in net.named_modules() if isinstance(m, _GivenNoise)]


def _noise_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of each noisy norm, in the order the forward pass calls them (eval mode: no draws, no updates)."""
    shapes, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, NoisyBatchNorm):
            handles.append(m.register_forward_hook(
                lambda mod, i, out, name=name: shapes.__setitem__(name, tuple(out.shape))))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train()
        for h in handles:
            h.remove()
    return shapes


def train_pack(cells: list[CellConfig], device: str | None = None, resumes: list[dict | None] | None = None,
               checkpoints: list[Checkpoint] | None = None, checkpoint_every: int = 0,
               finished: Callable[[int, TrainResult], None] | None = None,
               dtype: torch.dtype | None = None, on_evals: list[OnEval | None] | None = None) -> list[TrainResult]:
    """Train `cells` (one pack: equal but for lr and seed) together; member k's result as `train_cell(cells[k])`'s.

    `resumes[k]`: member k's `TrainState.state_dict()` (all at one step, or all None); `checkpoints[k]` gets
    member k's `TrainState.to_bytes()` and its step every `checkpoint_every` steps; `on_evals[k]` is member k's
    `train_cell` hook `on_eval`; `finished(k, result)` is called as soon as member k is done or diverged.
    `train_s` of a member is the pack's training time divided by its size.
    """
    if len({pack_key(c) for c in cells}) != 1:
        raise ValueError("a pack's cells must be equal in everything but lr and seed")
    dev = resolve_device(device or cells[0].device)
    with applied(cells[0].performance, dev) as perf:  # the cells' execution choices, as train_cell applies them
        return _train_pack(cells, dev, resumes, checkpoints, checkpoint_every, finished, dtype, on_evals, perf)


def _train_pack(cells: list[CellConfig], dev: torch.device, resumes: list[dict | None] | None,
                checkpoints: list[Checkpoint] | None, checkpoint_every: int,
                finished: Callable[[int, TrainResult], None] | None, dtype: torch.dtype | None,
                on_evals: list[OnEval | None] | None, perf: dict) -> list[TrainResult]:
    K, cell = len(cells), cells[0]
    resumes = resumes or [None] * K
    on_evals = on_evals or [None] * K
    if len({(r or {}).get("step", 0) for r in resumes}) != 1:
        raise ValueError("a pack's members must resume from one step")
    data = cast_data(load_data(cell.dataset, str(dev)), dtype)
    classification = data.info.task == "classification"
    t = cell.train
    lf = loss_fn(data.info)
    augment = DATASETS[cell.dataset.name].augment if t.augment else None
    states = [new_state(c, data, dev, dtype) for c in cells]
    losses = torch.empty(K, t.steps, device=dev, dtype=torch.float64)
    accs = torch.empty(K, t.steps, device=dev, dtype=torch.float64)
    results = [TrainResult(status="done", device=str(dev), performance=dict(perf)) for _ in cells]
    t0 = time.perf_counter()
    for k, (st, res, resume) in enumerate(zip(states, results, resumes)):
        st.losses, st.accs = losses[k], accs[k]  # views: the stack's rows are the members' records
        if resume is None:
            record_eval(st, res, data, 0, t.eval_batch_size, on_evals[k])
        else:
            st.load_state_dict(resume, member=k)
            res.resumed_from = st.step
    stack = Stack(states, t.momentum, t.weight_decay, [c.lr for c in cells])
    template, noisy = _template(cell, data, dtype)
    shapes = _noise_shapes(states[0].model, data.x_train[: states[0].order.b]) if noisy else {}
    order = [n for n in shapes]  # noisy norms in call order: the order an unpacked member draws their noise
    opts = cell.norm_options
    live = list(range(K))  # members still training

    def member(params, buffers, x, y, noise):
        for name, sm in zip(order, noise):
            template.get_submodule(name).given = sm
        out = functional_call(template, {**params, **buffers}, (x,))
        acc = (out.argmax(1) == y).float().mean() if classification else out.new_zeros(())
        return lf(out, y), acc

    def vmapped(params, buffers, x, y, noise):
        with warnings.catch_warnings():  # l_p norms' lerp_ has no batching rule: vmap loops over members there
            warnings.filterwarnings("ignore", message=".*batching rule for aten::lerp_")
            return vmap(member)(params, buffers, x, y, noise)

    if cell.arch == "dln":
        program = StackedDLN(template, order, lf, classification, _moments_if_exact(cell, data, states[0].order.b))
    elif StackedVGG.supports(template):
        program = StackedVGG(template, order, lf, channels_last=cell.performance.channels_last)
    else:
        program = vmapped

    def spent(k: int) -> dict[str, float]:
        """Member k's seconds so far: its evaluations and measurements, and 1/K of the pack's training time."""
        own = sum(r.eval_s + sum(s.probes.cost().values()) for r, s in zip(results, states))
        cost = states[k].probes.cost()
        now = {"train": (time.perf_counter() - t0 - own) / K, "eval": results[k].eval_s, **cost}
        before = states[k].seconds
        return {key: now.get(key, 0.0) + before.get(key, 0.0) for key in {*now, *before}}

    def end(k: int) -> None:
        live.remove(k)
        finish(results[k], states[k], spent(k), t.steps, classification)
        if finished is not None:
            finished(k, results[k])

    moment_form = isinstance(program, StackedDLN) and program.m is not None
    probe_program = StackedDLN(template, order, lf, classification) if moment_form else program  # probes run on the samples

    for step in range(states[0].step, t.steps):
        measured = [k for k in live if by_points(states[k].probes, step)]  # measured on the stack
        alone = [k for k in live if k not in measured and states[k].probes.due(step)]
        batches = {}
        for k in live:  # the moment form reads no samples: a batch only where a measurement or an unpacked step reads it
            if not moment_form or k in measured or k in alone:
                batches[k] = next_batch(states[k], data, augment)
            else:
                states[k].order.next()  # its batch order moves on all the same (checkpoints equal the unpacked ones)
        for k in alone:  # measurements that read the member's own module (activations, curvature): the step unpacked
            stack.pull(k)
            train_step(states[k], step, *batches[k], lf, classification)
            stack.push(k)
        fast = [k for k in live if k not in alone]
        if fast:
            slots = stack.slots
            mask = torch.zeros(len(slots), dtype=torch.bool, device=dev)
            mask[[stack.at[k] for k in fast]] = True
            if batches:
                x0, y0 = next(iter(batches.values()))
                xs = torch.stack([batches[k][0] if k in batches else torch.zeros_like(x0) for k in slots])
                ys = torch.stack([batches[k][1] if k in batches else torch.zeros_like(y0) for k in slots])
            else:  # nothing reads this step's samples
                xs, ys = data.x_train.new_empty(len(slots), 0), data.y_train.new_empty(len(slots), 0)
            drawn_from = {k: states[k].generators["noise"].get_state() for k in measured}
            noise = _draw(states, fast, stack.at, order, shapes, opts, data.x_train)
            old = {n: b.clone() for n, b in stack.buffers.items()} if len(fast) < len(slots) else {}
            loss, acc = program(stack.params, stack.buffers, xs, ys, noise)
            names = list(stack.params)
            grads = torch.autograd.grad(loss.sum(), [stack.params[n] for n in names], allow_unused=True)
            before = {k: stack.member(k) for k in measured}
            stack.update(dict(zip(names, grads)), mask, old)
            with torch.no_grad():
                rows = slice(None) if len(slots) == K else torch.tensor(slots, device=dev)
                losses[rows, step] = torch.where(mask, loss.detach().to(torch.float64), losses[rows, step])
                if classification:
                    accs[rows, step] = torch.where(mask, acc.to(torch.float64), accs[rows, step])
            if measured:
                at = loss.detach().tolist()
                step_g = {} if moment_form else {k: {n: g[stack.at[k]] if g is not None else torch.zeros_like(stack.params[n][0])
                                                     for n, g in zip(names, grads)} for k in measured}
                measure_members(step, {k: Member(states[k].probes, states[k].model, cells[k].lr, at[stack.at[k]], before[k],
                                                 stack.member(k), _again(states[k], before[k], batches[k][0], drawn_from[k]),
                                                 step_g.get(k))
                                       for k in measured},
                                _evaluator(probe_program, stack, xs, ys, noise))
        done = step + 1
        for k in live:
            states[k].step = done
        eval_due, save_due = due(t, done, checkpoints is not None, checkpoint_every)
        if done % checks_every(dev) == 0 or eval_due or save_due or done == t.steps:
            for k in list(live):
                bad = check_divergence(states[k], t.divergence_factor, done)
                if bad is not None:
                    results[k].status, results[k].diverged_step = "diverged", bad
                    end(k)
            if live and len(live) < len(stack.slots):
                stack.keep(live)  # the diverged members' slots are computed no more
        for k in live if eval_due or save_due else []:
            stack.pull(k)
            if eval_due:
                record_eval(states[k], results[k], data, done, t.eval_batch_size, on_evals[k])
            if save_due:
                checkpoints[k](states[k].to_bytes(seconds=spent(k)), done)
        if not live:
            break

    for k in list(live):
        stack.pull(k)
        record_eval(states[k], results[k], data, t.steps, t.eval_batch_size, on_evals[k])
        end(k)
    return results


def _again(st: TrainState, w: dict[str, torch.Tensor], x: torch.Tensor, drawn_from: torch.Tensor) -> Callable[[], None]:
    """The member's training forward pass again, for what reads it (its module at w on batch x, in training mode,
    its noise drawn again from the generator state `drawn_from`, running statistics on copies)."""
    def run() -> None:
        gen = st.generators["noise"]
        after = gen.get_state()
        gen.set_state(drawn_from)
        try:
            with torch.no_grad():
                functional_call(st.model, {**w, **{n: b.clone() for n, b in st.model.named_buffers()}}, (x,))
        finally:
            gen.set_state(after)
    return run


PROBE_SAMPLES = 16384  # samples in one stacked probe pass (16 points of a 1000-sample batch): bounds its memory


def _evaluator(program, stack: Stack, xs: torch.Tensor, ys: torch.Tensor, noise: list) -> Evaluate:
    """`measure.stacked`'s evaluate: (loss, gradient) at each (member, params, wrt), on that member's slot of the
    step's stacked batch and noise, the points run as the members of `program` (running statistics on copies)."""
    names = list(stack.params)
    per = max(1, PROBE_SAMPLES // xs.shape[1])

    def evaluate(points: list) -> list[tuple[float, dict[str, torch.Tensor]]]:
        out = []
        for i in range(0, len(points), per):
            chunk = points[i : i + per]
            idx = torch.tensor([stack.at[k] for k, _, _ in chunk], device=xs.device)
            params = {n: torch.stack([p[n].detach() for _, p, _ in chunk]).requires_grad_() for n in names}
            buffers = {n: b.index_select(0, idx) for n, b in stack.buffers.items()}
            given = [(s.index_select(0, idx), m.index_select(0, idx)) for s, m in noise]
            loss, _ = program(params, buffers, xs.index_select(0, idx), ys.index_select(0, idx), given)
            grads = torch.autograd.grad(loss.sum(), [params[n] for n in names], allow_unused=True)
            for j, ((_, _, wrt), value) in enumerate(zip(chunk, loss.detach().tolist())):
                out.append((value, {n: g[j] if g is not None else torch.zeros_like(params[n][j])
                                    for n, g in zip(names, grads) if wrt is None or n in wrt}))
        return out

    return evaluate


def _moments_if_exact(cell: CellConfig, data: Data, batch: int) -> dict | None:
    """The data's moments when a DLN member's training loss is exactly a function of them: full batch,
    no augmentation, a norm in MOMENT_NORMS; else None (the pack runs on the samples)."""
    if cell.norm in MOMENT_NORMS and batch == len(data.x_train) and not cell.train.augment:
        return moments(data.x_train, data.y_train)
    return None


def _draw(states: list[TrainState], fast: list[int], at: dict[int, int], order: list[str], shapes: dict, opts,
          like: torch.Tensor) -> list:
    """Per noisy norm, stacked (s, m) over the stack's slots (`at`: member -> slot, `Stack.at`): drawn for each
    member in `fast` from its own noise generator, in the unpacked order (layer by layer within a member); s = 1,
    m = 0 in the other slots, whose results are discarded."""
    if not order:
        return []
    out = [(like.new_ones(len(at), *shapes[n]), like.new_zeros(len(at), *shapes[n])) for n in order]
    for k in fast:  # drawn straight into the stacked slots, layer by layer within a member
        for s, m in out:
            j = at[k]
            sample_noise(s[j], opts, states[k].generators["noise"], out=(s[j], m[j]))
    return out
