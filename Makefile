# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test protos

$(BIN)/kdmkb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/kdmkb

install: $(BIN)/kdmkb

demo: install
	$(BIN)/kdmkb demo --report kdmkb-demo-report.json

# Ray advertises the machine's interface address even when told 127.0.0.1, so the suite runs
# in a fresh network namespace where only loopback exists (see README, "Tests").
test: install
	scripts/loopback-only $(BIN)/python -m pytest -q

protos: install
	$(BIN)/python -m protos.generate
