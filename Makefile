# Two entry points (see README):  make run   (the search on the built-in dataset)
#                                 make test  (the test suite)
# Needs only python3.11 and make; everything else is installed into .venv from the registry.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
CORES  ?= 2

.PHONY: setup run test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results/stage1 results/stage2 results/final results/transfer results/data results/analysis \
	       results/logs results/benchmarks results/report.html .snakemake
