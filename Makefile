PYTHON ?= python
OUT ?= build

.PHONY: install demo test models lint bench studies corpus

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

bench:              ## speed and memory benchmarks (not part of the tests; pip install -e '.[bench]' for the peers)
	$(PYTHON) benchmarks/run_all.py

studies:            ## the accuracy studies behind the README tables (digits; needs the torch extra)
	$(PYTHON) benchmarks/layercollapse_digits.py
	$(PYTHON) benchmarks/alds_budget.py

corpus:             ## the optimizer over onnx's shipped backend test cases, then mutated models
	$(PYTHON) benchmarks/corpus.py
	$(PYTHON) benchmarks/fuzz.py
