VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test test-fast bench fuzz screenshots lint typecheck clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || "$$(scripts/find-python.sh)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed
	@scripts/ensure-bwrap.sh $(PY)

run: setup
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap --url http://$(HOST):$(PORT)/
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

test: setup
	@scripts/test-prereqs.sh
	$(PY) -m pytest -q

test-fast: setup
	@scripts/test-prereqs.sh --no-browser
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m bench

fuzz: setup
	$(PY) -m pytest -q tests/test_fuzz.py

screenshots: setup
	GALLEY_UPDATE_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_browser_console.py

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy .

clean:
	rm -rf $(VENV) var
