# Set-up is part of every target, so a fresh clone needs one command per job.
PYTHON ?= python3
# The CPU build of torch; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint bench

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[all]"

demo: install
	ltbm demo

test: install
	$(PYTHON) -m pytest -q

lint: install
	ruff check src tests benchmarks scripts
	ruff format --check src tests benchmarks scripts

bench: install
	$(PYTHON) benchmarks/methods.py --repeats 3 --budget-s 10 --out benchmarks/results/methods.json
