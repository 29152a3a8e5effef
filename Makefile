# make demo : install everything into .venv, then run the main job for one language on CPU
# make test : install everything into .venv, then run the whole test suite
VENV ?= .venv
export KAKUGO_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test lint

setup:
	KAKUGO_VENV=$(VENV) scripts/setup.sh

demo: setup
	KAKUGO_VENV=$(VENV) scripts/demo.sh

test: setup
	$(VENV)/bin/python -m pytest tests --durations=15

lint:
	$(VENV)/bin/ruff check kakugo tests jobs benchmarks
