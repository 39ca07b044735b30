# Set-up and everyday commands. Everything installs into ./.venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-slow ci clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CHGNet needs torch; ask for the CPU build explicitly (a bare `torch` can pull a multi-GB CUDA build).
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[chgnet,test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install gnome_loop with CHGNet and the test tools

quickstart: $(STAMP)  ## a real 3-round campaign: 12 elements, CHGNet oracle, then the export and the report
	rm -rf runs/quickstart
	$(BIN)/gnome-loop init experiments/quickstart/config.yaml -d runs/quickstart
	$(BIN)/gnome-loop run runs/quickstart
	$(BIN)/gnome-loop export runs/quickstart
	$(BIN)/gnome-loop report runs/quickstart

test: $(STAMP)  ## the default (fast) test suite
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## the slow tests: CHGNet, repeated kill -9 and resume
	$(BIN)/python -m pytest -q -m slow

ci: test test-slow

clean-runs:
	rm -rf runs
