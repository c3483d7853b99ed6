"""Exact resume: a run that crashed mid-epoch, resumed with `ckpt_path=last` in its own directory,
ends with the trainable weights of a run never interrupted, and continues the same W&B run."""

import contextlib
from pathlib import Path

import lightning as L
import pytest
from omegaconf import open_dict
from safetensors.torch import load_file

from lightning_da.errors import find_user_error
from lightning_da.runs.train import run_train
from tests.test_train import TINY


class Crash(Exception):
    pass


class CrashAt(L.Callback):
    """Kills the run as a crash would, when `step` optimizer steps (and their checkpoints) are done."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Crash


# 6 training traces in batches of 2: 3 steps an epoch; a checkpoint every step.
RUN = [*[o for o in TINY if not o.startswith("trainer.max_epochs")], "trainer.max_epochs=3",
       "+callbacks.model_checkpoint.every_n_train_steps=1"]


def train(compose_train, run: Path, *overrides: str):
    cfg = compose_train(*RUN, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    return run_train(cfg)


def adapter_weights(run: Path) -> dict:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def wandb_ids(run: Path) -> set[str]:
    return {path.name.rsplit("-", 1)[-1] for path in (run / "wandb").glob("offline-run-*")}


def test_sft_resumed_mid_epoch_equals_uninterrupted(compose_train, tmp_path):
    whole = train(compose_train, tmp_path / "whole")
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(compose_train, run, "+callbacks.crash._target_=tests.test_resume.CrashAt", "+callbacks.crash.step=4")
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "adapter").exists()
    resumed = train(compose_train, run, "ckpt_path=last")

    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert resumed["train/loss"] == pytest.approx(whole["train/loss"], abs=1e-6)
    run_id = (run / "wandb_run_id").read_text().strip()
    assert wandb_ids(run) == {run_id}  # both attempts logged to one W&B run


def test_resume_from_another_directory_continues_its_wandb_run(compose_train, tmp_path):
    first = tmp_path / "first"
    with pytest.raises(Crash):
        train(compose_train, first, "+callbacks.crash._target_=tests.test_resume.CrashAt", "+callbacks.crash.step=5")
    second = tmp_path / "second"
    train(compose_train, second, f"ckpt_path={first}")  # a run directory stands for its last.ckpt
    assert (second / "wandb_run_id").read_text() == (first / "wandb_run_id").read_text()


def test_ckpt_path_last_without_a_checkpoint_names_the_fix(compose_train, tmp_path):
    with pytest.raises(Exception) as info, contextlib.suppress(Crash):
        train(compose_train, tmp_path / "fresh", "ckpt_path=last")
    assert "hydra.run.dir=<the run's directory>" in str(find_user_error(info.value))
