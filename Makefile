# Two commands on a fresh clone that has only python3:
#   make demo   create .venv, install, run the main job on the synthetic phantom
#   make test   install and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bcseg demo --out demo-run --force

# Two worker processes, each test file whole in one (a file's trained runs are made
# once): TensorFlow's tracing of each tiny model runs in Python on one core, so two
# processes fill a 2-core machine. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache  # demo-run/ is output: may hold your notes; delete it yourself
