# gluon-lcnn: `make demo` runs the main job on real data, `make test` runs the tests.
# Both install first (idempotent; a cold install builds horovod: ~10 min on 2 cores).
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1
export MXNET_SUBGRAPH_VERBOSE := 0

.PHONY: install test demo bench results op clean

install:
	bash tools/install.sh

op: install
	$(PY) -m gluon_lcnn.ops.build --force

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/demo.py

bench: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_models.py --model alexnet_lcnn_fast alexnet_lcnn_accurate --density published

results: install
	$(PY) tools/results.py

clean:
	rm -rf build *.egg-info gluon_lcnn/ops/*.so .pytest_cache
