# semiseg: `make demo` and `make test` each set up .venv (if missing) and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semiseg-installed
PYTEST_WORKERS ?= 2

.PHONY: install configs demo test bench package lint clean verify test-torchrun test-release label label-install label-test

$(STAMP): pyproject.toml constraints-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints-dev.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# Regenerate bundles/*/configs from templates/bundle + bundles/<name>/overlay.json (the test suite checks drift).
configs: $(STAMP)
	$(PY) -m semiseg.bundle_config

# SCENARIO=two_site: labels from one scanner, unlabelled and test images from another (docs/data.md).
SCENARIO ?= default
demo: $(STAMP)
	$(PY) scripts/run_demo.py --scenario $(SCENARIO)

# The 15-minute suite; the slow end-to-end checks below (markers torchrun, release) are CI steps of their own.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15 -m "not torchrun and not release" tests

# Every bundle: verify_metadata (offline, schemas/), verify_net_in_out, ckpt_export + eager-vs-TorchScript check.
verify: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m semiseg.verify

# Every bundle's multi_gpu_train.json under torchrun --nproc_per_node=2 (gloo on CPU), ~30 s per bundle.
test-torchrun: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m torchrun --durations=15 tests/bundles/test_torchrun_all.py

# Every bundle's released zip in a fresh venv with MONAI alone, downloaded over HTTP from 127.0.0.1 (~1 GB venv).
test-release: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m release --durations=15 tests/bundles/test_release.py

# Benchmarks write JSON to results/bench/ (docs/benchmarks.md); QUICK=1 runs small sizes only (a few minutes on CPU).
bench: $(STAMP)
ifeq ($(QUICK),1)
	$(PY) scripts/bench/bench_iteration.py --iterations 4 --rounds 1
	$(PY) scripts/bench/bench_methods.py --quick
	$(PY) scripts/bench/bench_loader.py --sizes 20 200 --batches 20
else
	$(PY) scripts/bench/bench_iteration.py
	$(PY) scripts/bench/bench_methods.py --roi 48 64
	$(PY) scripts/bench/bench_methods.py --bundles mean_teacher --roi 48 64 96 128 --iterations 3 --warmup 1 \
		--rounds 1 --out results/bench/scaling.json
	$(PY) scripts/bench/bench_loader.py --sizes 20 200 2000
endif

# Packs every bundle with trained weights (results/demo/<m> from `make demo`, or bundles/<m>/models) and lists the
# ones skipped; fails only when none has. PACKAGE_ARGS=mean_teacher packs one; --allow-no-weights packs without.
package: $(STAMP)
	$(PY) scripts/package_bundles.py $(PACKAGE_ARGS)

# MONAI Label (docs/monailabel.md): its own venv and pins (constraints-label.txt, also for the isolated builds of
# source packages, hence PIP_CONSTRAINT), never the dev ones. `make label STUDIES=<dir>` serves every bundle on
# 127.0.0.1:8000 (a demo studies folder is written first when STUDIES does not exist); `make label-test` is CI's
# MONAI Label step (tests/monailabel, not part of `make test`).
LABEL_VENV ?= .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STAMP := $(LABEL_VENV)/.semiseg-label-installed
STUDIES ?= runs/label_studies
LABEL_HOST ?= 127.0.0.1
LABEL_PORT ?= 8000
LABEL_CONF ?=

$(LABEL_STAMP): pyproject.toml constraints-label.txt
	@test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints-label.txt SAM2_BUILD_CUDA=0 $(LABEL_PY) -m pip install --quiet \
		--disable-pip-version-check -e ".[label,dev]"
	@touch $(LABEL_STAMP)

label-install: $(LABEL_STAMP)

# The server replaces the recipe's shell (exec), so the SIGTERM make passes to its child reaches it and stops it.
label: $(LABEL_STAMP)
	@test -d $(STUDIES) || $(LABEL_PY) scripts/monailabel_app/make_studies.py $(STUDIES)
	export PATH=$(abspath $(LABEL_VENV))/bin:$$PATH; exec $(LABEL_PY) -m monailabel.main start_server \
		--app scripts/monailabel_app --studies $(STUDIES) --host $(LABEL_HOST) --port $(LABEL_PORT) $(LABEL_CONF)

label-test: $(LABEL_STAMP)
	OMP_NUM_THREADS=2 $(LABEL_PY) -m pytest -v -p no:cacheprovider tests/monailabel/monailabel_integration.py

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check shared scripts tests

clean:
	rm -rf results dist bundles/*/models bundles/*/eval
