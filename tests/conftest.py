import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from lightning_da.models import TinyRandomLlama, apply_lora  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="session")
def tiny_source():
    return TinyRandomLlama()


@pytest.fixture(scope="session")
def tokenizer(tiny_source):
    return tiny_source.load_tokenizer()


@pytest.fixture
def compose_train(tmp_path):
    """Compose conf/train.yaml with overrides, outputs and caches under tmp_path."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    return _compose


def random_adapter(path: Path, model, *, r: int = 4, alpha: int = 8, scale: float = 0.1, seed: int = 0,
                   modules_to_save=("lm_head",)) -> str:
    """`model` with a LoRA adapter of random nonzero weights (a fresh one is the identity), saved to `path`."""
    torch.manual_seed(seed)
    peft_model = apply_lora(model, r=r, alpha=alpha, dropout=0.0, modules_to_save=modules_to_save)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale)
    peft_model.save_pretrained(path)
    return str(path)
