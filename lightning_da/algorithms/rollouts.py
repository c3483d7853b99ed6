"""GRPO's rollout batch: what a generation round produced, kept together as prompts are filtered,
topped up and split into micro-batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_da.formats import pad_ids


@dataclass
class Rollouts:
    """One flat record of B = P prompts x G rollouts, a prompt's G consecutive: the prompt rows and their
    prefix ids (P), each rollout's completion ids, text and truncation, its rewards (B, F), and, from a vLLM
    engine, its sampling log-probabilities."""

    rows: list[dict]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    truncated: torch.Tensor
    rewards: torch.Tensor
    sampling_logps: list[list[float]] | None = None  # the engine's log-probability of each completion token (vLLM)

    @property
    def num_generations(self) -> int:
        return len(self.completion_ids) // len(self.rows)

    @property
    def group_ids(self) -> torch.Tensor:
        """(B,) the prompt each rollout answers."""
        return torch.arange(len(self.rows)).repeat_interleave(self.num_generations)

    def groups(self, keep: list[int]) -> Rollouts:
        """The rollouts of the prompts `keep`, in that order."""
        g = self.num_generations
        index = [k * g + j for k in keep for j in range(g)]
        return Rollouts([self.rows[k] for k in keep], [self.prompt_ids[k] for k in keep], [self.completion_ids[i] for i in index],
                        [self.texts[i] for i in index], self.truncated[index], self.rewards[index],
                        None if self.sampling_logps is None else [self.sampling_logps[i] for i in index])

    @staticmethod
    def cat(parts: list[Rollouts]) -> Rollouts:
        return Rollouts([r for p in parts for r in p.rows], [x for p in parts for x in p.prompt_ids],
                        [x for p in parts for x in p.completion_ids], [t for p in parts for t in p.texts],
                        torch.cat([p.truncated for p in parts]), torch.cat([p.rewards for p in parts]),
                        None if parts[0].sampling_logps is None else [x for p in parts for x in p.sampling_logps])

    def tensors(self, pad: int) -> tuple[torch.Tensor, ...]:
        """(prompt ids, prompt mask) left-padded and (completion ids, completion mask) right-padded, (B, .) each."""
        prompts = [ids for ids in self.prompt_ids for _ in range(self.num_generations)]
        return (*pad_ids(prompts, pad, left=True), *pad_ids(self.completion_ids, pad, left=False))

    def sampling_tensor(self) -> torch.Tensor | None:
        """(B, T) the sampling log-probabilities, right-padded with 0 as the completions are; None without them."""
        if self.sampling_logps is None:
            return None
        width = max(1, max(len(ids) for ids in self.completion_ids))
        return torch.tensor([row + [0.0] * (width - len(row)) for row in self.sampling_logps], dtype=torch.float32)


def trim(p_ids, p_mask, c_ids, c_mask, l_mask):
    """A micro-batch without the padding columns none of its rows needs."""
    keep_p, keep_c = int(p_mask.sum(1).max()), max(1, int(c_mask.sum(1).max()))
    return p_ids[:, -keep_p:], p_mask[:, -keep_p:], c_ids[:, :keep_c], c_mask[:, :keep_c], l_mask[:, :keep_c]
