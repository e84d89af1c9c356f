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

# Every script in benchmarks/ at full size (bank_scale.py at 1M and 10M rows takes the longest); each prints its
# ratio against a baseline measured in the same run. `python benchmarks/X.py --smoke` is the small run the tests use.
BENCHMARKS := $(sort $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)))

bench: $(STAMP)
	@set -e; for script in $(BENCHMARKS); do echo "== $$script"; $(VENV)/bin/python $$script; done

clean:
	rm -rf runs .pytest_cache
