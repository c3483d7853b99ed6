"""A reward that is a model: a sequence-classification reward model's score of each completion, as TRL's
`GRPOTrainer` reads one (its `reward_funcs` given a model): the prompt and the completion as a conversation through
the reward model's own chat template (prompt + completion where it has none), right-padded in batches, the score
`logits[:, 0]`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightning_da.errors import UserError
from lightning_da.formats import final_answer
from lightning_da.models.loading import HubModel, torch_dtype

KEY = "algorithm.module.rewards.reward_model.fn"
READS = ("full", "answer")


@dataclass
class RewardModel:
    """`path`: the reward model's directory, or a hub id with a local copy. `reads`: `full` scores the completion as
    sampled (the reasoning too, as TRL passes it), `answer` only the final answer after `</think>`. Loaded at the first
    call, on this rank's GPU when there is one; `batch_size` completions per forward."""

    path: str | None = None
    reads: str = "full"
    batch_size: int = 8
    dtype: str = "auto"
    trust_remote_code: bool = False
    _loaded: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.path:
            raise UserError(f"the reward model has no path: set {KEY}.path=<its directory, or a hub id with a local copy>")
        if self.reads not in READS:
            raise UserError(f"{KEY}.reads={self.reads}; use one of {', '.join(READS)}")
        if self.batch_size < 1:
            raise UserError(f"{KEY}.batch_size={self.batch_size}: set it to 1 or more")

    def _load(self) -> tuple:
        if self._loaded is None:
            location = HubModel(self.path, config_key=KEY).local_dir()
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=self.trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(location, dtype=torch_dtype(self.dtype),
                                                                       trust_remote_code=self.trust_remote_code)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at each row's last real token
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
            self._loaded = (model.to(device).eval(), tokenizer)
        return self._loaded

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """What the reward model reads: each exchange through its chat template (TRL's conversational path), else joined."""
        _, tokenizer = self._load()
        answers = completions if self.reads == "full" else [final_answer(c) for c in completions]
        if tokenizer.chat_template is None:
            return [p + a for p, a in zip(prompts, answers, strict=True)]
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False)
                for p, a in zip(prompts, answers, strict=True)]

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **row) -> list[float]:
        model, tokenizer = self._load()
        texts = self.texts(prompts, completions)
        scores = []
        for start in range(0, len(texts), self.batch_size):
            # As TRL: right padding, no special tokens added (the template has them)
            inputs = tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True, padding_side="right",
                               add_special_tokens=False).to(model.device)
            scores += model(**inputs).logits[:, 0].float().tolist()
        return scores
