"""Datasets: each lives on the training device as whole tensors; batches are index slices.

`cifar10` (torchvision's on-disk layout), `digits` (scikit-learn's bundled 8x8 digits, offline)
and `gaussian_regression` (the paper's deep-linear-network task). All are deterministic on CPU.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from bnsweep.errors import UserError
from bnsweep.limits import MAX_DATA_ELEMENTS, REACH_TIMEOUT_S
from bnsweep.options import Options

DIGITS_IMAGES = 1797  # scikit-learn's load_digits()
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# What a CIFAR-10 python batch is made of, as pickle asks for it: the numpy array reconstruction (the
# module moved to numpy._core in numpy 2), and `_codecs.encode`, the way protocol 2 spells bytes when
# Python 3 wrote it. dict, list, str, bytes and int need no class. Anything else (os.system in a
# crafted __reduce__, any callable at all) is refused before it is looked up, so it never runs.
PICKLE_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only the types a CIFAR-10 batch holds (PICKLE_ALLOWED)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return super().find_class(module, name)


def md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def published_md5() -> dict[str, str]:
    """{batch file: its MD5} as the CIFAR-10 authors publish them, from torchvision's CIFAR10 class."""
    from torchvision.datasets import CIFAR10

    return dict(CIFAR10.train_list + CIFAR10.test_list)


def check_md5(path: Path) -> None:
    """A UserError naming `path` unless its MD5 is the published one for its name."""
    want, got = published_md5().get(path.name), md5(path)
    if got != want:
        raise UserError(f"{path}: MD5 {got} is not the published CIFAR-10 {want} for {path.name} (a damaged or foreign "
                        f"file); extract {CIFAR10_URL} again")


def read_batch(path: Path) -> dict:
    """One CIFAR-10 python batch {"data": (N, 3072) uint8, "labels": [N] in 0..9}, read with the restricted
    unpickler after its MD5 is checked against the published one; anything else is a UserError naming the file."""
    check_md5(path)
    try:
        with open(path, "rb") as fh:
            d = _BatchUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(f"{path}: refused, not a CIFAR-10 batch: {' '.join(str(e).split())[:200]} (only numpy arrays, "
                        "dict, list, bytes, str and int are read)") from None
    data = d.get("data") if isinstance(d, dict) else None
    labels = d.get("labels") if isinstance(d, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and isinstance(labels, list) and len(labels) == len(data) and all(type(y) is int and 0 <= y < 10 for y in labels)):
        raise UserError(f"{path}: refused, not a CIFAR-10 batch (expected a dict with 'data' (N, 3072) uint8 and 'labels' [N] in 0..9)")
    return d


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data, without loading it."""

    name: str
    input_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for vectors
    out_dim: int  # classes, or target width for regression
    task: Literal["classification", "regression"]
    train_size: int  # samples in the training split
    reduction: Literal["sum", "mean"] = "sum"  # regression: squared error summed or averaged over samples
    half: bool = False  # regression: times 1/2


@dataclass(frozen=True)
class Data:
    """Train and test tensors on one device; x standardised, y class indices or targets."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardisation with training-set statistics [I]."""
    dims = [0, *range(2, x_train.dim())]
    mean, std = x_train.mean(dims, keepdim=True), x_train.std(dims, keepdim=True)
    return (x_train - mean) / std, (x_test - mean) / std


class Cifar10Spec(Options):
    name: Literal["cifar10"] = "cifar10"
    root: str = Field("data", description="Folder holding cifar-10-batches-py/ (torchvision's layout); relative to where bnsweep runs.")
    download: bool = Field(False, description="Download CIFAR-10 with torchvision when it is missing under root.")


class Cifar10:
    """CIFAR-10: 50k train / 10k test 32x32 RGB images, 10 classes [P]."""

    Spec: ClassVar[type[Options]] = Cifar10Spec
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]

    @staticmethod
    def info(spec: Cifar10Spec) -> DatasetInfo:
        return DatasetInfo("cifar10", (3, 32, 32), 10, "classification", 50_000)

    @classmethod
    def missing(cls, spec: Cifar10Spec) -> str | None:
        base = Path(spec.root) / cls.folder
        absent = [f for f in cls.train_files + cls.test_files if not (base / f).is_file()]
        if not absent:
            return None
        return (f"dataset.root: no CIFAR-10 under {base} (missing {', '.join(absent)}); set dataset.download: true, "
                f"or extract {CIFAR10_URL} into {spec.root}")

    @classmethod
    def verify(cls, spec: Cifar10Spec) -> None:
        """Every batch present is the published one (MD5): the driver's check, before any worker reads one."""
        for f in cls.train_files + cls.test_files:
            if (path := Path(spec.root) / cls.folder / f).is_file():
                check_md5(path)

    @classmethod
    def reachable(cls, spec: Cifar10Spec, timeout_s: float = REACH_TIMEOUT_S) -> None:
        """With CIFAR-10 missing and `download: true`: the archive's host answers (a TCP connection within `timeout_s`,
        name lookup included), else one UserError, before any cell runs and fails on it."""
        import socket
        import threading
        from urllib.parse import urlsplit

        url = urlsplit(CIFAR10_URL)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        why: list[str] = []

        def connect() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout_s).close()
            except OSError as e:
                why.append(str(e.strerror or e))
            else:
                why.append("")

        t = threading.Thread(target=connect, daemon=True)  # a name lookup with no network can outlast its own timeout
        t.start()
        t.join(timeout_s)
        if not why or why[0]:
            reason = why[0] if why else f"no answer within {timeout_s:g} s"
            raise UserError(f"dataset.download: CIFAR-10 is missing under {spec.root} and {host}:{port}, where it is downloaded "
                            f"from, cannot be reached ({reason}); extract {CIFAR10_URL} into {spec.root} instead")

    @classmethod
    def prepare(cls, spec: Cifar10Spec) -> None:
        if cls.missing(spec) and spec.download:
            import torchvision

            torchvision.datasets.CIFAR10(spec.root, train=True, download=True)
        if msg := cls.missing(spec):
            raise UserError(msg)

    @classmethod
    def load(cls, spec: Cifar10Spec) -> tuple[torch.Tensor, ...]:
        def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            xs, ys = [], []
            for f in files:  # python pickles of {"data": (N, 3072) uint8, "labels": [N]}, checked and restricted
                d = read_batch(Path(spec.root) / cls.folder / f)
                xs.append(d["data"].reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d["labels"], dtype=np.int64))
            return torch.from_numpy(np.concatenate(xs)).float() / 255, torch.from_numpy(np.concatenate(ys))

        (xtr, ytr), (xte, yte) = read(cls.train_files), read(cls.test_files)
        xtr, xte = standardise(xtr, xte)
        return xtr, ytr, xte, yte

    @staticmethod
    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (4-pixel reflect padding) and horizontal flip, batched on x's device."""
        b, _, h, w = x.shape  # (B, C, H, W)
        r = torch.randint(0, 9, (2, b), generator=generator, device=x.device)
        flip = torch.rand(b, generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
        p = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
        rows = (r[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
        cols = (r[1].view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
        idx = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        return p.permute(0, 2, 3, 1)[idx, rows, cols].squeeze(1).permute(0, 3, 1, 2)


class DigitsSpec(Options):
    name: Literal["digits"] = "digits"
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the 1797 images held out for test.")
    split_seed: int = Field(0, ge=0, description="Seed of the fixed train/test split (the same for every cell).")

    @field_validator("test_fraction")
    @classmethod
    def _both_splits_hold_images(cls, v: float) -> float:
        if not 1 <= round(DIGITS_IMAGES * v) < DIGITS_IMAGES:
            raise ValueError(f"leaves an empty train or test split of the {DIGITS_IMAGES} images (got {v:g})")
        return v


class Digits:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes): real data, offline."""

    Spec: ClassVar[type[Options]] = DigitsSpec
    augment = None

    @staticmethod
    def info(spec: DigitsSpec) -> DatasetInfo:
        train = DIGITS_IMAGES - round(DIGITS_IMAGES * spec.test_fraction)  # as load() splits
        return DatasetInfo("digits", (1, 8, 8), 10, "classification", train)

    @staticmethod
    def missing(spec: DigitsSpec) -> str | None:
        return None

    @staticmethod
    def prepare(spec: DigitsSpec) -> None:
        pass

    @staticmethod
    def load(spec: DigitsSpec) -> tuple[torch.Tensor, ...]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
        y = torch.tensor(d.target, dtype=torch.int64)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec.split_seed))
        n_test = round(len(y) * spec.test_fraction)
        te, tr = perm[:n_test], perm[n_test:]
        xtr, xte = standardise(x[tr], x[te])
        return xtr, y[tr], xte, y[te]


class GaussianRegressionSpec(Options):
    name: Literal["gaussian_regression"] = "gaussian_regression"
    dim: int = Field(10, gt=0, description="Width of x and of the target A x (10 in the paper) [P].")
    samples: int = Field(1000, gt=0, description="Training samples x ~ N(0, I) (1000 in the paper) [P].")
    test_samples: int = Field(1000, gt=0, description="Held-out samples from the same distribution [I].")
    seed: int = Field(0, ge=0, description="Seed of the problem instance (A and the samples), the same for every cell [I].")
    a_std: float = Field(
        0.1**0.5, gt=0, le=1e6,
        description="Standard deviation of A's i.i.d. normal entries: sqrt(1/10), the reading that best reproduces the paper's "
        "DLN plots (docs/dln-protocol.md); 1 is the reading of earlier bnsweep versions.",
    )
    x_std: float = Field(1.0, gt=0, le=1e6, description="Standard deviation of the inputs' i.i.d. normal entries (1 [I]; unstated).")
    reduction: Literal["sum", "mean"] = Field(
        "sum", description="Squared error summed over samples [I: the plotted loss starts near 4e4], or averaged over them."
    )
    half: bool = Field(False, description="Multiply the squared error by 1/2, as TensorFlow's l2_loss does (unstated in the paper).")

    late_fields: ClassVar[Mapping[str, Any]] = {"a_std": 1.0, "x_std": 1.0, "reduction": "sum", "half": False}

    @model_validator(mode="after")
    def _fits_one_device(self) -> GaussianRegressionSpec:
        """A (dim x dim) and every sample (train and test) are drawn at once: bound them before a worker allocates."""
        if (values := self.dim * (self.dim + self.samples + self.test_samples)) > MAX_DATA_ELEMENTS:
            raise ValueError(f"dim x (dim + samples + test_samples) = {values:,} values; at most {MAX_DATA_ELEMENTS:,} fit one device")
        return self


class GaussianRegression:
    """The DLN task [P]: targets A x with A 10x10 i.i.d. N(0, a_std^2), x ~ N(0, x_std^2 I_10); the loss's
    `reduction` and `half` are the task's too (`train.loss_fn`)."""

    Spec: ClassVar[type[Options]] = GaussianRegressionSpec
    augment = None

    @staticmethod
    def info(spec: GaussianRegressionSpec) -> DatasetInfo:
        return DatasetInfo("gaussian_regression", (spec.dim,), spec.dim, "regression", spec.samples, spec.reduction, spec.half)

    @staticmethod
    def missing(spec: GaussianRegressionSpec) -> str | None:
        return None

    @staticmethod
    def prepare(spec: GaussianRegressionSpec) -> None:
        pass

    @staticmethod
    def load(spec: GaussianRegressionSpec) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(spec.seed)
        a = torch.randn(spec.dim, spec.dim, generator=g)  # (D, D)
        x = torch.randn(spec.samples + spec.test_samples, spec.dim, generator=g)  # (N, D)
        if spec.a_std != 1 or spec.x_std != 1:  # scaled after the same draws: a_std 1 gives the earlier cells bit for bit
            a, x = a * spec.a_std, x * spec.x_std
        y = x @ a.T  # targets A x
        return x[: spec.samples], y[: spec.samples], x[spec.samples :], y[spec.samples :]


DATASETS: dict[str, type] = {
    "cifar10": Cifar10,
    "digits": Digits,
    "gaussian_regression": GaussianRegression,
}


def ensure_data(specs, fetch: bool = False) -> None:
    """The one check of a sweep's data, in the driver before anything runs: every data set is present
    or may be downloaded (`download: true`), and every file present is the published one, else a UserError;
    with `fetch`, download what is missing."""
    for spec in set(specs):
        msg = DATASETS[spec.name].missing(spec)
        if msg and not getattr(spec, "download", False):
            raise UserError(msg)
        if msg:  # to be downloaded: its source must answer now, not fail every cell later
            DATASETS[spec.name].reachable(spec)
        if hasattr(DATASETS[spec.name], "verify"):  # a damaged or crafted file: refused before anything runs
            DATASETS[spec.name].verify(spec)
        if fetch:
            DATASETS[spec.name].prepare(spec)


@functools.lru_cache(maxsize=2)
def load_data(spec: Options, device: str) -> Data:
    """The dataset described by `spec`, on `device`; cached so a reused worker loads it once."""
    ds = DATASETS[spec.name]
    ds.prepare(spec)  # on a worker of another node the driver's download is not on this disk
    xtr, ytr, xte, yte = (t.to(device) for t in ds.load(spec))
    return Data(ds.info(spec), xtr, ytr, xte, yte)
