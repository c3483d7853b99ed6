"""LoRA through peft: wrap a student for training, or load a trained adapter onto it."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import PreTrainedModel

from lightning_da.errors import UserError
from lightning_da.models.vocabulary import match_adapter_vocabulary


def apply_lora(
    model: PreTrainedModel,
    *,
    r: int = 32,
    alpha: int = 64,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = ("lm_head",),
    upcast_modules_to_save: bool = True,
) -> PeftModel:
    """The paper's adapter: r 32, alpha 64, dropout 0.05, lm_head trained in full, on PEFT's default targets
    for the architecture (`target_modules=None`: q_proj and v_proj for Qwen2, Llama, Gemma 3), as the
    reference's script leaves them; "all-linear" or a list of names to choose. Every trained weight is fp32 on a
    bf16 or fp16 model (peft upcasts LoRA's itself; `upcast_modules_to_save` the copies: see `keep_copies_in_fp32`).

    With tied embeddings (SmolLM2, Qwen2.5-0.5B) the trained lm_head is a copy: the input
    embeddings stay the base's, and disabling the adapter gives back the base model exactly.
    """
    model_type = getattr(model.config, "model_type", None)
    if target_modules is None and model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        raise UserError(f"peft has no default LoRA targets for model type {model_type!r}: set "
                        f"algorithm.module.lora.target_modules (e.g. lora=all_linear, or a list of module names)")
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if target_modules is None or isinstance(target_modules, str) else list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    with _untied_lm_head_copy():
        peft_model = get_peft_model(model, config)
    if upcast_modules_to_save:
        keep_copies_in_fp32(peft_model)
    return peft_model


def keep_copies_in_fp32(model: PeftModel) -> PeftModel:
    """The trained copies of `modules_to_save` (the paper's lm_head) as fp32 master weights on a half-precision model.

    peft upcasts LoRA's A and B to fp32 (`autocast_adapter_dtype`) but deep-copies `modules_to_save` in the model's
    dtype, and neither TRL nor Lightning's `bf16-mixed` upcasts a parameter: in bf16 an AdamW step near the paper's lr
    1.41e-5 rounds away on every weight above about 0.004 (2^-8, where half of bf16's spacing is 2^-16 = 1.5e-5), so the head the
    reference trained barely moved. Each copy's inputs are cast to fp32 and its output back to the input's dtype; under autocast
    (`bf16-mixed`) the matmul itself stays in bf16."""
    for wrapper in model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        for copy in wrapper.modules_to_save.values():
            if any(p.dtype in (torch.bfloat16, torch.float16) for p in copy.parameters()):
                copy.to(torch.float32)
                copy.register_forward_pre_hook(_inputs_to_fp32)
                copy.register_forward_hook(_output_to_input_dtype)
    return model


def _inputs_to_fp32(module, args):
    floating = [a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()]
    module._lightning_da_input_dtype = floating[0] if floating else None
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to_input_dtype(module, args, output):
    dtype = module.__dict__.pop("_lightning_da_input_dtype", None)
    if dtype is None or not torch.is_tensor(output) or not output.is_floating_point():
        return output
    return output.to(dtype)


def random_adapter(path: str | Path, model: PreTrainedModel, *, r: int = 4, alpha: int = 8, scale: float = 0.1, seed: int = 0,
                   modules_to_save: Sequence[str] | None = ("lm_head",), lora_only: bool = False,
                   target_modules: str | Sequence[str] | None = "all-linear") -> str:
    """`model` with a LoRA adapter of random nonzero weights saved to `path` (a fresh adapter is the
    identity, so it tells nothing apart): for tests and benchmarks. `lora_only` leaves the trained
    copies (`modules_to_save`) as initialised; every linear layer moves unless `target_modules` says less."""
    torch.manual_seed(seed)
    peft_model = apply_lora(model, r=r, alpha=alpha, dropout=0.0, target_modules=target_modules, modules_to_save=modules_to_save)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad and (not lora_only or "lora_" in name):
                param.add_(torch.randn_like(param) * scale)
    peft_model.save_pretrained(path)
    return str(path)


@contextlib.contextmanager
def _untied_lm_head_copy():
    """peft warns, on every wrap and load, that a tied layer (lm_head) is in the adapter without
    `ensure_weight_tying`: the untied trained copy is this adapter's design (see `apply_lora`), so that one
    warning is expected here; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        yield


def check_adapter_dir(adapter_dir: str | Path, key: str = "adapter") -> Path:
    """The adapter's config file, or a UserError naming `key` when `adapter_dir` holds no peft adapter."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{key}={adapter_dir} is not a peft adapter directory (no adapter_config.json); "
                        f"point it at a train run's adapter/ directory")
    return config_file


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path, *, trainable: bool = False, key: str = "adapter",
                 model_name: str | None = None, tokenizer=None, upcast_modules_to_save: bool = True) -> PeftModel:
    """A saved adapter on its base; `trainable=True` to keep training it (e.g. GRPO from SFT), its trained weights
    in fp32 (`upcast_modules_to_save`: as `apply_lora`'s).

    `key` (the config key that named the directory) and `model_name` (the student) go into the
    one-line error for a directory that is not an adapter, or an adapter trained on another model.
    An adapter trained with the think tokens adds them to `tokenizer` and resizes `model` first.
    """
    config_file = check_adapter_dir(adapter_dir, key)
    match_adapter_vocabulary(model, tokenizer, adapter_dir)
    try:
        with _untied_lm_head_copy():
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except (RuntimeError, ValueError) as exc:
        if "size mismatch" not in str(exc) and "not found in the base model" not in str(exc):
            raise
        trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path") or "an unnamed model"
        student = model_name or model.config.name_or_path or type(model).__name__
        raise UserError(f"{key}={adapter_dir} was trained on {trained_on}, whose shapes or modules differ from the "
                        f"student {student}; set student= to the adapter's base model") from None
    if not trainable:  # peft leaves the modules_to_save copies (lm_head) trainable
        peft_model.requires_grad_(False)
    elif upcast_modules_to_save:
        keep_copies_in_fp32(peft_model)
    return peft_model
