"""Analysis of bnsweep outputs: Polars computes, Altair draws.

    from analysis import load, summaries, claims, figures, report, query
    tables = load.tables("runs/quickstart", "quickstart")      # {name: LazyFrame}
    rob = summaries.lr_robustness(tables["cells"], tables["evals"])
    summaries.robust_range(rob)                                 # best lr, robust range in decades
    chart, data = figures.build("lr_robustness", tables)
    report.write("runs/quickstart")                             # runs/quickstart/reports/<sweep>/report.html
"""
