# Set-up and everyday commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Runs here and in CI are offline: no telemetry, no usage reports.
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install lock demo test test-fast gpu-check lint clean

TORCH := "torch==2.14.1" "torchvision==0.29.1"
TORCH_DEFAULT := $(BIN)/pip install $(TORCH) || $(BIN)/pip install torch torchvision
# Without a GPU (no nvidia-smi), torch's CPU build from PyTorch's own index; where that index
# cannot be reached, the default build (with CUDA). TORCH_INDEX= always takes the default,
# TORCH_INDEX=<url> another index (e.g. https://download.pytorch.org/whl/cu126).
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi),,https://download.pytorch.org/whl/cpu)
# Every other package at the version it was tested with (requirements.lock, CPython 3.11);
# other Pythons, or LOCK=, resolve the ranges of pyproject.toml anew.
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK ?= $(if $(filter 3.11,$(PYTHON_VERSION)),requirements.lock)

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make install: $(PYTHON) is Python $(PYTHON_VERSION); fedper needs 3.11 or newer (as Flower 1.42 does): give PYTHON=<a python3.11 or newer>")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	@echo "== torch and torchvision (the largest part: see README, Install) =="
	$(if $(TORCH_INDEX),$(BIN)/pip install --retries 1 --timeout 30 --index-url $(TORCH_INDEX) $(TORCH) || { echo "== not from $(TORCH_INDEX): the default build =="; $(TORCH_DEFAULT); },$(TORCH_DEFAULT))
	@echo "== fedper and the rest$(if $(LOCK), at the versions of $(LOCK)) =="
	$(BIN)/pip install $(if $(LOCK),--constraint $(LOCK)) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# After a change of dependencies: `rm -rf .venv && make install LOCK= && make lock`, then test.
lock: $(STAMP)
	( echo "# Exact versions of a tested install (CPython 3.11, Linux): make install uses them as" \
	  && echo "# constraints. Written by 'make lock'; torch's build label (+cpu, +cu130) left off." \
	  && $(BIN)/pip freeze --exclude-editable | sed 's/^\(torch[a-z]*==[^+]*\)+.*/\1/' ) > requirements.lock

demo: $(STAMP)
	$(BIN)/python -m fedper.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30   # the 30 slowest tests, to keep the suite short

# Everything but the tests that start Ray, servers or `python -m fedper.main` (CI runs all).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# On a GPU host, the whole GPU path in one command: the CUDA-only tests (which `make test`
# skips where no GPU is visible), then the benchmark's GPU preset: a 2-round MobileNet-v1 at
# 224 px printing the GPU, images/s of the federated run and of the plain loop, and whether
# bf16 and channels_last were on.
gpu-check: $(STAMP)
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device is visible to torch')"
	$(BIN)/python -m pytest -q -m cuda -rs
	$(BIN)/python -m fedper.bench bench=gpu

lint: $(STAMP)
	$(BIN)/ruff check fedper tests hydra_plugins && $(BIN)/ruff format --check fedper tests hydra_plugins

clean:
	rm -rf outputs multirun client_states
