# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install tools node demo test protos

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

# The Node.js example's packages (tests/integration/test_node_client.py), installed here, outside
# the loopback-only namespace the tests run in; skipped where npm is missing (the test skips too).
NODE_MODULES := examples/node/node_modules/.package-lock.json

$(NODE_MODULES): examples/node/package-lock.json
	if command -v npm >/dev/null; then cd examples/node && npm ci --ignore-scripts --no-audit --no-fund; fi

node: $(NODE_MODULES)

demo: install
	$(BIN)/kdmkb demo --report kdmkb-demo-report.json

# Ray advertises the machine's interface address even when told 127.0.0.1, so the suite runs
# in a fresh network namespace where only loopback exists (see README, "Tests").
test: install tools node
	scripts/loopback-only $(BIN)/python -m pytest -q

protos: install
	$(BIN)/python -m kdmkb.protos.generate

# The compose cluster end to end (tests/e2e): as root it installs Docker from Debian's packages,
# builds the images offline and runs the test outside the loopback-only namespace, since the
# cluster needs the engine's bridge network (deploy/README.md).
e2e: install tools
	tests/e2e/stage.sh
