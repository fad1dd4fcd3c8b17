"""Start-up time of `bnsweep ls` and `bnsweep query`, each a fresh process, against importing torch.

    python bench/startup.py [--repeats 5]

The output is synthetic, in the real layout, of the quickstart's size (100 cells with 3,000 steps
rows each and every measurement table, bench/report_query.py's generator). Each command runs in a
new Python process, as a user runs it; the figure is the median wall time of --repeats runs, with
`python -c "import torch"` measured alongside as the reference a torch-importing command would pay.
Results: bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report_query import synthesise  # noqa: E402
from bnsweep.console import text_table  # noqa: E402


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/out"
        synthesise(out, 300_000)
        commands = {
            "bnsweep ls": [sys.executable, "-m", "bnsweep", "ls", out],
            "bnsweep query (group by over steps)": [sys.executable, "-m", "bnsweep", "query", out,
                                                    "SELECT arch, norm, count(*) AS n FROM steps GROUP BY ALL"],
            'python -c "import torch" (reference)': [sys.executable, "-c", "import torch"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeats):  # alternate, so drift in machine load hits every command alike
            for name, argv in commands.items():
                times[name].append(wall(argv))
    rows = [{"command": k, "median s": f"{statistics.median(v):.2f}", "min s": f"{min(v):.2f}", "max s": f"{max(v):.2f}",
             "runs": len(v)} for k, v in times.items()]
    print(text_table(rows))
    Path(ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/startup.json").write_text(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
