"""How a cell runs on its device: cuDNN autotuning, TF32, memory layout, divergence-check interval.

    performance: {precision: highest, cudnn_benchmark: true, channels_last: false, deterministic: false}

Only `precision` can change a result beyond rounding order, so only a non-default `precision`
enters the cell id (`CellConfig.identity`); the rest is where-and-how, like `device`. The CUDA
backend flags are process-wide: `applied()` sets them for one cell and restores them after.
On CPU nothing here changes a single bit, except `channels_last`, which changes the layout (and so the
summation order) of convolutions on any device and is off by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field

from bnsweep.options import Options

CHECK_EVERY = {"cpu": 25, "cuda": 200}  # steps between divergence checks (each one host sync); see train.py


class Performance(Options):
    """Execution choices of a cell on a GPU; each one in effect is recorded in its `cells` row."""

    precision: Literal["highest", "high"] = Field(
        "highest", description="float32 matmuls and convolutions on CUDA: 'highest' = IEEE float32, as on the paper's "
        "2018 GPUs, which had no TF32 (paper-faithful, the default); 'high' = TF32 tensor cores (10-bit mantissa, "
        "faster on Ampere and later). 'high' changes results, and so the cell id.")
    cudnn_benchmark: bool = Field(True, description="Let cuDNN time its convolution algorithms once per shape and keep "
                                                    "the fastest (CUDA only; rounding order may vary between runs).")
    channels_last: bool = Field(False, description="NHWC memory layout for image models and batches (any device); "
                                                   "on by choice where bench/gpu.py shows it faster.")
    deterministic: bool = Field(False, description="Deterministic cuDNN algorithms and no autotuning (CUDA only): "
                                                   "a resumed cell equals an uninterrupted one bit for bit.")


def _fp32_precision(precision: str) -> str:
    return {"highest": "ieee", "high": "tf32"}[precision]


@contextlib.contextmanager
def applied(perf: Performance, device: torch.device) -> Iterator[dict]:
    """Set the CUDA backend flags for one cell (nothing on CPU); yields `effective(perf, device)`."""
    if device.type != "cuda":
        yield effective(perf, device)
        return
    b = torch.backends
    saved = (b.cudnn.benchmark, b.cudnn.deterministic, b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    b.cudnn.benchmark = perf.cudnn_benchmark and not perf.deterministic
    b.cudnn.deterministic = perf.deterministic
    # the new per-backend API only: torch refuses a mix with the legacy allow_tf32 flags
    b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = _fp32_precision(perf.precision)
    try:
        yield effective(perf, device)
    finally:
        b.cudnn.benchmark, b.cudnn.deterministic, b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = saved


def effective(perf: Performance, device: torch.device) -> dict:
    """The choices in effect on `device`, as the `cells` row records them."""
    cuda = device.type == "cuda"
    return {
        "precision": perf.precision,
        "tf32": cuda and perf.precision == "high",
        "cudnn_benchmark": cuda and perf.cudnn_benchmark and not perf.deterministic,
        "channels_last": perf.channels_last,
        "deterministic": cuda and perf.deterministic,
        "check_every": checks_every(device),
    }


def checks_every(device: torch.device) -> int:
    """Steps between divergence checks on `device`. Each check is one host sync; on CUDA they are rarer, so the
    GPU's queue stays full. The diverged step is exact either way (the check scans every step of its window)."""
    return CHECK_EVERY["cuda" if device.type == "cuda" else "cpu"]


def layout(x: torch.Tensor, perf: Performance) -> torch.Tensor:
    """`x` in the memory layout the model expects: NHWC for 4-d image batches under channels_last."""
    if perf.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
