# The two set-up commands of the README:  `make demo`  and  `make test`.
# TORCH_SPEC picks the PyTorch build; override it for your platform, e.g.
#   make demo TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: install demo test test-all docs bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## install, then run the whole workflow on the embedded real data
	$(BIN)/storm-st demo --output storm_demo

test: install  ## install, then run the test suite (slow tests excluded)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: install
	$(BIN)/python -m pytest -q

docs: install
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	$(BIN)/python -m sphinx -b html -W --keep-going docs docs/_build/html

bench-quick: install
	$(BIN)/python benchmarks/run.py --suite quick

clean:
	rm -rf $(VENV) storm_demo docs/_build
