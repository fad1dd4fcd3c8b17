"""Mutation testing of the guard rails: `make mutation` (python bench/mutation.py [MODULE ...]).

mutmut (pinned in the dev extra, settings in pyproject.toml [tool.mutmut]) changes one thing at a time in
the functions below (an operator, a constant, a comparison, an argument) and runs the tests that reach
that function; a mutant the tests still pass on has survived. Each module runs in its own copy of the
checkout, .mutation/MODULE/ (git-ignored), with only its own fast tests selected; mutmut keeps there which
test reaches which function, so a second run goes straight to the mutants. Writes bench/results/mutation.json (per module: mutants,
killed, survived, timeout, suspicious, no_tests, score, and each survivor) and docs/mutation.md (the table
and every survivor with its diff and why it is kept, from bench/mutation_equivalent.json), and puts the table
in the README.

score = (killed + timeout) / (mutants - equivalent), where equivalent survivors are those whose reason in
bench/mutation_equivalent.json starts with "Equivalent" (no input tells them from the original); "killed of all"
keeps them in. A mutant that no selected test reaches, or kept as not worth a test, counts against both.
With module names, only those run; the report keeps the others' last results. `--report` only rewrites the
report from the results under .mutation/ (after editing bench/mutation_equivalent.json); `--survivors MODULE ...`
re-tests only the mutants that survived the module's last run or were not run (after adding tests, or a stop).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
REPORT = ROOT / "bench" / "results" / "mutation.json"
DOC = ROOT / "docs" / "mutation.md"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.json"
README = ROOT / "README.md"
TABLE_MARKS = ("<!-- mutation table: written by make mutation -->", "<!-- end of mutation table -->")
COPIED = ("bnsweep", "analysis", "tests", "sweeps", "bench")  # what the tests read (conftest's ROOT is the copy)


@dataclass(frozen=True)
class Module:
    file: str  # what mutmut mutates (a file or a folder)
    functions: list[str]  # the mutmut names that count: `pkg.module.x_function*`, `pkg.module.xǁClassǁmethod*`
    tests: list[str]  # the fast tests that reach it (no Ray, nothing slow): the only ones selected


MODULES: dict[str, Module] = {
    "divergence": Module("bnsweep/train.py", ["bnsweep.train.x_check_divergence*"], ["tests/test_guard_rails.py", "tests/test_train.py"]),
    "cell_identity": Module("bnsweep/spec.py", ["bnsweep.spec.xǁCellConfigǁidentity*"], ["tests/test_guard_rails.py"]),
    "verify": Module("bnsweep/verify.py", ["bnsweep.verify.*"], ["tests/test_verify.py", "tests/test_verify_known.py"]),
    "records": Module("bnsweep/records.py", ["bnsweep.records.*"], ["tests/test_records.py", "tests/test_verify.py", "tests/test_lock.py"]),
    # test_verdict_rule.py (simulated power and error rates, 100 s) is left out: a survivor would run it whole
    "compare": Module("analysis/compare.py", ["analysis.compare.*"], ["tests/test_guard_rails.py", "tests/test_claims.py"]),
    "verdicts": Module("analysis/verdicts.py", ["analysis.verdicts.*"], ["tests/test_claims.py", "tests/test_verdict_engine.py"]),
    "claims": Module("analysis/claims.py", ["analysis.claims.*"], ["tests/test_claims.py", "tests/test_claims_table.py"]),
    "outcomes": Module("analysis/outcomes.py", ["analysis.outcomes.*"], ["tests/test_claims.py", "tests/test_verdict_engine.py"]),
    "sequential": Module("analysis/sequential.py", ["analysis.sequential.*"], ["tests/test_sequential.py"]),
    "checkpoint": Module("bnsweep/cell.py", ["bnsweep.cell.x_load_checkpoint*", "bnsweep.cell.x_not_its*",
                                             "bnsweep.cell.x_resume_point*", "bnsweep.cell.x_has_result*"],
                         ["tests/test_checkpoint.py", "tests/test_checkpoint_known.py"]),
    "lock": Module("bnsweep/lock.py", ["bnsweep.lock.*"], ["tests/test_lock.py", "tests/test_lock_known.py"]),
    "norms": Module("bnsweep/norms.py", ["bnsweep.norms.*"], ["tests/test_norms.py"]),
    # the measurements in three parts, each with the fast tests that reach it: the curvature probe's tests and the
    # packed members' tests take seconds each, and every mutant of the session would run them all
    "measure": Module("bnsweep/measure", [f"bnsweep.measure.{m}" for m in ("x_*", "activations.*", "base.*", "ics.*", "landscape.*",
                                                                         "probe.*", "schedule.*", "session.*")],
                      ["tests/test_measure.py", "tests/test_measure_known.py"]),
    "measure_curvature": Module("bnsweep/measure/curvature.py", ["bnsweep.measure.curvature.*"],
                                ["tests/test_measure.py", "tests/test_curvature.py", "tests/test_measure_known.py"]),
    "measure_stacked": Module("bnsweep/measure/stacked.py", ["bnsweep.measure.stacked.*"],
                              ["tests/test_pack_measure.py", "tests/test_measure_known.py"]),
}

# mutmut's exit codes of a mutant's test run -> the report's columns (mutmut/stats.py: status_by_exit_code)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no_tests", 33: "no_tests", 36: "timeout", -24: "timeout",
          24: "timeout", 152: "timeout", 255: "timeout", None: "not_run"}
KILLED = ("killed", "timeout")


def status(code: int | None) -> str:
    return STATUS.get(code, "suspicious")


def prepare(work: Path, files: list[str], tests: list[str]) -> None:
    """`work` as a copy of the checkout whose mutmut settings mutate only `files` and select only `tests`.

    Copies keep their times, so mutmut regenerates (and re-tests) only the files that changed since."""
    for name in COPIED:
        shutil.copytree(ROOT / name, work / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "results", "device-wheels"))
    text = (ROOT / "pyproject.toml").read_text()
    for key, value in (("only_mutate", [f if f.endswith(".py") else f"{f}/*" for f in files]),
                       ("pytest_add_cli_args_test_selection", tests)):
        text, n = re.subn(rf"(?ms)^{key} = \[.*?^\]$|^{key} = \[.*?\]$", f"{key} = {json.dumps(value)}", text)
        assert n == 1, f"pyproject.toml [tool.mutmut] needs one `{key} = [...]`"
    text = re.sub(r"(?m)^also_copy = .*$", "also_copy = []", text)
    (work / "pyproject.toml").write_text(text)


def mutmut(work: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """mutmut in `work` at the lowest priority, one thread per worker (it forks one worker per core)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(["nice", "-n", "19", sys.executable, "-m", "mutmut", *args], cwd=work, env=env, **kw)


def results(work: Path) -> dict[str, int | None]:
    """Every mutant mutmut knows under `work`/mutants, by name, with the exit code of its test run."""
    out: dict[str, int | None] = {}
    for meta in (work / "mutants").rglob("*.py.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def matching(names, patterns: list[str]) -> list[str]:
    return sorted(n for n in names if any(fnmatch(n, p) for p in patterns))


def diff(work: Path, name: str) -> str:
    """The mutant's change (`mutmut show`): its - and + lines."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def summary(m: Module, codes: dict[str, int | None], work: Path, equivalent: dict[str, str]) -> dict:
    """A module's counts, its score and each survivor with its diff and the reason it is kept (null: none)."""
    names = matching(codes, m.functions)
    found = [status(codes[n]) for n in names]
    counts = {k: found.count(k) for k in ("killed", "survived", "timeout", "suspicious", "no_tests", "not_run")}
    run = len(names) - counts["not_run"]
    survivors = [{"name": n, "status": s, "diff": diff(work, n), "why_kept": equivalent.get(n)}
                 for n, s in zip(names, found) if s not in (*KILLED, "not_run")]
    same = sum(is_equivalent(s["why_kept"]) for s in survivors)
    killed = counts["killed"] + counts["timeout"]
    return {"file": m.file, "functions": m.functions, "tests": m.tests, "mutants": run, **counts, "equivalent": same,
            "killed_of_all": round(killed / run, 4) if run else None,
            "score": round(killed / (run - same), 4) if run > same else None, "survivors": survivors}


def is_equivalent(why: str | None) -> bool:
    """A survivor kept as equivalent (no input tells it from the original): its reason starts with 'Equivalent'.

    Such a mutant cannot be killed, so it leaves the score's denominator (Offutt's mutation score); a survivor
    kept as 'not worth a test', or with no reason, counts against the score."""
    return bool(why) and why.startswith("Equivalent")


def rescored(r: dict, equivalent: dict[str, str]) -> dict:
    """A module's last summary with its survivors' reasons and its score from `equivalent` (no copy under .mutation/)."""
    survivors = [{**s, "why_kept": equivalent.get(s["name"])} for s in r["survivors"]]
    same = sum(is_equivalent(s["why_kept"]) for s in survivors)
    killed, run = r["killed"] + r["timeout"], r["mutants"]
    return {**r, "equivalent": same, "killed_of_all": round(killed / run, 4) if run else None,
            "score": round(killed / (run - same), 4) if run > same else None, "survivors": survivors}


def score_table(report: dict) -> list[str]:
    """The per-module table (docs/mutation.md and the README's, between its TABLE_MARKS)."""
    lines = ["| module | file | mutants | killed | timeout | survived | of which equivalent | killed of all | score |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report.items():
        survived = r["mutants"] - r["killed"] - r["timeout"]
        partial = f" (stopped: {r['not_run']} more not run)" if r["not_run"] else ""
        lines.append(f"| {name}{partial} | `{r['file']}` | {r['mutants']} | {r['killed']} | {r['timeout']} | {survived} | "
                     f"{r['equivalent']} | {100 * r['killed_of_all']:.1f} % | **{100 * r['score']:.1f} %** |")
    lines += [f"| {name} | `{m.file}` | not run | | | | | | |" for name, m in MODULES.items() if name not in report]
    return lines


def markdown(report: dict) -> str:
    lines = ["# Mutation testing of the guard rails", "",
             "Written by `make mutation` (bench/mutation.py); the same numbers are in bench/results/mutation.json.", "",
             *score_table(report)]
    lines += ["", "## Surviving mutants", "",
              "Each is equivalent (no input tells it from the original) or not worth a test, for the reason given.", ""]
    for name, r in report.items():
        for s in r["survivors"]:
            lines += [f"### `{s['name']}` ({name}, {s['status']})", "", "```diff", s["diff"], "```", "",
                      s["why_kept"] or "**No reason recorded: this mutant wants a test.**", ""]
    return "\n".join(lines) + "\n"


def write(report: dict) -> None:
    """The JSON report, docs/mutation.md and the README's table, from `report` (module -> summary)."""
    report = {name: report[name] for name in MODULES if name in report}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    DOC.write_text(markdown(report))
    readme = README.read_text()
    start, end = (readme.index(mark) for mark in TABLE_MARKS)
    README.write_text(readme[:start + len(TABLE_MARKS[0])] + "\n" + "\n".join(score_table(report)) + "\n" + readme[end:])


def main(argv: list[str]) -> int:
    if argv == ["--report"]:  # the report again from the results under .mutation/ (after editing the equivalent list)
        equivalent = json.loads(EQUIVALENT.read_text())
        last = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        write({name: summary(m, results(WORK / name), WORK / name, equivalent) if (WORK / name / "mutants").exists()
               else rescored(last[name], equivalent) for name, m in MODULES.items()
               if (WORK / name / "mutants").exists() or name in last})
        return 0
    again = argv[:1] == ["--survivors"]  # only what survived the last run, or was not run (after adding tests, or stopping)
    argv = argv[again:]
    unknown = [m for m in argv if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    equivalent = json.loads(EQUIVALENT.read_text())
    for name in argv or MODULES:  # the report is written after each module: an interrupted run keeps what it did
        m, work = MODULES[name], WORK / name
        prepare(work, [m.file], m.tests)
        names = [n for n, c in results(work).items() if status(c) not in KILLED and matching([n], m.functions)] if again else m.functions
        if names:
            mutmut(work, "run", *names, check=True)
        report[name] = summary(m, results(work), work, equivalent)
        write(report)
        print(f"{name}: {report[name]['mutants']} mutants, {report[name]['killed']} killed, score {report[name]['score']}")
    unexplained = [s["name"] for r in report.values() for s in r["survivors"] if not s["why_kept"]]
    if unexplained:
        print(f"{len(unexplained)} survivors without a reason: see {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
