"""The sweep spec: YAML -> validated `SweepSpec` -> `expand()` -> one `CellConfig` per grid cell.

Defaults live here, once, on the fields ([P] stated in the paper, [I] our inference, [U] unknown
and made an option; see docs/protocol.md). Sweep files hold only overrides. Nothing here
imports Ray, so bad input fails before any worker starts.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union

from pydantic import Field, PositiveFloat, SerializeAsAny, ValidationError, create_model, field_validator, model_validator

from bnsweep.data import DATASETS, DatasetInfo
from bnsweep.errors import UserError, register_model, unknown, validation_error
from bnsweep.layout import SWEEP_NAME
from bnsweep.limits import (
    MAX_CELLS,
    MAX_DATA_ELEMENTS,
    MAX_EVAL_BATCH,
    MAX_NAME,
    MAX_OUTPUT_PATH,
    MAX_PARAMETERS,
    MAX_SEED,
    MAX_STEPS,
    MIN_CPU,
    OUTPUT_SCHEMES,
    short,
)
from bnsweep.measure import MeasureSpec, layered
from bnsweep.models import MODEL_FAMILIES, MODELS, model_size
from bnsweep.norms import NORMS
from bnsweep.options import Options, unique
from bnsweep.performance import Performance

# Bump when training semantics change, so old results get new cell ids instead of mixing.
TRAIN_VERSION = 1

DatasetSpec = Annotated[Union[tuple(d.Spec for d in DATASETS.values())], Field(discriminator="name")]  # noqa: UP007

ModelOptions = create_model(
    "ModelOptions",
    __base__=Options,
    **{
        family: (opts, Field(default_factory=opts, description=f"Options of the {family} architectures."))
        for family, opts in MODEL_FAMILIES.items()
    },
)
NormOptions = create_model(
    "NormOptions",
    __base__=Options,
    **{name: (cls.Options, Field(default_factory=cls.Options, description=f"Options of norm {name!r}.")) for name, cls in NORMS.items()},
)


class TrainSpec(Options):
    """Plain SGD with a constant learning rate [P: 'standard SGD', 'fixed learning rate']."""

    steps: int | None = Field(
        None,
        gt=0,
        le=MAX_STEPS,
        description="SGD steps per cell; unset: the architecture's protocol (15,000 for VGG [P]; 10,000 for the DLN [P]).",
    )
    batch_size: int | None = Field(
        None,
        gt=0,
        description=("Samples per step; unset: the architecture's protocol (128 for VGG [P]; the whole training "
                     "set, full-batch gradient descent, for the DLN [P])."),
    )
    eval_every: int = Field(
        1000,
        ge=0,
        le=MAX_STEPS,
        description="Steps between full train/test evaluations (about every 1k in Fig. 1 [P]); 0 = only at the start and the end.",
    )
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum; 0 in the paper [I].")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay; 0 in the paper [P].")
    augment: bool = Field(False, description="Random crop and flip (cifar10 only); off in the paper [P].")
    divergence_factor: float = Field(
        1000.0, gt=1, description="A cell is 'diverged' once its training loss is NaN/inf or above this multiple of its step-0 loss."
    )
    eval_batch_size: int = Field(1000, gt=0, le=MAX_EVAL_BATCH, description="Samples per forward pass during evaluation (memory only).")


class Resources(Options):
    cpu: float = Field(1.0, ge=MIN_CPU, description="CPUs per cell (Ray resource); torch uses this many threads.")
    gpu: float = Field(0.0, ge=0, description="GPUs per cell (Ray resource); fractions below 1 share a GPU.")

    @field_validator("cpu", "gpu")
    @classmethod
    def _ray_units(cls, v: float, info) -> float:
        """Ray counts resources in units of MIN_CPU and silently truncates the rest: refuse what it would change."""
        units = v / MIN_CPU
        if v and (units < 1 or abs(units - round(units)) > 1e-6 * max(1.0, units)):
            raise ValueError(f"Ray counts {info.field_name} in steps of {MIN_CPU:g}; give a multiple of {MIN_CPU:g} (got {v:g})")
        if info.field_name == "gpu" and v > 1 and v != int(v):
            raise ValueError(f"above 1 must be a whole number of GPUs (got {v:g})")
        return v


class Execution(Options):
    """How cells run; never part of a cell's identity (results do not depend on it)."""

    pack: int | Literal["auto"] = Field(
        1,
        description="Cells trained together in one trial as one program over stacked parameters (they must share "
        "everything but lr and seed). 1 = one cell per trial. auto = the K bench/pack.py measured best for the "
        "model family and device (README, Packed cells).",
    )

    @field_validator("pack")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"pack must be a whole number >= 1 or 'auto' (got {v})")
        return v


@register_model
class Settings(Options):
    """Everything a grid block may override."""

    dataset: DatasetSpec | None = Field(None, description="The data; required here or in every grid block's overrides.")
    model: ModelOptions = Field(default_factory=ModelOptions, description="Per-architecture-family options.")
    norm_options: NormOptions = Field(default_factory=NormOptions, description="Per-normalisation-variant options.")
    train: TrainSpec = Field(default_factory=TrainSpec)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when the cell was given a GPU, else CPU.")
    resources: Resources = Field(default_factory=Resources, description="Ray resources per cell.")
    measure: MeasureSpec = Field(
        default_factory=MeasureSpec, description="Measurements taken during training, each with a schedule (none by default)."
    )
    checkpoint_every: int = Field(
        1000,
        ge=0,
        le=MAX_STEPS,
        description=("Steps between checkpoints of a running cell in the output store; a retried or re-run cell resumes "
                     "from its last one. 0 = never. Results do not depend on it."),
    )
    performance: Performance = Field(
        default_factory=Performance,
        description="How a cell runs on a GPU: precision (TF32 or not), cuDNN autotuning, memory layout, determinism.",
    )
    execution: Execution = Field(default_factory=Execution, description="How cells run (packing); results do not depend on it.")


class Grid(Options):
    """One grid: every combination of its axes is a cell."""

    arch: list[str] = Field(min_length=1, description=f"Architectures: {', '.join(MODELS)}.")
    norm: list[str] = Field(min_length=1, description=f"Normalisation variants: {', '.join(NORMS)}.")
    lr: list[PositiveFloat] = Field(min_length=1, description="Learning rates (0.1 for VGG, 1e-6 for the DLN in the paper [P]).")
    seed: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        [0], min_length=1, description=f"Seeds: initialisation, batch order and noise; 0 to {MAX_SEED:.0e}."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description=("Settings for this block's cells (dataset, model, norm_options, train, device, resources, "
                     "measure, performance, execution), merged over the top level."),
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: list[str]) -> list[str]:
        for a in v:
            if a not in MODELS:
                raise ValueError(str(unknown("arch", a, list(MODELS))))
        return unique("arch", v)

    @field_validator("norm")
    @classmethod
    def _known_norm(cls, v: list[str]) -> list[str]:
        for n in v:
            if n not in NORMS:
                raise ValueError(str(unknown("norm", n, list(NORMS))))
        return unique("norm", v)

    @field_validator("lr", "seed")
    @classmethod
    def _no_dupes(cls, v: list, info) -> list:
        return unique(info.field_name, v)


@register_model
class SweepSpec(Settings):
    """A sweep: a name, where its tables go, default settings, and one or more grids."""

    name: str = Field(
        pattern=SWEEP_NAME.pattern,
        max_length=MAX_NAME,
        description=f"Sweep name; a partition value in every table and a file name (at most {MAX_NAME} characters).",
    )
    output: str = Field(description="Where the tables go: a local or shared path (later also s3://, gs://).")
    grid: list[Grid] = Field(min_length=1, description="A grid, or a list of grids whose cells are concatenated.")

    @field_validator("grid", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("output")
    @classmethod
    def _a_place(cls, v: str) -> str:
        """The output's text only (the file system is looked at by `destinations.output`)."""
        if not v.strip():
            raise ValueError("must name a folder (got an empty string): it would write into the current directory")
        if not v.isprintable():
            raise ValueError(f"must be a printable path, without control characters or NUL (got {short(v)})")
        if "://" in v and (scheme := v.split("://", 1)[0].lower()) not in OUTPUT_SCHEMES:
            raise ValueError(f"unknown scheme {short(scheme + '://')}; a folder path, or one of "
                             f"{', '.join(s + '://' for s in OUTPUT_SCHEMES)}")
        if any(len(part.encode()) > 255 for part in v.split("?", 1)[0].split("/")):
            raise ValueError(f"has a folder name longer than 255 bytes, which file systems refuse (got {short(v)})")
        if len(v.encode()) > MAX_OUTPUT_PATH:
            raise ValueError(f"is {len(v.encode()):,} bytes long; at most {MAX_OUTPUT_PATH:,} (the tables' files go "
                             f"below it, and paths hold 4,096) (got {short(v)})")
        return v

    @model_validator(mode="after")
    def _has_dataset(self) -> SweepSpec:
        for i, g in enumerate(self.grid):
            if self.dataset is None and g.overrides.get("dataset") is None:
                raise ValueError(
                    f"no dataset for grid[{i}]: set `dataset:` at the top level or in grid[{i}].overrides; known: {', '.join(DATASETS)}"
                )
        return self


class CellConfig(Options):
    """One fully resolved cell: everything that determines its result, plus where it runs.

    `model` holds the options of the arch's family and `norm_options` those of the norm variant,
    each as its own validated option model; `train` has the protocol defaults filled in.
    """

    sweep: str
    arch: str
    norm: str
    lr: float
    seed: int
    dataset: DatasetSpec
    model: SerializeAsAny[Options]
    norm_options: SerializeAsAny[Options]
    train: TrainSpec
    device: Literal["auto", "cpu", "cuda"]
    resources: Resources
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    checkpoint_every: int = 1000
    performance: Performance = Field(default_factory=Performance)
    execution: Execution = Field(default_factory=Execution)

    @model_validator(mode="before")
    @classmethod
    def _typed_options(cls, data: Any) -> Any:
        """model / norm_options given as dicts (JSON from the driver) become the arch's and norm's option models."""
        if isinstance(data, dict) and data.get("arch") in MODELS and data.get("norm") in NORMS:
            data = dict(data)
            for key, want in (("model", MODELS[data["arch"]].Options), ("norm_options", NORMS[data["norm"]].Options)):
                if isinstance(data.get(key), dict):
                    data[key] = want.model_validate(data[key])
                elif not isinstance(data.get(key), want):
                    raise ValueError(f"{key}: expected {want.__name__} options for {data['arch'] if key == 'model' else data['norm']!r}")
        return data

    def identity(self) -> dict[str, Any]:
        """The fields that change the result: not where it runs, how often it checkpoints, nor where the data sits."""
        d = self.model_dump(mode="json", exclude={"device", "resources", "checkpoint_every", "performance", "execution"})
        if self.performance.precision != Performance.model_fields["precision"].default:
            d["precision"] = self.performance.precision  # TF32 changes results; the default keeps the ids it always had
        d["measure"] = self.measure.model_dump(mode="json", exclude_none=True, by_alias=True)
        if not d["measure"]:  # cells without measurements keep the ids they always had
            del d["measure"]
        d["dataset"], d["model"] = self.dataset.identity(), self.model.identity()  # late options at their default: no change
        for k in ("root", "download"):
            d["dataset"].pop(k, None)
        d["train_version"] = TRAIN_VERSION
        return d

    @functools.cached_property  # hashed once per cell: plan and run ask for it several times
    def spec_hash(self) -> str:
        """sha256 of the cell's identity: what its checkpoints record; `cell_id` is its first 16 hex digits."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @functools.cached_property
    def cell_id(self) -> str:
        return self.spec_hash[:16]


def _merge(base: dict, over: dict) -> dict:
    """`over` deep-merged into `base`; a section naming another variant (a dataset) replaces it."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        switch = isinstance(v, dict) and isinstance(old, dict) and "name" in v and v["name"] != old.get("name")
        out[k] = _merge(old, v) if isinstance(v, dict) and isinstance(old, dict) and not switch else v
    return out


def block_settings(spec: SweepSpec, i: int) -> Settings:
    """The settings of grid block `i`: its overrides merged over the spec's top level."""
    top = spec.model_dump(include=set(Settings.model_fields), exclude_unset=True, mode="json")
    try:
        s = Settings.model_validate(_merge(top, spec.grid[i].overrides))
    except ValidationError as e:
        raise validation_error(e, ("grid", i, "overrides")) from None
    if s.dataset is None:  # `overrides: {dataset: null}` over a top-level dataset
        raise UserError(f"grid[{i}].overrides.dataset: null leaves the block without data; name one of {', '.join(DATASETS)}")
    return s


def count_cells(spec: SweepSpec) -> int:
    """Cells the spec expands to, from the axis lengths alone: nothing is built."""
    return sum(len(g.arch) * len(g.norm) * len(g.lr) * len(g.seed) for g in spec.grid)


def check_count(spec: SweepSpec, max_cells: int = MAX_CELLS) -> int:
    """The cell count, refused above `max_cells` before any cell is built."""
    n = count_cells(spec)
    if n > max_cells:
        sizes = "; ".join(
            f"grid[{i}]: {len(g.arch)} arch x {len(g.norm)} norm x {len(g.lr)} lr x {len(g.seed)} seed" for i, g in enumerate(spec.grid[:3])
        ) + ("; ..." if len(spec.grid) > 3 else "")
        raise UserError(
            f"the spec expands to {n:,} cells ({sizes}); at most {max_cells:,} are allowed: "
            f"split the sweep, or raise the limit with --max-cells"
        )
    return n


def trained(s: Settings, arch: str, info: DatasetInfo) -> TrainSpec:
    """A block's training settings for `arch`, with what the spec leaves unset taken from the arch's protocol."""
    protocol = MODELS[arch].protocol(info)
    return s.train.model_copy(update={k: protocol[k] for k in ("steps", "batch_size") if getattr(s.train, k) is None})


def _check_block(where: str, g: Grid, s: Settings) -> DatasetInfo:
    """What needs a block's whole settings: data, devices, architectures, measured layers; returns the data's info."""
    info = DATASETS[s.dataset.name].info(s.dataset)
    if s.train.augment and DATASETS[s.dataset.name].augment is None:
        raise UserError(
            f"{where}: train.augment: true is not supported for dataset {s.dataset.name!r}; datasets with augmentation: "
            + ", ".join(n for n, d in DATASETS.items() if d.augment is not None)
        )
    for arch in g.arch:
        if (batch := trained(s, arch, info).batch_size) > info.train_size:
            raise UserError(
                f"{where}: train.batch_size: {batch} is larger than the training set of dataset "
                f"{s.dataset.name!r} ({info.train_size} samples); at most {info.train_size}"
            )
    for norm in g.norm:
        least = getattr(NORMS[norm], "min_batch", 1)
        for arch in g.arch:
            if (batch := trained(s, arch, info).batch_size) < least:
                raise UserError(f"{where}: train.batch_size: {batch} is too small for norm {norm!r}, which normalises "
                                f"over the batch; at least {least}")
    if (values := math.prod(info.input_shape) * info.train_size) > MAX_DATA_ELEMENTS:
        raise UserError(f"{where}: dataset {s.dataset.name!r}: {values:,} training values; at most {MAX_DATA_ELEMENTS:,} fit one device")
    if s.device == "cuda" and s.resources.gpu == 0:
        raise UserError(f"{where}: device: cuda needs resources.gpu > 0 (got gpu: 0)")
    for arch in g.arch:
        try:
            MODELS[arch].check(arch, info)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        n, params = model_size(arch, getattr(s.model, MODELS[arch].family), info)
        if params > MAX_PARAMETERS:
            raise UserError(f"{where}: model.{MODELS[arch].family}: arch {arch!r} would have {params:,} parameters; "
                            f"at most {MAX_PARAMETERS:,} (lower its width or depth)")
        for name, layers in layered(s.measure):
            if bad := [k for k in layers if not 1 <= k <= n]:
                raise UserError(
                    f"{where}: measure.{name}.layers: {short(bad)} out of range for arch {arch!r}, whose weight layers are #1..#{n}"
                )
    return info


def _worker_accepts(cell: CellConfig, where: str) -> None:
    """A worker re-reads each cell from JSON: refuse here what it would refuse there (one validation path)."""
    try:
        again = CellConfig.model_validate_json(cell.model_dump_json())
    except ValidationError as e:
        raise UserError(f"{where}: a cell does not survive the trip to a worker: {validation_error(e)}") from None
    if again != cell:
        raise UserError(
            f"{where}: a cell changes on the trip to a worker (arch={cell.arch} norm={cell.norm} lr={cell.lr:g} seed={cell.seed})"
        )


def iter_cells(spec: SweepSpec) -> Iterator[CellConfig]:
    """Every cell of every grid, in order, one at a time; checks what needs the whole cell (data, devices).

    Duplicates across grids are found with a set of cell ids (linear in the cell count).
    """
    seen: set[str] = set()
    for i, g in enumerate(spec.grid):
        checked: set[tuple[str, str]] = set()
        s = block_settings(spec, i)
        where = f"grid[{i}]" if len(spec.grid) > 1 else "grid"
        info = _check_block(where, g, s)
        train = {arch: trained(s, arch, info) for arch in g.arch}
        for arch, norm, lr, seed in itertools.product(g.arch, g.norm, g.lr, g.seed):
            cell = CellConfig(
                sweep=spec.name,
                arch=arch,
                norm=norm,
                lr=lr,
                seed=seed,
                dataset=s.dataset,
                model=getattr(s.model, MODELS[arch].family),
                norm_options=getattr(s.norm_options, norm),
                train=train[arch],
                device=s.device,
                resources=s.resources,
                measure=s.measure,
                checkpoint_every=s.checkpoint_every,
                performance=s.performance,
                execution=s.execution,
            )
            if (arch, norm) not in checked:  # settings are shared per (arch, norm): one cell each shows the round trip holds
                _worker_accepts(cell, where)
                checked.add((arch, norm))
            cid = cell.cell_id
            if cid in seen:
                raise UserError(
                    f"{where}: cell arch={arch} norm={norm} lr={lr:g} seed={seed} appears in more than one grid; each cell may appear once"
                )
            seen.add(cid)
            yield cell


def expand(spec: SweepSpec, max_cells: int = MAX_CELLS) -> list[CellConfig]:
    """Every cell of every grid, in order, after checking the count from the axis lengths."""
    check_count(spec, max_cells)
    return list(iter_cells(spec))


# Packing: cells that differ only in lr and seed train together as one program (bnsweep/pack.py).
# K for `pack: auto`, per device and model family, from bench/pack.py (README, Packed cells): on CPU the
# K of the best measured ratio (32 for both: the largest measured); the CUDA figures await bench/gpu.py.
PACK_AUTO = {"cpu": {"dln": 32, "vgg": 32}, "cuda": {"dln": 8, "vgg": 8}}


def pack_size(cell: CellConfig) -> int:
    """K for `cell`: its `execution.pack`, with auto resolved from its model family and where it runs
    (cuda when it is given a GPU)."""
    k = cell.execution.pack
    if k != "auto":
        return k
    on_gpu = cell.device == "cuda" or (cell.device == "auto" and cell.resources.gpu > 0)
    return PACK_AUTO["cuda" if on_gpu else "cpu"][MODELS[cell.arch].family]


def pack_key(cell: CellConfig) -> str:
    """What the members of one pack share: every field but lr and seed."""
    return cell.model_dump_json(exclude={"lr", "seed"})


def packs(cells: list[CellConfig]) -> list[list[CellConfig]]:
    """`cells` grouped into packs of at most their pack size, in order of first appearance."""
    groups: dict[str, list[CellConfig]] = {}
    for c in cells:
        groups.setdefault(pack_key(c), []).append(c)
    out = []
    for members in groups.values():
        k = pack_size(members[0])
        out += [members[i : i + k] for i in range(0, len(members), k)]
    return out
