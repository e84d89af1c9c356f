# make demo: install .venv if missing, run the main job on a local Ray cluster with tiny models.
# make test: install .venv if missing, run the tests (CI runs this through .ci/run).
VENV ?= .venv
STAMP := $(VENV)/.adaptcot-installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml scripts/setup_venv.sh
	VENV=$(VENV) bash scripts/setup_venv.sh

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adaptcot run --config configs/local.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/pool_import.py
	$(VENV)/bin/python benchmarks/sandbox_throughput.py
	$(VENV)/bin/python benchmarks/grade_throughput.py
	$(VENV)/bin/python benchmarks/teacher_client.py
	$(VENV)/bin/python benchmarks/sft_throughput.py

clean:
	rm -rf runs .pytest_cache
