# Set-up and everyday commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Runs here and in CI are offline: no telemetry, no usage reports.
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast gpu-check lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision first, pinned to the CPU/CUDA wheels this machine's pip serves
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fedper.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

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
