"""The stated bounds on a sweep file, in one place (README "Limits" lists them).

Each bound is what a later stage can hold, checked before anything runs or is written:
seeds feed `torch.Generator.manual_seed(seed * 1000 + stream)` (an unsigned 64-bit value) and
Parquet int64 columns; steps size two float64 tensors and one steps-table row each; names become
file names (`<output>/_locks/<name>.json`, `sweep=<name>/`), which most file systems cap at 255 bytes.
"""

from __future__ import annotations

MAX_SEED = 10**15  # seed * 1000 + stream fits manual_seed (< 2**64), int64 columns, and float64 exactly (< 2**53)
MAX_STEPS = 10**6  # 66x the paper's 15,000; 16 MB of per-step tensors and 10^6 steps rows per cell
MAX_INT = 2**63 - 1  # every integer of a spec ends up in an int64 column or a torch seed
MAX_NAME = 200  # bytes; file names hold 255, and the lock and partition names add up to 10
MAX_DATA_ELEMENTS = 10**9  # gaussian_regression dim * (samples + test_samples): 4 GB of float32 on one device

MAX_WIDTH = 10**5  # units per layer (DLN width, VGG mlp_hidden); the paper uses 10 and 512
MAX_DEPTH = 10**3  # DLN layers; the paper uses 25
MAX_VGG_WIDTH = 64.0  # VGG channel multiplier: up to 32,768 channels
MAX_PARAMETERS = 10**9  # trainable values of one model: 4 GB of float32, before gradients and probes

MAX_HVPS = 10_000  # Hessian-vector products per end of a curvature probe: VGG-16 at ~10 ms each on a GPU, 100 s
MAX_LANCZOS_BASIS = 100  # Lanczos vectors held on the host: (basis + 3) x parameters x 8 bytes (12 GB for VGG-16)
MIN_CURVATURE_TOL = 1e-10  # float64 products reach 1e-12; a tolerance below what the products resolve only burns the budget

MAX_SPEC_BYTES = 10 * 2**20  # a sweep file is read whole
MAX_YAML_NODES = 10**6  # scalars + collections after every alias is expanded (a billion-laughs file needs 10^9)
MAX_YAML_DEPTH = 100  # nesting of collections; a spec needs about 6
MAX_CELLS = 100_000  # default for --max-cells: the product of the axis lengths, summed over grids
MAX_ERROR_VALUE = 80  # characters of a bad value quoted in an error message

MAX_PROBE_POINTS = 1_000  # landscape.eta.points: each is a forward and a backward pass per probed step
MAX_ETA = 1e6  # landscape.eta.from / to, as multiples of lr or absolute: beyond, every probe is inf
MAX_EVAL_BATCH = 10**6  # train.eval_batch_size: samples per evaluation forward pass
MIN_CPU = 0.0001  # resources.cpu and .gpu: Ray counts resources in units of 1/10,000 (MIN_RESOURCE_GRANULARITY)
MAX_OUTPUT_PATH = 3_000  # bytes of an output path: PATH_MAX is 4,096, and the layout adds up to ~700 below it
OUTPUT_SCHEMES = ("s3", "gs", "file")  # pyarrow file systems a result may go to; plain paths are local
REACH_TIMEOUT_S = 8.0  # validate/plan/run wait this long for a remote output (s3://, gs://) to answer


def short(value: object, limit: int = MAX_ERROR_VALUE) -> str:
    """repr(value), cut to `limit` characters with a note of how long it was: errors never echo huge input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} items" if isinstance(value, (list, tuple, dict, set)) else f"{len(text)} characters"
    return f"{text[:limit]}... ({size})"
