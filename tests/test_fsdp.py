"""trainer=fsdp (torch's FSDP2) where it runs without a GPU: 2 CPU processes over gloo, the real CLI.

What a CPU cannot show (bf16 mixed precision, CPU offload, NCCL, a 14B student) is listed in the README.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from lightning_da.checkpoints import resolve_checkpoint
from lightning_da.distributed import launch_fabric
from lightning_da.errors import UserError
from lightning_da.fsdp import AdapterFSDPStrategy, decoder_layer_classes, shard_model
from lightning_da.models import apply_lora
from lightning_da.models.lora import load_adapter, random_adapter
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
CPU = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "logger=csv"]
# 6 training traces in batches of 2 on 2 ranks: 2 steps an epoch; a checkpoint every step.
SFT = [*[o for o in TINY if not o.startswith("trainer.max_epochs")], "trainer.max_epochs=3",
       "+callbacks.model_checkpoint.every_n_train_steps=1", *CPU, "algorithm.global_batch_size=4"]
GRPO = ["algorithm=grpo", "student=tiny_random", "trainer.max_steps=3", "algorithm.module.num_generations=4",
        "algorithm.module.sampling.max_new_tokens=6", "algorithm.global_batch_size=null", "algorithm.datamodule.prompts_per_step=2", "algorithm.module.beta=0.04",
        "algorithm.module.optimizer.lr=1e-2", "data=rl_mixture", "rewards=mixture", "data.harmful.limit=8", "data.benign.n=8", '+judge.refusals=[""]', *CPU,
        # A reward that varies within groups, so the policy really moves.
        "+algorithm.module.rewards.low.weight=1.0", "+algorithm.module.rewards.low.fn._target_=tests.test_grpo.low_token_reward",
        "+algorithm.module.rewards.low.fn._partial_=true"]


def cli(run: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run}", f"paths.cache_dir={run.parent / 'cache'}"],
                          cwd=ROOT, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(done.stderr[-3000:])
    return done


def max_difference(a: Path, b: Path) -> float:
    x, y = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (a, b))
    assert set(x) == set(y)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_fsdp_config_composes_to_the_adapter_strategy(compose_train):
    cfg = compose_train("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, AdapterFSDPStrategy)
    assert strategy.shard_options == {"layer_classes": None, "activation_checkpointing": True,
                                      "reshard_after_forward": True, "cpu_offload": False}
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


def test_fsdp_shards_each_decoder_layer_and_the_model(tiny_source, tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = apply_lora(tiny_source.load_model(), r=4)
    assert decoder_layer_classes(model) == (LlamaDecoderLayer,)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        sharded = shard_model(model, init_device_mesh("cpu", (1,)))
    finally:
        torch.distributed.destroy_process_group()
    layers = list(model.get_base_model().model.layers)
    assert sharded == [*layers, model.get_base_model()]
    assert [m for m in model.modules() if isinstance(m, FSDPModule)] == [model.get_base_model(), *layers]
    assert model.get_base_model().is_activation_checkpointing


def test_unknown_layer_class_names_the_setting(tiny_source):
    with pytest.raises(UserError, match=r"trainer.strategy.layer_classes=\[<its decoder layer class name>\]"):
        decoder_layer_classes(tiny_source.load_model(), ["Qwen2DecoderLayer"])


def test_sharded_checkpoint_needs_fsdp_and_evaluate_refuses_fsdp(tmp_path, compose_train):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.mkdir()
    torch.save({"epoch": 0}, checkpoint / "meta.pt")
    assert resolve_checkpoint(checkpoint, tmp_path, sharded=True) == checkpoint
    with pytest.raises(UserError, match="is a sharded .FSDP. checkpoint; resume it with trainer=fsdp"):
        resolve_checkpoint(checkpoint, tmp_path)
    with pytest.raises(UserError, match="evaluate.py runs data parallel"):
        launch_fabric(compose_train("trainer=fsdp", "trainer.accelerator=cpu").trainer)


@pytest.mark.slow
def test_fsdp_sft_equals_ddp_saves_a_peft_adapter_and_resumes_exactly(tmp_path, tiny_source):
    cli(tmp_path / "fsdp", *SFT, "trainer=fsdp")
    cli(tmp_path / "ddp", *SFT, "trainer=ddp")
    assert max_difference(tmp_path / "fsdp", tmp_path / "ddp") < 1e-6

    crashed = tmp_path / "crashed"
    done = cli(crashed, *SFT, "trainer=fsdp", "+callbacks.crash._target_=tests.test_resume.CrashAt", "+callbacks.crash.step=4",
               check=False)
    assert done.returncode != 0 and not (crashed / "adapter").exists()
    from torch.distributed.checkpoint import FileSystemReader

    last = crashed / "checkpoints" / "last.ckpt"
    saved = FileSystemReader(str(last)).read_metadata().state_dict_metadata
    weights = [k for k in saved if k.startswith("state_dict.")]
    assert weights and all("lora_" in k or "modules_to_save" in k for k in weights)  # no frozen base weight
    cli(crashed, *SFT, "trainer=fsdp", "ckpt_path=last")
    assert max_difference(tmp_path / "fsdp", crashed) < 1e-6

    # adapter/ is a plain peft adapter: it loads onto the student without any FSDP.
    model = load_adapter(tiny_source.load_model(), tmp_path / "fsdp" / "adapter")
    trained = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_A" in k}
    assert len(loaded) == sum("lora_A" in k for k in trained) > 0


@pytest.mark.slow
def test_fsdp_grpo_equals_ddp(tmp_path):
    """Rollouts from the sharded policy (every rank steps until all are done), the base reference
    with the adapter disabled, several backward passes per step."""
    cli(tmp_path / "fsdp", *GRPO, "trainer=fsdp")
    cli(tmp_path / "ddp", *GRPO, "trainer=ddp")
    moved = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert max(float(v.abs().max()) for k, v in moved.items() if "lora_B" in k) > 1e-4  # the policy moved
    assert max_difference(tmp_path / "fsdp", tmp_path / "ddp") < 1e-5


def test_fsdp_rejects_the_init_adapter_reference(tmp_path, tiny_source):
    adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model())
    done = cli(tmp_path / "run", *GRPO, "trainer=fsdp", "algorithm.module.reference=init_adapter", f"algorithm.module.init_adapter={adapter}",
               check=False)
    assert done.returncode != 0
    assert "reference=init_adapter cannot run under trainer=fsdp" in done.stdout + done.stderr
