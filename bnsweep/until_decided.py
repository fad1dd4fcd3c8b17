"""`bnsweep run SPEC --until-decided [--max-seeds N]`: add seeds in rounds until every claim is decided.

    round 0: run the spec's cells (as `run`); verdicts at look 0
    round k: for each claim still short of seeds (inconclusive: too few seeds, or contradicted by a
             secondary), add `step` seeds to the two groups of its primary comparison; run them; look k

The looks and their levels are analysis/sequential.py's Design: first = the spec's seeds per group,
step = the same, max = --max-seeds (default 4 x first), each look at its share of alpha, so that
the verdicts hold their error rate under this optional stopping. The design is written to the
output before round 0 and `report` applies it. Added seeds are ordinary cells (seed = one past the
spec's largest, counting up), so a later `run` or `report` sees them, and everything is
deterministic from the stored results: after Ctrl-C the same command recomputes the looks reached
from the tables, re-creates the same cells (same cell ids) and runs only those without a result.
A claim whose primary comparison is absent or not informative gets no seeds: more seeds would not
revive a dead or diverged side.
"""

from __future__ import annotations

import json
import sys

from analysis.settings import DEFAULT
from analysis.verdicts import CONTRADICTED_BY, TOO_FEW
from bnsweep.errors import UserError
from bnsweep.spec import CellConfig

NEEDS_SEEDS = (TOO_FEW, CONTRADICTED_BY)  # the undecided verdicts that more seeds can settle


def with_seed(cell: CellConfig, seed: int) -> CellConfig:
    """The same cell at another seed (a new cell id), through the JSON the workers read."""
    return CellConfig.model_validate_json(json.dumps({**json.loads(cell.model_dump_json()), "seed": seed}))


def seeds_per_group(cells: list[CellConfig]) -> int:
    """The spec's seeds per (arch, norm, lr) group: the fewest, so that every group reaches each look."""
    groups: dict[tuple, set[int]] = {}
    for c in cells:
        groups.setdefault((c.arch, c.norm, c.lr), set()).add(c.seed)
    return min(len(s) for s in groups.values())


def _judged(output: str, sweep: str, cells: list[CellConfig], design):
    """Each claim's sequential verdict on the cells run so far."""
    import polars as pl

    from analysis import claims, groups, load, outcomes, sequential, smoothness
    from analysis.declared import CLAIMS

    ids = [c.cell_id for c in cells]
    tables = {k: t.filter(pl.col("cell_id").is_in(ids)) for k, t in load.tables(output, sweep).items()}
    tables["cells"] = groups.label(tables["cells"])
    data = claims.Data(outcomes.per_cell(tables["cells"], tables["evals"]), smoothness.per_cell(tables))
    return [sequential.decide(spec, lambda n, alpha, spec=spec: claims.rows(spec, data.first(n), alpha), design)
            for spec in CLAIMS.values()]


def _more(found, cells: list[CellConfig], spec_seeds: list[int], target: int) -> list[CellConfig]:
    """For each claim that more seeds can settle: its primary's two groups, filled up to `target` seeds."""
    base = max(spec_seeds) + 1
    have: dict[tuple, set[int]] = {}
    for c in cells:
        have.setdefault((c.arch, c.norm, c.lr), set()).add(c.seed)
    new, seen = [], {c.cell_id for c in cells}
    for v in found:
        if v.code not in NEEDS_SEEDS or not v.rows or v.rows[0].role != "primary":
            continue
        p = v.rows[0]
        for norm in (p.declared.a, p.declared.b):
            group = (p.key.arch, norm, p.key.lr)
            template = next(c for c in cells if (c.arch, c.norm, c.lr) == group)
            seed = base
            while len(have[group]) < target:
                cell = with_seed(template, seed)
                if seed not in have[group] and cell.cell_id not in seen:
                    have[group].add(seed)
                    seen.add(cell.cell_id)
                    new.append(cell)
                seed += 1
    return new


def run(spec, cells: list[CellConfig], max_seeds: int | None, run_cells) -> int:
    """Rounds of `run_cells(cells) -> Outcome` (the plain run) until every claim is decided or max_seeds is reached."""
    from analysis import sequential
    from bnsweep.records import Store

    first = seeds_per_group(cells)
    design = sequential.Design(first, first, max_seeds if max_seeds is not None else 4 * first)
    if design.max_seeds < first:
        raise UserError(f"--max-seeds {design.max_seeds}: the spec already has {first} seeds per group; give at least {first}")
    store = Store(spec.output)
    old = sequential.read_design(store, spec.name)
    if old is not None and old != design:
        raise UserError(f"sweep {spec.name} was run --until-decided with looks at {old.looks()} seeds; this command's "
                        f"design gives {design.looks()}: changing it would void the error control (use --max-seeds "
                        f"{old.max_seeds} and the same spec seeds)")
    sequential.write_design(store, spec.name, design)
    spec_seeds = sorted({c.seed for c in cells})
    todo = list(cells)
    for k, n in enumerate(design.looks()):
        outcome = run_cells(todo)
        if outcome.interrupted:
            from bnsweep import interrupt

            print("stopped: run the same command again to continue from the seeds already run", file=sys.stderr)
            return interrupt.status()
        if outcome.failed:
            print(f"{outcome.failed} cells failed; run again to retry them before the next look", file=sys.stderr)
            return 1
        found = _judged(spec.output, spec.name, todo, design)
        print(f"\nlook {k} (up to {n} seeds per group, alpha {design.alphas(DEFAULT.alpha)[k]:.4f} per one-sided test):")
        for v in found:
            print(f"  {v.spec.id}: {v.verdict}" + (f" ({v.reason})" if v.code else ""))
        if k + 1 == len(design.looks()):
            break
        more = _more(found, todo, spec_seeds, design.looks()[k + 1])
        if not more:
            break
        print(f"round {k + 1}: {len(more)} cells, seeds added to the groups of "
              f"{sum(v.code in NEEDS_SEEDS for v in found)} undecided claims")
        todo += more
    return 0
