"""A fixed, seeded sample of the guard rails' mutants must be killed (the full run is `make mutation`).

The sample: every mutant of PER_MODULE functions of each module whose tests are fast (SAMPLE_TESTS), drawn
with a fixed seed, run by mutmut in a copy of the checkout. A surviving mutant fails the test unless
bench/mutation_equivalent.json says why it is kept, so a change that leaves a guard rail untested shows here.
"""

import ast
import json
import random
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import mutation  # noqa: E402  (bench/mutation.py: the modules and how to read mutmut's results)

SEED = 20180529  # the paper's arXiv date
PER_MODULE = 1
# the sampled modules and the fast tests that reach them (no Ray, nothing slow): the stats run covers only these
SAMPLE_TESTS = {
    "divergence": ["tests/test_guard_rails.py"],
    "cell_identity": ["tests/test_guard_rails.py"],
    "norms": ["tests/test_norms.py"],
    "sequential": ["tests/test_sequential.py"],
}


def functions(file: Path, module: str) -> list[str]:
    """mutmut's names of the undecorated functions and methods of `file` (the ones it mutates)."""
    tree = ast.parse(file.read_text())
    plain = lambda f: isinstance(f, ast.FunctionDef) and not f.decorator_list
    out = [f"{module}.x_{f.name}" for f in tree.body if plain(f)]
    for c in (c for c in tree.body if isinstance(c, ast.ClassDef)):
        out += [f"{module}.xǁ{c.name}ǁ{f.name}" for f in c.body if plain(f)]
    return out


def sample() -> list[str]:
    """PER_MODULE functions of each sampled module (all, where it has fewer), drawn with SEED; as mutmut name patterns."""
    out = []
    for module in SAMPLE_TESTS:
        m = mutation.MODULES[module]
        dotted = m.file.removesuffix(".py").replace("/", ".")
        names = sorted(n for n in functions(ROOT / m.file, dotted) if mutation.matching([f"{n}__mutmut_1"], m.functions))
        out += random.Random(f"{SEED} {module}").sample(names, min(PER_MODULE, len(names)))
    return [f"{n}__mutmut_*" for n in out]


def test_the_sample_is_fixed_and_takes_each_modules_functions():
    picked = sample()
    assert picked == sample() and len(set(picked)) == len(picked) == 4
    assert picked[:2] == ["bnsweep.train.x_check_divergence__mutmut_*", "bnsweep.spec.xǁCellConfigǁidentity__mutmut_*"]
    assert all(p.startswith(("analysis.sequential.", "bnsweep.norms.")) for p in picked[2:])


@pytest.mark.slow
def test_a_seeded_sample_of_guard_rail_mutants_is_killed(tmp_path):
    try:
        import mutmut  # noqa: F401
    except ImportError:
        pytest.fail("mutmut is not installed: `pip install -e '.[dev]'` (the dev extra pins it) runs this test")
    picked = sample()
    mutation.prepare(tmp_path, sorted({mutation.MODULES[m].file for m in SAMPLE_TESTS}),
                     sorted({t for ts in SAMPLE_TESTS.values() for t in ts}))
    run = mutation.mutmut(tmp_path, "run", *picked, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    codes = mutation.results(tmp_path)
    ran = {n: mutation.status(codes[n]) for n in mutation.matching(codes, picked)}
    assert ran, f"no mutant matched the sample {picked}"
    equivalent = json.loads(mutation.EQUIVALENT.read_text())
    survived = [n for n, s in ran.items() if s not in mutation.KILLED and n not in equivalent]
    shown = "\n\n".join(f"{n} ({ran[n]}):\n{mutation.diff(tmp_path, n)}" for n in survived)
    assert not survived, (f"{len(survived)} of {len(ran)} sampled mutants survived; kill each with a test, or say in "
                          f"bench/mutation_equivalent.json why it is equivalent:\n\n{shown}")
