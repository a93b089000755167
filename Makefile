# LayerFusion: two commands do everything (`make demo`, `make test`); each sets itself up first.
# `make test` is the quick run (everything but the tests marked slow); `make test-all` runs every test
# and sets the browser tier and the editors up first (`make browser`, `make editors`); CI runs `make lint` and
# `make test-all` (.ci/run).
PYTHON ?= python3
VENV_PY := .venv/bin/python
PYTEST_ARGS ?=
DOWNLOAD_ARGS ?= --list

.PHONY: setup browser editors lint test test-all test-unit test-integration test-e2e demo toy-world toy-measure toy-probe bench bench-gpu serve download clean

setup:
	@$(PYTHON) -m layerfusion_dev.bootstrap setup

browser:
	@$(PYTHON) -m layerfusion_dev.bootstrap browser

lint: setup
	$(VENV_PY) -m ruff check .

test: setup
	$(VENV_PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup browser editors
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(VENV_PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: setup
	$(VENV_PY) -m pytest -m integration $(PYTEST_ARGS)

test-e2e: setup browser
	$(VENV_PY) -m pytest -m e2e $(PYTEST_ARGS)

demo: setup
	$(VENV_PY) -m layerfusion_dev.demo $(DEMO_ARGS)

# The toy world (layerfusion_dev/toy_world): train its files (seeded, resumable, under 45 minutes on 2 cores),
# measure LayerFusion on it against blending off (bench/toy_world/), and see where its priors sit per block (probe).
toy-world: setup
	$(VENV_PY) -m layerfusion_dev.toy_world.train $(TOY_ARGS)

toy-measure: setup
	$(VENV_PY) -m layerfusion_dev.toy_world.measure $(TOY_ARGS)
	$(VENV_PY) -m layerfusion_dev.toy_world.measure --toy-settings --out bench/toy_world/toy_settings $(TOY_ARGS)

toy-probe: setup
	$(VENV_PY) -m layerfusion_dev.toy_world.probe $(TOY_ARGS)

bench: setup
	$(VENV_PY) -m layerfusion_dev.bench $(BENCH_ARGS)

# On a machine with an NVIDIA GPU: the real size, one process, under 6 minutes (layerfusion_dev/bench_gpu.py).
BENCH_GPU_OUT ?= bench/gpu
bench-gpu: setup
	$(VENV_PY) -m layerfusion_dev.bench_gpu --out $(BENCH_GPU_OUT) $(BENCH_GPU_ARGS)

# Debian's GIMP and Krita (as root: apt-get), for the slow test that flattens Save Layers' files in them.
editors:
	@$(PYTHON) -m layerfusion_dev.bootstrap editors

serve: setup
	$(VENV_PY) -m layerfusion_dev.serve $(SERVE_ARGS)

download: setup
	$(VENV_PY) scripts/download_models.py $(DOWNLOAD_ARGS)

clean:
	rm -rf .venv .cache output .pytest_cache
