"""Training one cell: a plain SGD loop with full evaluations, knowing nothing of Ray or storage.

    from bnsweep.train import train_cell
    result = train_cell(cell)        # cell: a CellConfig from bnsweep.spec.expand()

Row `step` t of the step record is the loss on batch t at the weights before update t; an
evaluation at step t is taken after t updates (so evaluation 0 is the initialisation).
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep.data import DATASETS, Data, DatasetInfo, load_data
from bnsweep.measure.session import Measurements
from bnsweep.models import build_model
from bnsweep.norms import norm_layer
from bnsweep.performance import Performance, applied, checks_every, layout
from bnsweep.spec import CellConfig

Checkpoint = Callable[[bytes, int], None]  # (TrainState.to_bytes(), the step it holds)


class ResumeError(Exception):
    """A checkpoint that loaded safely but does not fit its cell's state (shapes, keys, lengths)."""

    def __init__(self, why: str, member: int = 0):
        super().__init__(why)
        self.member = member  # its place in a pack
# (step, that evaluation's rows: train and test split, each measurement's rows at its latest probed step)
OnEval = Callable[[int, list[dict], dict[str, list[dict]]], None]


@dataclass
class TrainResult:
    status: Literal["done", "diverged"]
    device: str
    steps: dict[str, list] = field(default_factory=dict)  # columns: step, loss, accuracy
    evals: list[dict] = field(default_factory=list)  # rows: step, split, loss, accuracy
    diverged_step: int | None = None
    train_s: float = 0.0
    eval_s: float = 0.0
    measure_rows: dict[str, list[dict]] = field(default_factory=dict)  # measurement -> rows
    measure_s: dict[str, float] = field(default_factory=dict)  # measurement -> seconds
    resumed_from: int | None = None  # the step an interrupted attempt's checkpoint resumed at
    performance: dict = field(default_factory=dict)  # the execution choices in effect (performance.effective)


def resolve_device(setting: str) -> torch.device:
    """auto -> cuda when this process sees a GPU (Ray hides GPUs a cell was not given), else cpu."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but this process sees no CUDA device")
    return torch.device(setting)


@dataclass(frozen=True)
class SquaredError:
    """`factor(n) * sum_i ||out_i - y_i||^2` over a batch of n [P]: factor 1/2 with `half`, 1/n with `reduction` mean."""

    reduction: Literal["sum", "mean"] = "sum"
    half: bool = False

    def factor(self, n: int) -> float:
        return (0.5 if self.half else 1.0) / (n if self.reduction == "mean" else 1)

    def scaled(self, sse, n: int):
        """The loss of n samples whose squared errors sum to `sse` (a tensor or a float)."""
        c = self.factor(n)
        return sse if c == 1 else sse * c  # the default multiplies by nothing: bit for bit as always

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, D), (B, D) -> ()
        return self.scaled((out - y).pow(2).sum(), len(y))


def loss_fn(info: DatasetInfo):
    """Mean softmax cross-entropy [I] for classification; the paper's sum of squares for regression [P],
    in the data set's reduction and factor (`gaussian_regression`'s `reduction`, `half`)."""
    if info.task == "classification":
        return F.cross_entropy
    return SquaredError(info.reduction, info.half)


class BatchOrder:
    """Seeded epochs: a fresh permutation of the training set each epoch, sliced into batches."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device):
        if not 0 < batch_size <= n:  # spec.expand refuses this first; never train on another batch than recorded
            raise ValueError(f"batch_size {batch_size} does not fit a training set of {n} samples")
        self.n, self.b, self.g, self.device = n, batch_size, generator, device
        self.perm, self.pos = None, n

    def next(self) -> torch.Tensor:
        if self.pos + self.b > self.n:  # drop the ragged tail: every batch has b samples
            self.perm, self.pos = torch.randperm(self.n, generator=self.g).to(self.device), 0
        idx = self.perm[self.pos : self.pos + self.b]
        self.pos += self.b
        return idx


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, step: int, batch_size: int) -> list[dict]:
    """Loss and accuracy on the whole train and test sets, in eval mode (running statistics)."""
    model.eval()
    rows = []
    classification = data.info.task == "classification"
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        sums, hits = [], []  # per-batch results stay on the device: one host sync per split, not two per batch
        for i in range(0, len(x), batch_size):
            out = model(x[i : i + batch_size])
            yb = y[i : i + batch_size]
            if classification:
                sums.append(F.cross_entropy(out, yb, reduction="sum"))
                hits.append((out.argmax(1) == yb).sum())
            else:
                sums.append((out - yb).pow(2).sum())
        total, correct = 0.0, 0
        for v in torch.stack(sums).tolist():  # summed in Python in batch order, as the floats always were
            total += v
        if classification:
            correct, loss = sum(torch.stack(hits).tolist()), total / len(x)  # mean CE
        else:  # the training loss over the whole split
            loss = loss_fn(data.info).scaled(total, len(x))
        rows.append({"step": step, "split": split, "loss": loss,
                     "accuracy": correct / len(x) if classification else None})
    model.train()
    return rows


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """Independent seeded streams per purpose (data order, noise, augmentation)."""
    return torch.Generator(device=device).manual_seed(seed * 1000 + stream)


@dataclass
class TrainState:
    """Everything training has so far: the one thing a checkpoint saves and a resume restores.

    `state_dict()` holds tensors and plain Python data only, so a checkpoint loads with
    `torch.load(..., weights_only=True)` and cannot carry code.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]  # noise, order, augment
    order: BatchOrder
    losses: torch.Tensor  # (steps,) training loss per step, filled up to `step`
    accs: torch.Tensor  # (steps,) training accuracy per step
    probes: Measurements  # their rows so far
    evals: list[dict] = field(default_factory=list)
    step: int = 0  # updates applied
    limit: float = math.inf  # the divergence threshold, fixed from the step-0 loss
    checked: int = 0  # steps [0, checked) passed the divergence test
    seconds: dict[str, float] = field(default_factory=dict)  # time spent by earlier attempts
    owner: dict[str, str] = field(default_factory=dict)  # cell_id and spec_hash: whose state a checkpoint is

    def state_dict(self, seconds: dict[str, float] | None = None) -> dict:
        """The state as tensors and plain data; `seconds`: time spent up to now (default: by earlier attempts)."""
        return {
            "step": self.step, "limit": self.limit, "checked": self.checked,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "order": {"perm": self.order.perm.cpu() if self.order.perm is not None else None, "pos": self.order.pos},
            "losses": self.losses[: self.step].cpu(), "accs": self.accs[: self.step].cpu(),
            "evals": self.evals, "measure_rows": self.probes.rows,
            "seconds": self.seconds if seconds is None else seconds,
            **self.owner,
        }

    def load_state_dict(self, d: dict, member: int = 0) -> None:
        """Restore a saved state; one that does not fit this state raises ResumeError (nothing trained yet)."""
        try:
            self._load(d)
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ResumeError(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", member) from e

    def _load(self, d: dict) -> None:
        dev = self.losses.device
        self.step, self.limit, self.checked = d["step"], d["limit"], d["checked"]
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        for k, g in self.generators.items():
            g.set_state(d["generators"][k])
        perm = d["order"]["perm"]
        self.order.perm, self.order.pos = (perm.to(dev) if perm is not None else None), d["order"]["pos"]
        self.losses[: self.step], self.accs[: self.step] = d["losses"].to(dev), d["accs"].to(dev)
        self.evals, self.probes.rows, self.seconds = d["evals"], d["measure_rows"], d["seconds"]

    def to_bytes(self, seconds: dict[str, float] | None = None) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state_dict(seconds), buf)
        return buf.getvalue()

    @staticmethod
    def read(blob: bytes) -> dict:
        """A saved state, loaded with weights_only=True (tensors and plain data, never code)."""
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def cast_data(data: Data, dtype: torch.dtype | None, perf: Performance | None = None) -> Data:
    """`data` with its floating tensors in `dtype` (None: as loaded; tests compare loops in float64) and
    image inputs in the memory layout `perf` asks for."""
    if dtype is None and (perf is None or not perf.channels_last):
        return data

    def cast(v: torch.Tensor) -> torch.Tensor:
        return v.to(dtype) if dtype is not None and v.is_floating_point() else v

    lay = (lambda v: layout(v, perf)) if perf is not None else (lambda v: v)
    return dataclasses.replace(data, x_train=lay(cast(data.x_train)), x_test=lay(cast(data.x_test)),
                               y_train=cast(data.y_train), y_test=cast(data.y_test))


def new_state(cell: CellConfig, data: Data, dev: torch.device, dtype: torch.dtype | None = None) -> TrainState:
    """A cell's training state at step 0: its seeded initialisation, generators, batch order and probes."""
    t = cell.train
    torch.manual_seed(cell.seed)  # initialisation
    noise = _generator(cell.seed, 1, dev)
    model = build_model(cell.arch, cell.model, norm_layer(cell.norm, cell.norm_options, noise), data.info).to(dev)
    if dtype is not None:
        model = model.to(dtype)
    if cell.performance.channels_last and len(data.info.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    order = BatchOrder(len(data.x_train), t.batch_size, _generator(cell.seed, 0, torch.device("cpu")), dev)
    return TrainState(
        model=model, order=order,
        optimizer=torch.optim.SGD(model.parameters(), lr=cell.lr, momentum=t.momentum, weight_decay=t.weight_decay),
        generators={"noise": noise, "order": order.g, "augment": _generator(cell.seed, 2, dev)},
        losses=torch.empty(t.steps, device=dev, dtype=torch.float64),
        accs=torch.empty(t.steps, device=dev, dtype=torch.float64),
        probes=Measurements(cell.measure, model, t.steps, cell.seed),
        owner={"cell_id": cell.cell_id, "spec_hash": cell.spec_hash},
    )


def next_batch(st: TrainState, data: Data, augment, perf: Performance | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The state's next training batch (B, ...), augmented with its own generator when `augment` is set,
    in the memory layout `perf` asks for."""
    idx = st.order.next()
    x, y = data.x_train[idx], data.y_train[idx]  # (B, ...) slices of the on-device set
    if augment is not None:
        x = augment(x, st.generators["augment"])
    return (layout(x, perf) if perf is not None else x), y


def train_step(st: TrainState, step: int, x: torch.Tensor, y: torch.Tensor, lf, classification: bool) -> None:
    """Update `step` on batch (x, y), with the step's measurements; records its loss and accuracy."""
    st.probes.before_forward(step)
    out = st.model(x)
    loss = lf(out, y)
    st.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    st.probes.after_backward(step, st.optimizer, x, y, lf, loss)  # the one measurement point: w and g of this step
    st.optimizer.step()
    st.losses[step] = loss.detach()
    if classification:
        st.accs[step] = (out.argmax(1) == y).float().mean()


def check_divergence(st: TrainState, factor: float, done: int) -> int | None:
    """Test steps [checked, done): the first diverged step, or None (and they count as checked)."""
    window = st.losses[st.checked:done]
    if st.checked == 0:
        st.limit = factor * abs(window[0].item())
    bad = (~torch.isfinite(window)) | (window > st.limit)
    if bad.any():
        return st.checked + int(bad.nonzero()[0, 0])
    st.checked = done
    return None


def record_eval(st: TrainState, res: TrainResult, data: Data, step: int, batch_size: int, on_eval: OnEval | None) -> None:
    """Evaluate the state's model at `step` into the state's evaluations (its time into `res`), then hand them to `on_eval`.

    The hook gets plain rows only (no tensor, nothing training goes on to change): it may keep them or pass them
    to another thread. Measurement summaries are left to the hook (`measure.session.summarise`), so an evaluation
    no one reports costs nothing more.
    """
    te = time.perf_counter()
    st.evals += evaluate(st.model, data, step, batch_size)
    res.eval_s += time.perf_counter() - te
    if on_eval is not None:
        on_eval(step, st.evals[-2:], st.probes.latest())


def due(t, done: int, saving: bool, checkpoint_every: int) -> tuple[bool, bool]:
    """(evaluation due, checkpoint due) after `done` updates."""
    eval_due = bool(t.eval_every and done % t.eval_every == 0 and done < t.steps)
    save_due = bool(saving and checkpoint_every and done % checkpoint_every == 0 and done < t.steps)
    return eval_due, save_due


def finish(res: TrainResult, st: TrainState, total: dict[str, float], steps: int, classification: bool) -> TrainResult:
    """Fill `res` from the state: step rows up to the end (or the diverged step), evaluations, measurements."""
    n = steps if res.diverged_step is None else res.diverged_step + 1
    res.train_s, res.eval_s = total.pop("train"), total.pop("eval")
    res.evals, res.measure_rows, res.measure_s = st.evals, st.probes.rows, total
    res.steps = {
        "step": list(range(n)),
        "loss": st.losses[:n].double().cpu().tolist(),
        "accuracy": st.accs[:n].double().cpu().tolist() if classification else [None] * n,
    }
    return res


def train_cell(cell: CellConfig, device: str | None = None, resume: dict | None = None,
               checkpoint: Checkpoint | None = None, checkpoint_every: int = 0,
               dtype: torch.dtype | None = None, on_eval: OnEval | None = None) -> TrainResult:
    """Train one cell and return its step, evaluation and measurement records.

    `resume` is a `TrainState.state_dict()` an earlier attempt saved through `checkpoint` (called with
    `TrainState.to_bytes()` and its step every `checkpoint_every` steps); training from it continues exactly as the
    uninterrupted run would have (bit for bit on CPU). `dtype`: model and data precision (None: float32 as loaded;
    tests use float64). `on_eval` is called after every evaluation (`record_eval`): the hook a live view reports
    through. The cell's `performance` settings apply while it trains and are recorded on the result.
    """
    dev = resolve_device(device or cell.device)
    with applied(cell.performance, dev) as perf:
        res = _train(cell, dev, resume, checkpoint, checkpoint_every, dtype, on_eval)
    res.performance = perf
    return res


def _train(cell: CellConfig, dev: torch.device, resume: dict | None, checkpoint: Checkpoint | None,
           checkpoint_every: int, dtype: torch.dtype | None, on_eval: OnEval | None) -> TrainResult:
    data = cast_data(load_data(cell.dataset, str(dev)), dtype, cell.performance)
    classification = data.info.task == "classification"
    t = cell.train
    st = new_state(cell, data, dev, dtype)
    model = st.model
    check_every = checks_every(dev)
    lf = loss_fn(data.info)
    augment = DATASETS[cell.dataset.name].augment if t.augment else None
    res = TrainResult(status="done", device=str(dev))
    t0 = time.perf_counter()
    if resume is None:
        record_eval(st, res, data, 0, t.eval_batch_size, on_eval)
    else:
        st.load_state_dict(resume)
        res.resumed_from = st.step
    model.train()
    for step in range(st.step, t.steps):
        x, y = next_batch(st, data, augment, cell.performance)
        train_step(st, step, x, y, lf, classification)
        done = st.step = step + 1
        eval_due, save_due = due(t, done, checkpoint is not None, checkpoint_every)
        if done % check_every == 0 or eval_due or save_due or done == t.steps:
            bad = check_divergence(st, t.divergence_factor, done)
            if bad is not None:
                res.status, res.diverged_step = "diverged", bad
                break
        if eval_due:
            record_eval(st, res, data, done, t.eval_batch_size, on_eval)
        if save_due:
            checkpoint(st.to_bytes(seconds=_seconds(res, st.probes, t0, st.seconds)), done)

    if res.status == "done":
        record_eval(st, res, data, t.steps, t.eval_batch_size, on_eval)
    return finish(res, st, _seconds(res, st.probes, t0, st.seconds), t.steps, classification)


def _seconds(res: TrainResult, probes: Measurements, t0: float, before: dict) -> dict[str, float]:
    """Time spent so far in training, evaluation and each measurement, earlier attempts included."""
    cost = probes.cost()
    now = {"train": time.perf_counter() - t0 - res.eval_s - sum(cost.values()), "eval": res.eval_s, **cost}
    return {k: now.get(k, 0.0) + before.get(k, 0.0) for k in {*now, *before}}
