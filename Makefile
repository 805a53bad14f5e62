# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install tools demo test protos

$(BIN)/kdmkb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,text]'
	touch $(BIN)/kdmkb

install: $(BIN)/kdmkb

# A real Prometheus server and promtool for the monitoring tests and `kdmkb cluster`: Debian's
# package, unpacked into the project (self-contained binaries; nothing is installed system-wide).
TOOLS := .tools
PROMETHEUS := $(TOOLS)/prometheus/usr/bin/prometheus

$(PROMETHEUS):
	rm -rf $(TOOLS)/prometheus $(TOOLS)/download && mkdir -p $(TOOLS)/download
	cd $(TOOLS)/download && { apt-get download prometheus || { apt-get update && apt-get download prometheus; }; }
	dpkg -x $(TOOLS)/download/prometheus_*.deb $(TOOLS)/prometheus
	rm -rf $(TOOLS)/download
	touch $@

tools: $(PROMETHEUS)

demo: install
	$(BIN)/kdmkb demo --report kdmkb-demo-report.json

# Ray advertises the machine's interface address even when told 127.0.0.1, so the suite runs
# in a fresh network namespace where only loopback exists (see README, "Tests").
test: install tools
	scripts/loopback-only $(BIN)/python -m pytest -q

protos: install
	$(BIN)/python -m kdmkb.protos.generate

# The compose cluster end to end (tests/e2e): as root it installs Docker from Debian's packages,
# builds the images offline and runs the test outside the loopback-only namespace, since the
# cluster needs the engine's bridge network (deploy/README.md).
e2e: install tools
	tests/e2e/stage.sh
