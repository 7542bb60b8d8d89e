# The two set-up commands (see README): `make demo` and `make test`.
# Each creates or reuses .venv and installs what it needs (torch 2.13.0 CPU first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qdq-passes-installed
TORCH_SPEC := torch==2.13.0

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/bench_ir_io.py

clean:
	rm -rf $(VENV) build *.egg-info examples/_out benchmarks/_work
