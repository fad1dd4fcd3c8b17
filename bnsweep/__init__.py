"""bnsweep: sweeps of normalisation variants x learning rates x seeds, after Santurkar et al. 2018.

Run a sweep:   python -m bnsweep run sweeps/quickstart.yaml
Check a spec:  python -m bnsweep validate sweeps/lr_grid.yaml
"""

__version__ = "0.1.0"
