# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
ARGS ?=

.PHONY: run test test-slow lint install bench gpu-check data clean-outputs docs

$(BIN)/advlab-train: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import advlab.apps.train"
	# torchattacks: test-only reference implementation, installed without its pinned dependencies
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "torchattacks>=3.5" 2>&1 | grep -v "is ignored" || true
	# pyautoattack: the AutoAttack authors' code (fra31/auto-attack), test-only reference, also without its pins
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "pyautoattack==0.2.0" 2>&1 | grep -v "is ignored" || true
	touch $@

install: $(BIN)/advlab-train

run: install
	$(BIN)/advlab-train $(ARGS)

# ruff: pyflakes, syntax errors and lines over 160 (pyproject.toml [tool.ruff])
lint: install
	$(BIN)/ruff check src tests benchmarks

# two pytest-xdist workers (one per core of the CI machine), each file on one worker so that its
# module fixtures (trained models) are built once; `make test ARGS="-n 0"` runs them in one process
test: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

# the documentation site into site/ (git-ignored); --strict: a broken link or anchor fails the build.
# The docs extra (mkdocs-material, mkdocstrings) is installed into .venv the first time.
$(BIN)/mkdocs: pyproject.toml $(BIN)/advlab-train
	$(BIN)/pip install -q --disable-pip-version-check -e ".[docs]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	test -x $@ && touch -c $@

docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test-slow: install data
	$(BIN)/python -m pytest -q -m slow

# what a GPU machine gives (PGD vs torchattacks, Lightning vs plain, D_rand, DDP): ≤ 8 min on one GPU;
# `make gpu-check ARGS=--quick` runs it in seconds (also on CPU: ARGS="--quick --device cpu")
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

data: install
	$(BIN)/advlab-data --shared $(SHARED) --data data

bench: install
	$(BIN)/python benchmarks/bench_attacks.py
	$(BIN)/python benchmarks/bench_lightning.py
	$(BIN)/python benchmarks/bench_mutual_information.py

clean-outputs:
	rm -rf outputs/train outputs/*/ multirun
