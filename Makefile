# mlx-opd developer tasks. `make test` and `make demo` work on a fresh clone: they run
# `make setup` first when the virtual environment is missing or out of date.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
RUNTIME := $(VENV)/.runtime-stamp
UNAME_S := $(shell uname -s)

.PHONY: setup blas browser test test-numerics test-engines demo demo-check bench lint clean

setup: $(STAMP)

# What the commands need (the demo's set-up: no torch, ms-swift or hydra) ...
$(RUNTIME): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@$(MAKE) --no-print-directory blas
	@touch $(RUNTIME)

# ... and what the tests add (the dev extra: the engines' own readers, torch, the browser
# driver)
$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# On Linux, MLX's CPU wheel links a reference BLAS; mlx_opd preloads OpenBLAS when present
# (25-35x faster fp32 matmul). Installs Debian's libopenblas0-pthread where apt is available.
blas:
ifeq ($(UNAME_S),Linux)
	@if ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then \
	  echo "OpenBLAS present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
	  && echo "installed libopenblas0-pthread"; \
	else \
	  echo "warning: no apt-get; install OpenBLAS yourself or set MLX_OPD_BLAS=/path/to/libblas.so"; \
	fi
endif

# The result pages and the studio are loaded in a real browser by the tests: Debian's
# Chromium and its chromedriver.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "Chromium present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
	  && echo "installed chromium and chromium-driver"; \
	else \
	  echo "warning: no apt-get; install Chromium yourself for the page tests"; \
	fi

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The rounding-sensitive tests again under the reference BLAS and under another OpenBLAS
# kernel family with one thread: a result that holds on one machine only fails here. All
# run on one thread, so they run side by side, each with its log in runs/: the reference
# BLAS in two parts (test_synth_eval.py builds the demo's base, 6 of its 10 minutes),
# Prescott in one. The target prints the tails and fails if any run does.
NUMERICS := HF_HUB_OFFLINE=1 $(PY) -m pytest -m numerics -p no:cacheprovider
test-numerics: $(STAMP) browser
	@mkdir -p runs
	@MLX_OPD_NO_BLAS=1 $(NUMERICS) tests/test_synth_eval.py \
	  > runs/numerics-reference-blas-demo.log 2>&1 & a=$$!; \
	MLX_OPD_NO_BLAS=1 $(NUMERICS) --ignore=tests/test_synth_eval.py \
	  > runs/numerics-reference-blas.log 2>&1 & b=$$!; \
	OPENBLAS_CORETYPE=Prescott OPENBLAS_NUM_THREADS=1 $(NUMERICS) \
	  > runs/numerics-prescott.log 2>&1; c=$$?; \
	wait $$a; a=$$?; wait $$b; b=$$?; \
	tail -n 4 runs/numerics-reference-blas-demo.log runs/numerics-reference-blas.log \
	  runs/numerics-prescott.log; \
	test $$a -eq 0 && test $$b -eq 0 && test $$c -eq 0

# The engines run for real: ms-swift (and what its launch script needs) in a virtual
# environment of its own (tests/engines/requirements-swift.txt), then the generated
# script trains 2 steps on the CPU (tests/test_swift_run.py).
ENGINES       := .venv-engines
ENGINES_STAMP := $(ENGINES)/.installed-stamp

$(ENGINES_STAMP): tests/engines/requirements-swift.txt
	@test -x $(ENGINES)/bin/python || $(PYTHON) -m venv $(ENGINES)
	$(ENGINES)/bin/python -m pip install -q --upgrade pip
	$(ENGINES)/bin/python -m pip install -q -r tests/engines/requirements-swift.txt
	@touch $(ENGINES_STAMP)

test-engines: $(STAMP) $(ENGINES_STAMP)
	HF_HUB_OFFLINE=1 MLX_OPD_ENGINE_BIN=$(CURDIR)/$(ENGINES)/bin $(PY) -m pytest -m engine_run

demo: $(RUNTIME)
	HF_HUB_OFFLINE=1 $(VENV)/bin/mlx-opd demo --out runs/demo

# The full demo under another numeric configuration; fails when it misses its targets
# (.ci/run runs it alongside the tests; docs/demo.md).
demo-check: $(RUNTIME)
	HF_HUB_OFFLINE=1 OPENBLAS_CORETYPE=Prescott OPENBLAS_NUM_THREADS=1 $(VENV)/bin/mlx-opd demo --out runs/demo-check --check

bench: $(STAMP)
	$(PY) benchmarks/blas.py --json runs/bench/blas.json
	$(PY) benchmarks/loss.py --json runs/bench/loss.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/train_step.py --json runs/bench/train_step.json
	$(PY) benchmarks/distributed.py --json runs/bench/distributed.json
	$(PY) benchmarks/report.py runs/bench > runs/bench/report.md

lint: $(STAMP)
	$(VENV)/bin/ruff check mlx_opd tests benchmarks

clean:
	rm -rf $(VENV) $(ENGINES) runs .pytest_cache
