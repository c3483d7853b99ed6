"""train.py end to end on the tiny random models: Hydra compose in-process, and the real CLI."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_da.errors import find_user_error, run_or_exit
from lightning_da.runs.train import run_train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "teacher=tiny_random", "student=tiny_random", "data.limit=8",
    # A random teacher never refuses; an empty refusal phrase makes the keyword judge keep everything.
    '+judge.refusals=[""]',
    "trainer.max_epochs=2", "algorithm.global_batch_size=2", "algorithm.datamodule.batch_size=2",
    "algorithm.datamodule.val_fraction=0.25", "algorithm.module.lora.r=4", "trainer.accelerator=cpu",
]


def test_pipeline_through_compose(compose_train, tmp_path):
    cfg = compose_train(*TINY)
    metrics = run_train(cfg)
    run = Path(cfg.paths.output_dir)

    assert metrics["data/traces_kept"] == 8 and metrics["data/traces_rejected"] == 0
    for key in ("train/loss", "train/loss_epoch", "val/loss", "train/lr", "train/tokens_per_sec"):
        assert key in metrics, sorted(metrics)
    assert json.loads((run / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "adapter" / "tokenizer_config.json").is_file()
    assert list((run / "wandb").glob("offline-run-*"))
    # the trace cache is complete and reused: a second run generates nothing
    cache = next((tmp_path / "cache" / "traces").iterdir())
    assert (cache / "complete").exists() and len(list(cache.glob("shard-*.jsonl"))) == 1


def test_bad_input_is_one_line_and_nonzero(compose_train, caplog):
    """A hub id with no local copy, through the CLI's entry function (`run_or_exit`), in this process."""
    cfg = compose_train("student=qwen2_5_0_5b")
    with pytest.raises(SystemExit) as exited:
        run_or_exit(run_train, cfg, name="train")
    assert exited.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "student.model.path=" in errors[0]
    assert not (Path(cfg.paths.output_dir) / "adapter").exists() and not (Path(cfg.paths.cache_dir) / "traces").exists()


def test_zero_kept_traces_stops_before_training(compose_train):
    cfg = compose_train(*[o for o in TINY if "refusals" not in o])
    with pytest.raises(Exception) as info:
        run_train(cfg)
    assert "the judge kept 0 teacher trace(s)" in str(find_user_error(info.value))
    assert not (Path(cfg.paths.output_dir) / "adapter").exists()


@pytest.mark.slow
def test_cli_ddp_two_processes(tmp_path):
    """strategy=ddp re-runs train.py for rank 1, which must find the finished trace cache. With WANDB_MODE unset and no
    W&B login the run logs offline (never blocking on the network) and ends with the line that uploads it."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")}
    done = subprocess.run(
        [sys.executable, "train.py", *TINY, "trainer.max_epochs=1", "trainer.strategy=ddp", "trainer.devices=2", "algorithm.global_batch_size=4",
         f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, check=True, capture_output=True, text=True, env={**env, "NETRC": str(tmp_path / "no_netrc")},
    )
    (offline_run,) = (run / "wandb").glob("offline-run-*")
    assert f"upload it with: wandb sync {offline_run}" in done.stdout + done.stderr
    assert (run / "train_ddp_process_1.log").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data/traces_kept"] == 8
    shards = list((tmp_path / "cache" / "traces").glob("*/shard-*.jsonl"))
    assert len(shards) == 1  # generated once, by rank 0


# by_layer=false: the cheap path (LatentBestOfN); true: the full scoring pass, every layer.
@pytest.mark.parametrize("by_layer", [False, True])
def test_bon_attribution_callback_logs_val_asr(compose_train, by_layer):
    cfg = compose_train(
        *TINY, "callbacks=with_bon", "callbacks.bon_attribution.selector.layer=2", "callbacks.bon_attribution.n_prompts=4",
        "callbacks.bon_attribution.n_candidates=3", "callbacks.bon_attribution.sampling.max_new_tokens=6",
        f"callbacks.bon_attribution.by_layer={str(by_layer).lower()}",
    )
    metrics = run_train(cfg)
    for key in ("val/asr_first", "val/asr_bon"):
        assert 0.0 <= metrics[key] <= 100.0
    assert "val/asr_drop" in metrics


def test_bon_attribution_callback_refuses_fsdp(tiny_source):
    import lightning as L

    from lightning_da.attribution.selectors import LatentSimilarity
    from lightning_da.callbacks import BoNAttributionCallback
    from lightning_da.data.benchmarks import StrongRejectBenchmark
    from lightning_da.errors import UserError
    from lightning_da.fsdp import AdapterFSDPStrategy

    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=AdapterFSDPStrategy(), logger=False)
    callback = BoNAttributionCallback(StrongRejectBenchmark(split="small"), judge=None, selector=LatentSimilarity(layer=1))
    with pytest.raises(UserError, match="trainer=ddp"):
        callback.on_fit_start(trainer, None)


def test_bon_attribution_callback_rejects_a_layer_outside_the_model(compose_train):
    cfg = compose_train(*TINY, "callbacks=with_bon", "callbacks.bon_attribution.selector.layer=12", "callbacks.bon_attribution.n_prompts=2")
    with pytest.raises(Exception) as info:
        run_train(cfg)
    message = str(find_user_error(info.value))
    assert "outside this model's hidden_states indices 0..2" in message and "callbacks.bon_attribution.selector.layer" in message
