"""Analysis of bnsweep outputs: Polars computes, Altair draws.

    from analysis import load, summaries
    cells, evals = load.table(output, "cells"), load.table(output, "evals")
    summaries.final_metrics(cells, evals)
"""
