"""Best-of-N selectors: each picks one of a prompt's N candidates from the scoring pass.

All work on a `ScoreTable` (P prompts x N candidates). Selectors that need the judge's labels
(`majority_vote`, `val_best_layer`, `oracle_best_layer`) take `unsafe` (P x N, True = unsafe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.errors import UserError


@dataclass
class ScoreTable:
    """Scores grouped by prompt: `cosine` (P, N, layers + 1); the others (P, N)."""

    cosine: torch.Tensor
    kl: torch.Tensor
    perplexity: torch.Tensor
    self_certainty: torch.Tensor

    @classmethod
    def from_scores(cls, scores: CandidateScores, n_candidates: int) -> ScoreTable:
        """Candidates flattened prompt-major (prompt 0's N candidates first) -> grouped."""
        def group(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, n_candidates, *t.shape[1:])

        return cls(group(scores.cosine), group(scores.kl), group(scores.perplexity), group(scores.self_certainty))

    @property
    def num_states(self) -> int:
        return self.cosine.size(-1)


def check_layer(layer: int, num_states: int, key: str = "attribution.layer") -> int:
    if not 0 <= layer < num_states:
        raise UserError(
            f"layer {layer} is outside this model's hidden_states indices 0..{num_states - 1} "
            f"(0 = embeddings, i = decoder block i); set {key} within that range"
        )
    return layer


def _argmin(values: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(values, nan=float("inf")).argmin(dim=-1)


def _argmax(values: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(values, nan=float("-inf")).argmax(dim=-1)


def latent_choice_by_layer(table: ScoreTable) -> torch.Tensor:
    """(P, layers + 1): the argmin-cosine candidate at every layer."""
    return _argmin(table.cosine.transpose(1, 2))


def selected_rate_by_layer(table: ScoreTable, unsafe: torch.Tensor) -> torch.Tensor:
    """Fraction of prompts whose argmin-cosine candidate is unsafe, at every layer."""
    choice = latent_choice_by_layer(table)  # (P, L)
    return unsafe.gather(1, choice).float().mean(0)


@dataclass
class First:
    """The first sample: the reference point every relative drop is measured against."""

    name: str = "first"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(table.kl.size(0), dtype=torch.long)


@dataclass
class Random:
    seed: int = 0
    name: str = "random"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randint(table.kl.size(1), (table.kl.size(0),), generator=generator)


@dataclass
class LatentSimilarity:
    """The paper's method: the candidate whose final hidden state at `layer` is least like the base's."""

    layer: int = 12
    name: str = "latent_sim"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        return _argmin(table.cosine[:, :, check_layer(self.layer, table.num_states)])


@dataclass
class KL:
    """The candidate whose token distributions diverge most from the base's: KL(FT || base), highest."""

    name: str = "kl"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        return _argmax(table.kl)


@dataclass
class Perplexity:
    """The fine-tuned model's most likely response: lowest perplexity."""

    name: str = "perplexity"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        return _argmin(table.perplexity)


@dataclass
class SelfCertainty:
    """Kang et al. 2025: the response the model is most certain of, highest KL(uniform || p)."""

    name: str = "self_certainty"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        return _argmax(table.self_certainty)


def _needs_labels(name: str, unsafe: torch.Tensor | None) -> torch.Tensor:
    if unsafe is None:
        raise ValueError(f"selector {name} needs the judge's labels")
    return unsafe


@dataclass
class MajorityVote:
    """Safe iff more than N/2 candidates are safe: picks the first candidate with the majority verdict."""

    name: str = "majority_vote"

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        unsafe = _needs_labels(self.name, unsafe)
        n = unsafe.size(1)
        safe_majority = (~unsafe).sum(1) * 2 > n
        wanted = torch.where(safe_majority[:, None], ~unsafe, unsafe)
        return wanted.float().argmax(1)  # first True


@dataclass
class OracleBestLayer:
    """The layer with the lowest unsafe rate *on these very labels*: an upper bound, not a method."""

    name: str = "oracle_best_layer"
    layer: int | None = None

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        unsafe = _needs_labels(self.name, unsafe)
        self.layer = int(selected_rate_by_layer(table, unsafe).argmin())
        return latent_choice_by_layer(table)[:, self.layer]


@dataclass
class ValBestLayer:
    """The best layer chosen on a seeded validation split of the prompts, applied to the rest.

    After `choose`, `layer` holds the chosen layer and `evaluate_on` marks the held-out prompts,
    the only ones its ASR may be computed on.
    """

    val_fraction: float = 0.5
    seed: int = 0
    name: str = "val_best_layer"
    layer: int | None = None
    evaluate_on: torch.Tensor | None = None

    def choose(self, table: ScoreTable, unsafe: torch.Tensor | None = None) -> torch.Tensor:
        unsafe = _needs_labels(self.name, unsafe)
        n_prompts = unsafe.size(0)
        n_val = min(max(1, round(n_prompts * self.val_fraction)), n_prompts - 1)
        if n_val < 1:
            raise UserError("val_best_layer needs at least 2 prompts: one to choose the layer, one to test it")
        val = torch.zeros(n_prompts, dtype=torch.bool)
        val[torch.randperm(n_prompts, generator=torch.Generator().manual_seed(self.seed))[:n_val]] = True
        val_table = ScoreTable(table.cosine[val], table.kl[val], table.perplexity[val], table.self_certainty[val])
        self.layer = int(selected_rate_by_layer(val_table, unsafe[val]).argmin())
        self.evaluate_on = ~val
        return latent_choice_by_layer(table)[:, self.layer]
