# Two commands: `make test` and `make book`. Each creates .venv if missing,
# installs what it needs, and runs. Both work offline once packages are installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test test-fast test-cudasim book bench clean help

help:
	@echo "make test   - set up .venv and run the whole test suite (CUDA simulator included)"
	@echo "make book   - set up .venv and build the executed book into book/_build/html"
	@echo "make bench  - run the benchmarks (tables and plots into benchmarks/results)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip >/dev/null
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
	$(PY) benchmarks/bench_scan.py

clean:
	rm -rf book/_build .pytest_cache
