# pollcat: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-keep test test-fast lint install bench clean

# the product (editable, with its test extra) and, beside it, the simulated facility: its own
# distribution in ./sim (pollcat-sim), never a dependency of pollcat
$(STAMP): pyproject.toml sim/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./sim -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# lint-imports: the layer contracts ([tool.importlinter] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# the whole suite (what CI runs) on 4 xdist workers: it mostly waits on servers and subprocesses;
# tests of one xdist_group (tests/conftest.py) share a worker and run one after another, and the
# longest groups (the real Prefect servers) are queued first
test: $(STAMP) lint
	$(PY) -m pytest -q -n 4 --dist loadgroup --no-loadscope-reorder

# the one-minute loop: the unit tier only (no socket, no process), serially (xdist's start-up
# costs more than it saves here)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m unit

# a real Prefect server + worker; the schedule delivers the demo downloads, then all stops
demo: $(STAMP)
	$(PY) scripts/demo.py

# the same, but server, worker and simulated facility stay up until Ctrl-C (explore the UI)
demo-keep: $(STAMP)
	$(PY) scripts/demo.py --keep

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) demo-output .pytest_cache
