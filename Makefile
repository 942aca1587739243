# Two commands: `make test` and `make book`. Each creates .venv if missing,
# installs what it needs, and runs. Both work offline once packages are installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Numba's on-disk cache (the kernels' cache=True) is invalidated when a kernel's own file
# changes, not when a function it calls from another file does (Numba's documentation,
# "Cache invalidation"): after an edit of fast/_fastexp.py the kernels of fast/numba_cpu.py
# would run the old exponential.  So every target compiles into a cache directory named
# after the sources of the compiled code; one set by the caller wins.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache/$(shell cat fast/*.py fast/*/*.py | cksum | cut -d" " -f1)

.PHONY: test test-fast test-cudasim book bench gpu-check clean help

help:
	@echo "make test   - set up .venv and run the whole test suite (CUDA simulator included)"
	@echo "make book   - set up .venv and build the executed book into book/_build/html"
	@echo "make bench  - run the benchmarks (tables and plots into benchmarks/results)"
	@echo "make gpu-check - on a machine with a CUDA GPU: GPU tests, GPU benchmarks, a short GPU training run"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip "setuptools>=77" >/dev/null  # 77: pyproject's SPDX license
	$(PY) -m pip install -e ".[test,book,experiments]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not cudasim"
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m cudasim tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not cudasim"

book: $(STAMP)
	$(PY) book/setup_mathjax.py
	$(VENV)/bin/jupyter-book build book --all -W --keep-going
	$(PY) book/check_html.py book/_build/html

bench: $(STAMP)
	$(PY) -m fast.bench.scan

clean:
	rm -rf book/_build .pytest_cache .numba_cache

# On a machine with an NVIDIA GPU: install the gpu extra, run the real-GPU tests, the CUDA scan
# and training-step benchmarks and a short training run; write benchmarks/results/gpu_*.json.
gpu-check: $(STAMP)
	@if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
		echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none); nothing to check."; exit 0; fi; \
	$(PY) -m pip install -q -e ".[gpu]" && $(PY) -m fast.bench.gpu_check
