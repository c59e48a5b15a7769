# The two quick-start commands: `make run` and `make test`. Both set up first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint bench doctor constraints clean

setup:
	@bash scripts/setup.sh

run:
	@OTEL_EBPF_SKIP_JAEGER=1 bash scripts/setup.sh
	$(VENV)/bin/otel-ebpf run $(if $(CONFIG),--config $(CONFIG))

doctor: setup
	$(VENV)/bin/otel-ebpf doctor

# The unit tests run twice: on the compiled event path, as everything else
# does, and as Python, what runs where setup could not compile it.
test: setup
	OTEL_EBPF_NATIVE=0 $(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests

lint: setup
	bash scripts/lint.sh

bench: setup
	$(PY) bench/pipeline_throughput.py
	$(PY) bench/correlation_cost.py
	$(PY) bench/overload_recovery.py
	$(PY) bench/parser_throughput.py
	$(PY) bench/db_overhead.py
	$(PY) bench/memory_plateau.py
	$(PY) bench/footprint.py
	$(PY) bench/bpf_cost.py
	$(PY) bench/context_trees.py
	$(PY) bench/go_overhead.py
	$(PY) bench/event_loop_overhead.py
	$(PY) bench/uprobe_cost.py
	$(PY) bench/metrics_cost.py
	$(PY) bench/collector_threads.py
	$(PY) bench/nginx_overhead.py

# The newest versions pyproject.toml allows, pinned in constraints.txt (setup
# installs those): run `make test` before committing the new pins.
constraints: setup
	$(PY) -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
	{ head -n 2 constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache otel_ebpf/_native
