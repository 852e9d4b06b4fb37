# Quick start: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit venv kafka-fetch chromium clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[worker,bench,dev]'
	touch $(STAMP)

venv: $(STAMP)

kafka-fetch: $(STAMP)
	$(VENV)/bin/budgetwarden kafka fetch

demo: $(STAMP) kafka-fetch
	$(VENV)/bin/budgetwarden demo $(DEMO_ARGS)

# Debian's chromium for the dashboard's browser test (CI runs as root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) kafka-fetch chromium
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

clean:
	rm -rf $(VENV) var build *.egg-info
