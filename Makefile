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

# Until the data and solver issues land, the demo times LeNet and CaffeNet layer by layer.
demo: install
	$(BIN)/caffeish time -model models/lenet/lenet_deploy.prototxt -phase TEST -iterations 10
	$(BIN)/caffeish time -model models/caffenet/deploy.prototxt -phase TEST -iterations 2

bench: install
	$(BIN)/python bench/time_models.py
	$(BIN)/python bench/solver_update.py
	$(BIN)/python bench/data_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
