# `make quickstart` and `make test` set up .venv on first use, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test test-fast lint mutation bench bench-report bench-gpu device-check device-wheels clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` would fetch the newest (multi-GB) build
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

quickstart: setup
	$(BIN)/python -m bnsweep run sweeps/quickstart.yaml

test: setup
	$(BIN)/python -m pytest

# the quick signal while working: no Ray, no browser, no SLURM, nothing marked slow
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not ray and not browser and not slurm and not gpu"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/vulture  # dead code; settings and the framework-called names: pyproject.toml [tool.vulture]

# mutation testing of the guard rails (mutmut, at nice 19): bench/results/mutation.json and docs/mutation.md;
# MODULES="compare lock" runs only those (the names are in bench/mutation.py), the report keeps the others' last results
mutation: setup
	$(BIN)/python bench/mutation.py $(MODULES)

bench: setup
	$(BIN)/python bench/overhead.py

bench-report: setup
	$(BIN)/python bench/report_query.py

bench-gpu: setup
	$(BIN)/python bench/gpu.py

# on the GPU host itself (its own Python, no venv): bench/gpu.py and the GPU tests, results under $$OUT;
# CHECK="--device cpu --tiny" runs the same path on any machine
device-check:
	bash bench/device_check.sh $(CHECK)

# Pydantic and its dependencies as CPython 3.12 manylinux wheels, for a GPU host without Pydantic or network
DEVICE_WHEELS := bench/device-wheels
device-wheels: setup
	rm -rf $(DEVICE_WHEELS).tmp
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		-d $(DEVICE_WHEELS).tmp -r bench/device-requirements.txt
	rm -rf $(DEVICE_WHEELS) && mv $(DEVICE_WHEELS).tmp $(DEVICE_WHEELS)

clean:
	rm -rf runs $(VENV)
