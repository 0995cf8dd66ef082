PYTHON ?= python
OUT ?= build

.PHONY: install demo test models lint bench

install:            ## the package, the torch extra (CPU wheel) and the test tools
	$(PYTHON) -m pip install -e '.[dev,torch]'

demo:               ## optimize a shipped model and print the report
	mkdir -p $(OUT)
	onnx-collapse optimize models/three_layer.onnx $(OUT)/three_layer.collapsed.onnx

test:               ## the whole test suite (what .ci/run runs)
	$(PYTHON) -m pytest

models:             ## regenerate models/*.onnx with torch
	$(PYTHON) models/export.py

lint:
	$(PYTHON) -m ruff check onnx_collapse tests models benchmarks

bench:              ## benchmarks (not part of the tests)
	$(PYTHON) benchmarks/run_all.py
