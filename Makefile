# The two entry points of the README. Each installs what is missing, then runs.
SHELL := /bin/bash
CORES ?= all

.PHONY: setup demo test lint

setup:
	tools/setup.sh

demo: setup
	source .venv/bin/activate && snakemake --cores $(CORES)

test: setup
	source .venv/bin/activate && ruff check src tests bench && pytest -q

lint:
	source .venv/bin/activate && ruff check src tests bench && snakemake --lint
