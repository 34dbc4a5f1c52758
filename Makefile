# One command sets everything up and runs the job: `make train` (a default training run) or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
ARGS ?=
# PyTorch's CPU wheels: torch==2.13.0 matches their 2.13.0+cpu, which pip ranks above PyPI's CUDA build
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup train test lint

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt --extra-index-url $(TORCH_INDEX) torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) train.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest
