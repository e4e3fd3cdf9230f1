# kimi-vl-server — the README's commands live here.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast bench lint

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(PY) -m server $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q --durations=30 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.fused_moe
	$(PY) benchmarks/vision.py
	$(PY) benchmarks/serve.py

lint: $(STAMP)
	$(PY) -m ruff check server kernels tests benchmarks
	$(PY) -m ruff format --check server kernels tests benchmarks
	$(PY) -m mypy server kernels tests benchmarks
