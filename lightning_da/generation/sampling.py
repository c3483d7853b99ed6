"""How to sample: the settings every backend reads (teacher chats, Best-of-N candidates, GRPO rollouts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omegaconf import OmegaConf

from lightning_da.errors import UserError, check_at_least

# Settings added after caches were first keyed on `as_dict()`: left out of it while at these values, so old keys hold.
LATER = {"stop": None, "repetition_penalty": 1.0, "min_p": None, "generation_kwargs": None}


@dataclass
class SamplingConfig:
    """Sampling settings; `top_k: null` means no top-k cut (Hugging Face's default is 50); `stop`: strings that end
    a completion, kept in it (PAIR's attacker stops at the JSON's closing brace). `repetition_penalty` (1: none),
    `min_p` (null: none) and `generation_kwargs` as TRL's: the last passed as they are to Hugging Face's `generate`
    or vLLM's `SamplingParams`, overriding the others where they name the same setting."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 2048
    do_sample: bool = True
    stop: list[str] | None = None
    repetition_penalty: float = 1.0
    min_p: float | None = None
    generation_kwargs: dict | None = None

    def __post_init__(self) -> None:
        check_at_least(self.max_new_tokens, "max_new_tokens (sampling)")
        if not self.repetition_penalty > 0:
            raise UserError(f"sampling repetition_penalty={self.repetition_penalty}: set it above 0 (1: no penalty)")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise UserError(f"sampling min_p={self.min_p}: set it from 0 to 1, or null for none")
        if self.generation_kwargs is not None:
            kwargs = OmegaConf.to_container(self.generation_kwargs, resolve=True) if OmegaConf.is_config(self.generation_kwargs) \
                else self.generation_kwargs
            if not isinstance(kwargs, dict):
                raise UserError(f"sampling generation_kwargs={self.generation_kwargs!r}: give a mapping of settings, or null")
            self.generation_kwargs = dict(kwargs)
        if self.stop is not None:
            self.stop = list(self.stop)  # a Hydra list made plain (settings are written to JSON keys)
            if not all(isinstance(s, str) and s for s in self.stop):
                raise UserError(f"sampling stop={self.stop!r}: give a list of non-empty strings, or null")
        if self.do_sample and not self.temperature > 0:
            raise UserError(f"sampling temperature={self.temperature}: set it above 0, or do_sample=false for greedy decoding")

    def as_dict(self) -> dict:
        """The settings, those added later only when set: caches keyed on the settings before they existed stay valid."""
        return {k: v for k, v in asdict(self).items() if k not in LATER or v != LATER[k]}

    def generate_kwargs(self) -> dict:
        """Hugging Face `generate`'s arguments (with `stop`, `generate` also needs the tokenizer)."""
        stop = {"stop_strings": list(self.stop)} if self.stop else {}
        extra = self.generation_kwargs or {}
        # repetition_penalty always given: it overrides model defaults (Qwen ships 1.05); the paper samples plainly
        if not self.do_sample:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty,
                    **stop, **extra}
        return {**stop,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or 0,  # 0 disables top-k in transformers
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            **({"min_p": self.min_p} if self.min_p is not None else {}),
            **extra,
        }
