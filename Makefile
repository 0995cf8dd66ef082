PYTHON ?= python
OUT ?= build

.PHONY: install demo test test-quick test-min models lint bench studies readme-tables corpus

install:            ## the package and the test tools (add the torch extra as the README says)
	$(PYTHON) -m pip install -e '.[dev]'

demo:               ## optimize a shipped model and print the report
	mkdir -p $(OUT)
	onnx-collapse optimize models/three_layer.onnx $(OUT)/three_layer.collapsed.onnx

test:               ## the whole test suite (what .ci/run runs)
	$(PYTHON) -m pytest

test-quick:         ## the quick subset: every test not marked slow (a few minutes on two cores)
	$(PYTHON) -m pytest -m "not slow"

test-min:           ## the core suite with exactly the lowest declared dependency versions, on Python 3.11
	.ci/min-versions

models:             ## regenerate models/*.onnx with torch (byte-identical with the same torch version)
	$(PYTHON) models/export.py
	cp models/three_layer.onnx onnx_collapse/examples/three_layer.onnx  # the example `onnx-collapse demo` runs

lint:
	$(PYTHON) -m ruff check onnx_collapse tests models benchmarks

bench:              ## speed and memory benchmarks (not part of the tests; pip install -e '.[bench]' for the peers)
	$(PYTHON) benchmarks/run_all.py

studies:            ## the accuracy studies behind the tables of docs/results.md (digits; needs the torch extra)
	$(PYTHON) benchmarks/layercollapse_digits.py
	$(PYTHON) benchmarks/alds_budget.py
	$(MAKE) readme-tables

readme-tables:      ## copy benchmarks/results/*.md into docs/results.md between their markers
	$(PYTHON) benchmarks/readme_tables.py

corpus:             ## the optimizer over onnx's shipped backend test cases, then mutated models
	$(PYTHON) benchmarks/corpus.py
	$(PYTHON) benchmarks/fuzz.py
