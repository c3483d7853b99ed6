"""How to sample: the settings every backend reads (teacher chats, Best-of-N candidates, GRPO rollouts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lightning_da.errors import UserError, check_at_least


@dataclass
class SamplingConfig:
    """Sampling settings; `top_k: null` means no top-k cut (Hugging Face's default is 50); `stop`: strings that end
    a completion, kept in it (PAIR's attacker stops at the JSON's closing brace)."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 2048
    do_sample: bool = True
    stop: list[str] | None = None

    def __post_init__(self) -> None:
        check_at_least(self.max_new_tokens, "max_new_tokens (sampling)")
        if self.stop is not None:
            self.stop = list(self.stop)  # a Hydra list made plain (settings are written to JSON keys)
            if not all(isinstance(s, str) and s for s in self.stop):
                raise UserError(f"sampling stop={self.stop!r}: give a list of non-empty strings, or null")
        if self.do_sample and not self.temperature > 0:
            raise UserError(f"sampling temperature={self.temperature}: set it above 0, or do_sample=false for greedy decoding")

    def as_dict(self) -> dict:
        """The settings, `stop` only when set: caches keyed on the settings before it existed stay valid."""
        settings = asdict(self)
        return settings if self.stop else {k: v for k, v in settings.items() if k != "stop"}

    def generate_kwargs(self) -> dict:
        """Hugging Face `generate`'s arguments (with `stop`, `generate` also needs the tokenizer)."""
        stop = {"stop_strings": list(self.stop)} if self.stop else {}
        if not self.do_sample:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens, **stop}
        return {**stop,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or 0,  # 0 disables top-k in transformers
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": 1.0,  # override model defaults (Qwen ships 1.05): the paper samples plainly
        }
