"""Bad input: one line naming the fix, exit code 2, and nothing written. A few cases go through the real
CLIs (a process each); the rest compose the same config in this process and run the same entry function
the CLI runs (`run_or_exit`), which turns a UserError into the logged line and exit code 2."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from lightning_da.errors import run_or_exit
from lightning_da.models import EmbeddedSmolLM2, TinyRandomLlama, apply_lora
from lightning_da.runs.evaluate import run_evaluate
from lightning_da.runs.train import run_train
from tests.conftest import CONF
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ["evaluate.py", "student=tiny_random", "n_candidates=2", "max_new_tokens=4", "benchmark.limit=2", "trainer.accelerator=cpu"]
TRAIN = ["train.py", *TINY]
GRPO = ["train.py", "algorithm=grpo", "student=tiny_random", "trainer.accelerator=cpu", "data=rl_mixture", "rewards=mixture", "data.harmful.limit=4",
        "data.benign.n=4"]
GPU_DEFAULT = [a for a in EVALUATE if a != "trainer.accelerator=cpu"], [a for a in TRAIN if a != "trainer.accelerator=cpu"]
OUTPUTS = ("results.json", "candidates.jsonl", "wandb", "csv", "adapter", "checkpoints", "metrics.json", "completions.jsonl")


def _save_adapter(model, path: Path) -> str:
    apply_lora(model, r=2, alpha=4, dropout=0.0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"tiny": lambda: _save_adapter(TinyRandomLlama().load_model(), root / "tiny"),
            "smollm2": lambda: _save_adapter(EmbeddedSmolLM2().load_model(), root / "smollm2")}


def corrupt_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    return str(path)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")

CASES = [
    # (id, command, adapter to pass, what the one error line must say)
    pytest.param([*EVALUATE, "n_candidates=0"], "tiny", "n_candidates=0: set it to an integer of at least 1", id="n_candidates=0"),
    pytest.param([*EVALUATE, "max_new_tokens=-5"], "tiny", "max_new_tokens=-5: set it to an integer of at least 1", id="max_new_tokens=-5"),
    pytest.param([*EVALUATE, "scoring_chunk_tokens=0"], "tiny", "scoring_chunk_tokens=0: set it", id="scoring_chunk_tokens=0"),
    pytest.param([*EVALUATE, "scoring_hidden_at=end"], "tiny", "scoring_hidden_at=end: use last_token (each candidate's own last token) "
                 "or padded_end (the reference's: the right-padded batch's last position)", id="scoring_hidden_at-unknown"),
    pytest.param([*EVALUATE, "benchmark.limit=0"], "tiny", "benchmark.limit=0: set it", id="benchmark.limit=0"),
    pytest.param(EVALUATE, "smollm2", "smollm2-135m-instruct, whose shapes or modules differ from the student tiny-random-llama; set student=",
                 id="adapter-of-another-model", marks=pytest.mark.slow),
    pytest.param([*GPU_DEFAULT[0], "trainer=ddp"], "tiny", "no GPU; on CPU use trainer=cpu", id="evaluate-ddp-without-gpu", marks=NO_GPU),
    pytest.param([*GPU_DEFAULT[1], "trainer=ddp"], None, "no GPU; on CPU use trainer=cpu", id="train-ddp-without-gpu", marks=NO_GPU),
    pytest.param([*TRAIN, "spec=reference"], None, "spec=reference reads the authors' spec from their code: set spec.source=<a checkout "
                 "of pankayaraj/Robust_Deliberative_Alignment>", id="spec-reference-without-source"),
    pytest.param([*TRAIN, "ckpt_path={tmp}/missing.ckpt"], None, "missing.ckpt does not exist; point ckpt_path at", id="ckpt_path-missing"),
    pytest.param([*TRAIN, "ckpt_path={corrupt}"], None, "is not a readable checkpoint", id="ckpt_path-corrupt"),
    pytest.param([*TRAIN, "data.limit=0"], None, "data.limit=0: set it", id="data.limit=0"),
    pytest.param([*GRPO, "algorithm.module.init_adapter={tmp}"], None, "is not a peft adapter directory", id="grpo-init_adapter-not-an-adapter"),
    pytest.param([*GRPO, "init_adapter={tmp}"], None, "the key moved; set algorithm.module.init_adapter=", id="grpo-init_adapter-moved"),
    pytest.param([*GRPO, "algorithm.module.epsilon=-0.2"], None, "algorithm.module.epsilon=-0.2: set it between 0 and 1",
                 id="grpo-negative-epsilon"),
    pytest.param([*GRPO, "algorithm.module.beta=-0.1"], None, "algorithm.module.beta=-0.1: set it to 0", id="grpo-negative-beta"),
    pytest.param([*GRPO, "algorithm.module.scale_rewards=batchwise"], None,
                 "algorithm.module.scale_rewards=batchwise; use one of group, batch, none", id="grpo-unknown-scale_rewards"),
    pytest.param([*GRPO, "algorithm.module.beta=0.04", "algorithm.module.reference=init_adapter"], None,
                 "algorithm.module.reference=init_adapter needs algorithm.module.init_adapter=", id="grpo-reference-without-adapter"),
    pytest.param([*GRPO, "algorithm.module.delta=0.5"], None, "algorithm.module.delta=0.5: set it above 1", id="grpo-delta-below-1"),
    pytest.param([*GRPO, "algorithm.module.sapo_temperature_neg=0"], None, "algorithm.module.sapo_temperature_neg=0: set it above 0",
                 id="grpo-zero-sapo-temperature"),
    pytest.param([*GRPO, "algorithm.module.top_entropy_quantile=1.5"], None,
                 "algorithm.module.top_entropy_quantile=1.5: set a fraction of the tokens", id="grpo-entropy-quantile-above-1"),
    pytest.param([*GRPO, "algorithm.module.loss_type=vespo", "algorithm.module.vespo_k_neg=-1"], None,
                 "algorithm.module.vespo_k_neg=-1: set it to at least 0", id="grpo-negative-vespo-k"),
    pytest.param([*GRPO, "algorithm.module.max_grad_norm=0"], None, "algorithm.module.max_grad_norm=0: set it above 0",
                 id="grpo-zero-grad-norm"),
    pytest.param([*GRPO, "algorithm.module.num_generations=1"], None,
                 "algorithm.module.num_generations=1: set it to an integer of at least 2", id="grpo-one-generation"),
    pytest.param([*(a for a in TRAIN if "refusals" not in a), "judge=llama_guard3"], None, "set judge.model.path=", id="train-judge-not-cached"),
    pytest.param([*EVALUATE, "judge=wildguard"], "tiny", "set judge.model.path=", id="evaluate-judge-not-cached"),
    pytest.param([*EVALUATE, "generation.backend=vllm"], "tiny", "generation.backend=vllm needs vLLM: pip install -e '.[vllm]'",
                 id="vllm-not-installed"),
    pytest.param([*TRAIN, "generation.backend=sglang"], None, "generation.backend=sglang: use one of hf, vllm", id="unknown-backend"),
    pytest.param([*EVALUATE, "trainer=fsdp", "trainer.accelerator=cpu"], "tiny", "evaluate.py runs data parallel", id="evaluate-fsdp"),
]


# Through the real CLI: one case of each entry point that takes overrides.
CLI = {"n_candidates=0", "data.limit=0"}


def in_process(args: list[str], run: Path, cache: Path, caplog) -> tuple[int, str]:
    """(exit code, log) of the entry function the CLI runs, on the same composed config."""
    script, *overrides = args
    name = script.removesuffix(".py")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.cache_dir = str(run), str(cache)
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exited:
        run_or_exit({"train": run_train, "evaluate": run_evaluate}[name], cfg, name=name)
    return exited.value.code, "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)


@pytest.mark.parametrize(("command", "adapter", "message"), CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, adapters, caplog, request, monkeypatch, command, adapter,
                                                         message):
    run, cache = tmp_path / "run", tmp_path / "cache"
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed, whatever stand-in another test left importable
    args = [a.format(tmp=tmp_path, corrupt=corrupt_checkpoint(tmp_path) if "{corrupt}" in a else "") for a in command]
    if adapter:
        args.append(f"adapter={adapters[adapter]()}")
    if request.node.callspec.id in CLI:
        result = subprocess.run([sys.executable, *args, f"hydra.run.dir={run}", f"paths.cache_dir={cache}"], cwd=ROOT,
                                capture_output=True, text=True)
        code, output = result.returncode, result.stdout + result.stderr
    else:
        code, output = in_process(args, run, cache, caplog)
    errors = [line for line in output.splitlines() if "error:" in line]
    assert code == 2, output[-3000:]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in output
    assert not any((run / name).exists() for name in OUTPUTS)
    assert not (cache / "traces").exists()  # failed before any teacher generation
