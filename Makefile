# `make run`: set up .venv and run the workflow on the embedded example.
# `make test`: set up .venv and run the whole test suite.
# Both are idempotent: the environment is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
# Use the local torch wheels of a machine that ships them (none elsewhere: PyPI is used).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

.PHONY: setup run test lint clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(FIND_LINKS) -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: $(STAMP) chromium
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest

# The report test renders the HTML report in headless Chromium, a system package: installed here
# when missing on a Debian-like machine where we are root, otherwise the exact command is shown.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report test"; \
	    (apt-get update -q && apt-get install -y -q chromium) >/dev/null; \
	  else \
	    echo "make test needs Chromium for the report test; install it with:" >&2; \
	    echo "  sudo apt-get install chromium" >&2; exit 1; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(BIN):$$PATH" $(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
