# mdctr: `make demo` and `make test` install .venv when it is missing, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mdctr-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard mdctr/csrc/*) requirements/cpu.txt requirements/torch-cpu.txt requirements/constraints.txt scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh

demo: install
	$(PY) -m mdctr.demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	@for b in benchmarks/[!_]*.py; do \
	  case $$b in */external_ctr.py) echo "== $$b: not run (an external library: pip install deepctr-torch scikit-learn, then run it by hand)"; continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
