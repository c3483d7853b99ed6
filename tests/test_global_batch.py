"""The recipe's global batch on 1, 2 and 8 devices, without GPUs: the commands a GPU user types, composed, and the
arguments the trainer and datamodule then get. Expected values from PAPER.md 9: SFT 16 sequences a step (the reference:
per device 1 x accumulation 16), GRPO 256 completions (4 per device x 8 accumulation x 8 GPUs)."""

import pytest
import torch

from lightning_da.errors import UserError
from lightning_da.global_batch import grpo_prompts_per_step, sft_accumulation, world_size
from lightning_da.runs.train import per_rank_batch


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` CUDA GPUs."""
    def visible(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return visible


@pytest.mark.parametrize(("devices", "micro", "accumulation"), [(1, 4, 4), (2, 4, 2), (8, 2, 1), (8, 1, 2), (2, 1, 8)])
def test_sft_accumulates_to_16_sequences_a_step_on_every_gpu_of_the_machine(compose_train, gpus, devices, micro, accumulation):
    gpus(devices)
    cfg = compose_train("trainer=ddp", f"algorithm.datamodule.batch_size={micro}")
    assert world_size(cfg.trainer) == devices  # devices: auto, every visible GPU
    per_rank_batch(cfg)
    assert cfg.trainer.accumulate_grad_batches == accumulation
    assert micro * accumulation * devices == 16


def test_a_split_that_does_not_divide_is_one_line(compose_train, gpus):
    gpus(8)
    with pytest.raises(UserError) as error:
        per_rank_batch(compose_train("trainer=ddp", "algorithm.datamodule.batch_size=4"))
    assert str(error.value) == ("algorithm.global_batch_size=16 does not split over 8 rank(s) x 4 sequences a micro-batch; "
                                "set algorithm.datamodule.batch_size to a divisor of its share per rank")
    gpus(3)
    with pytest.raises(UserError, match=r"global_batch_size=256 does not split over 3 rank\(s\) x 8 completions"):
        per_rank_batch(compose_train("algorithm=grpo", "trainer=ddp"))


@pytest.mark.parametrize(("devices", "prompts"), [(1, 32), (2, 16), (8, 4)])
def test_grpo_samples_256_completions_a_step_on_every_gpu_of_the_machine(compose_train, gpus, devices, prompts):
    gpus(devices)
    cfg = compose_train("algorithm=grpo", "trainer=ddp")
    per_rank_batch(cfg)
    assert cfg.algorithm.datamodule.prompts_per_step == prompts
    assert prompts * cfg.algorithm.module.num_generations * devices == 256
    assert cfg.trainer.accumulate_grad_batches == 1  # GRPO accumulates inside its step


def test_nodes_multiply_the_ranks_and_explicit_devices_count_as_given(compose_train, gpus):
    gpus(8)
    cfg = compose_train("trainer=ddp", "+trainer.num_nodes=2", "algorithm.datamodule.batch_size=1")
    assert world_size(cfg.trainer) == 16
    assert sft_accumulation(cfg, world_size(cfg.trainer)) == 1
    assert world_size(compose_train("trainer=ddp", "trainer.devices=[0,3]").trainer) == 2
    assert world_size(compose_train("trainer=ddp", "trainer.devices='0,1,2'").trainer) == 3
    gpus(0)
    assert world_size(compose_train("trainer.accelerator=cpu", "trainer.devices=auto").trainer) == 1


def test_a_per_rank_setting_that_contradicts_the_global_batch_is_one_line_and_null_keeps_it(compose_train, gpus):
    gpus(2)
    with pytest.raises(UserError) as error:
        per_rank_batch(compose_train("trainer=ddp", "trainer.accumulate_grad_batches=4"))
    assert str(error.value) == ("trainer.accumulate_grad_batches=4 makes 32 sequences a step on 2 rank(s), not "
                                "algorithm.global_batch_size=16: leave it unset (null), or set algorithm.global_batch_size")
    with pytest.raises(UserError, match=r"prompts_per_step=32 makes 512 completions a step on 2 rank\(s\)"):
        grpo_prompts_per_step(compose_train("algorithm=grpo", "trainer=ddp", "algorithm.datamodule.prompts_per_step=32"), 2)
    kept = compose_train("trainer=ddp", "algorithm.global_batch_size=null", "trainer.accumulate_grad_batches=4")
    per_rank_batch(kept)
    assert kept.trainer.accumulate_grad_batches == 4


def test_the_trainer_gets_the_derived_accumulation(compose_train, monkeypatch):
    """The wiring: run_train's Trainer is built with what per_rank_batch derived (not the config's null)."""
    import lightning.pytorch

    from lightning_da.runs import train

    built = {}

    def trainer(**kwargs):
        built.update(kwargs)
        raise SystemExit
    monkeypatch.setattr(lightning.pytorch, "Trainer", trainer)
    cfg = compose_train("teacher=tiny_random", "student=tiny_random", "data.limit=4", '+judge.refusals=[""]', "logger=csv",
                        "trainer.accelerator=cpu", "algorithm.datamodule.batch_size=2", "algorithm.module.lora.r=4",
                        "teacher.sampling.max_new_tokens=4", "~callbacks")
    with pytest.raises(SystemExit):
        train.run_train(cfg)
    assert built["accumulate_grad_batches"] == 8
