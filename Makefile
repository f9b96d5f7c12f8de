# semiseg: `make demo` and `make test` each set up .venv (if missing) and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semiseg-installed
PYTEST_WORKERS ?= 2

.PHONY: install configs demo test bench package lint clean

$(STAMP): pyproject.toml constraints-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints-dev.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# Regenerate bundles/*/configs from templates/bundle + bundles/<name>/overlay.json (the test suite checks drift).
configs: $(STAMP)
	$(PY) -m semiseg.bundle_config

demo: $(STAMP)
	$(PY) scripts/run_demo.py

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15 tests

bench: $(STAMP)
	$(PY) scripts/bench/bench_iteration.py

package: $(STAMP)
	$(PY) scripts/package_bundles.py

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check shared scripts tests

clean:
	rm -rf results dist bundles/*/models bundles/*/eval
