# The two commands of the README. Everything installs into ./.venv; nothing global but
# the system packages listed in .ci/system-packages (installed by .ci/run on CI).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.metalflow-installed

.PHONY: demo test install lab clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## demo: install, then run the main job on the embedded default (the lab)
demo: $(STAMP)
	$(BIN)/metalflow demo

## test: install, then run the whole test suite (in two halves at once: tests/split.py)
test: $(STAMP)
	$(BIN)/python -m tests.split $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/metalflow lab up

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
