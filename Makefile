# The two commands a newcomer needs:
#   make demo   installs what is missing, starts Kafka and a worker, plays the story
#   make test   lint, type-check and the whole test suite (starts its own broker)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit integration lint install tools clean bench bench-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# docker-compose validates docker-compose.yml without a Docker engine (Debian's client only);
# chromium runs the approval page's browser tests (driven by Playwright, no browser download).
tools:
	@missing=""; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null) || echo "not installed:$$missing"; \
	  else echo "missing:$$missing (the tests that need them will be skipped)"; fi; \
	fi

demo: install
	$(BIN)/gatepass demo

lint: install
	$(BIN)/ruff check streams tests benchmarks
	$(BIN)/mypy

test: install tools lint
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

clean:
	-$(BIN)/gatepass kafka down
	rm -rf .gatepass/brokers .gatepass/worker .gatepass/logs

# The full fault run (docs: tests/faults/test_faults.py): 100,000 intents through worker
# kills, broker restarts, a scale-out and offboardings, on a broker of its own.
.PHONY: faults
faults: install
	GATEPASS_FAULT_INTENTS=100000 $(BIN)/python -m pytest -m faults tests/faults -s

# The benchmark (docs/benchmarks.md): starts its own broker, runs Gatepass, a faust echo and a
# raw Kafka round trip side by side, writes benchmarks/results/latest.{json,png}. About
# 15 minutes; BENCH_ARGS=--quick for a shorter run (100,000 identities).
bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# What CI runs of it (tests/bench/test_bench_smoke.py): tiny counts, figures not judged.
bench-smoke: install
	$(BIN)/python -m pytest -m bench tests/bench

# Known vulnerabilities of the installed dependencies, from PyPI's advisory data
# (docs/security-tests.md). --strict: a dependency that could not be checked fails the run
# instead of passing silently. Not part of `test`: the PyPI this workplace and its CI reach
# does not serve the per-release JSON that pip-audit reads, so nothing can be audited here.
.PHONY: audit
audit: install
	$(BIN)/pip-audit --strict --skip-editable --progress-spinner off
