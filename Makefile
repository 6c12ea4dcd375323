# The two commands of the README. Everything installs into ./.venv; nothing global but
# the system packages listed in .ci/system-packages (installed by .ci/run on CI).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.metalflow-installed

.PHONY: demo test lint install lab clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## demo: install, then run the main job on the embedded default (the lab)
demo: $(STAMP)
	$(BIN)/metalflow demo

## test: install, then lint, format and type checks (tests/lint.py), then the whole test
## suite (in three groups at once: tests/split.py)
test: $(STAMP)
	$(BIN)/python -m tests.lint
	$(BIN)/python -m tests.split $(PYTEST_ARGS)

## lint: ruff check, ruff format --check, mypy (strict on integrations/ and flows/)
lint: $(STAMP)
	$(BIN)/python -m tests.lint

lab: $(STAMP)
	$(BIN)/metalflow lab up

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
