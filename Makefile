# pollcat: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-keep test lint install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q

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
