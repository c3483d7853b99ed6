"""Best-of-N selectors: each picks one of a prompt's N candidates from the scoring pass.

A selector reads grouped `CandidateScores` (P prompts x N candidates) and returns a `Choice`:
the candidate per prompt plus what the report needs (the layer it used, the prompts its rate may
be computed on). Selectors that need the judge's labels (`majority_vote`, `val_best_layer`,
`oracle_best_layer`) take `bad` (P x N, True = what to avoid: unsafe, refused, or incorrect).
Each is built from its own `conf/attribution/<name>.yaml` node.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from lightning_da.attribution.scoring import CandidateScores
from lightning_da.errors import UserError

DEFAULT_LAYER = 12  # the hidden_states index latent similarity reads unless told (conf/attribution/latent_sim.yaml)


@dataclass(frozen=True)
class Choice:
    """What a selector chose: `index` (P,) the candidate per prompt; `layer` the `hidden_states`
    index it used, if any; `evaluate_on` (P,) bool, the prompts its rate may be computed on
    (None = all of them)."""

    index: torch.Tensor
    layer: int | None = None
    evaluate_on: torch.Tensor | None = None


class Selector(ABC):
    """The protocol: a `name`, `choose`, and `check`, which validates configured values against the
    model before any sampling (a fixed layer must exist). `needs_base`: it reads a score that compares
    the model with its base, so it has nothing to choose by when a model is evaluated as it is."""

    name: str
    needs_base = False

    @abstractmethod
    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice: ...

    def check(self, num_states: int, key: str) -> None:  # noqa: B027 - optional: most have nothing to check
        """`key` is where this selector sits in the config, so an error names the override to set."""


def check_layer(layer: int, num_states: int, key: str = "attribution.layer") -> int:
    if not 0 <= layer < num_states:
        raise UserError(
            f"layer {layer} is outside this model's hidden_states indices 0..{num_states - 1} "
            f"(0 = embeddings, i = decoder block i); set {key} within that range"
        )
    return layer


# Scores closer than this many units of their dtype's precision (relative to the best) are a tie: rounding,
# not evidence. Cosines at layer 0, where a LoRA student and its base share the embeddings, are 1 +- 2e-7.
TIE_ULPS = 16


def tie_tolerance(values: torch.Tensor) -> torch.Tensor:
    """How close to `values` another score must be to tie with it (elementwise)."""
    return TIE_ULPS * torch.finfo(values.dtype).eps * values.abs()


def pick(values: torch.Tensor, *, highest: bool) -> torch.Tensor:
    """Along the last axis (the N candidates): the first candidate whose score ties with the best (the
    highest or the lowest, within `tie_tolerance`), so that a tie, all the way to all N, goes to the first
    candidate: no evidence, no selection. NaN is never chosen unless every score is NaN."""
    filled = torch.nan_to_num(values, nan=-math.inf if highest else math.inf)
    best = filled.amax(-1, keepdim=True) if highest else filled.amin(-1, keepdim=True)
    near = ((filled - best).abs() <= tie_tolerance(best)) | (filled == best)
    return near.to(torch.uint8).argmax(-1)  # the first of the ties


def least_similar(cosine: torch.Tensor) -> torch.Tensor:
    """The method's pick along the last axis (the N candidates): the lowest cosine (ties to the first)."""
    return pick(cosine, highest=False)


def latent_choice_by_layer(scores: CandidateScores) -> torch.Tensor:
    """(P, layers + 1): the argmin-cosine candidate at every layer."""
    return least_similar(scores.cosine.transpose(1, 2))


def selected_rate_by_layer(scores: CandidateScores, flags: torch.Tensor) -> torch.Tensor:
    """Fraction of prompts whose argmin-cosine candidate is flagged, at every layer."""
    choice = latent_choice_by_layer(scores)  # (P, L)
    return flags.gather(1, choice).float().mean(0)


def _needs_labels(name: str, bad: torch.Tensor | None) -> torch.Tensor:
    if bad is None:
        raise ValueError(f"selector {name} needs the judge's labels")
    return bad


@dataclass
class First(Selector):
    """The first sample: the reference point every relative drop is measured against."""

    name: str = "first"

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        return Choice(torch.zeros(scores.kl.size(0), dtype=torch.long))


@dataclass
class Random(Selector):
    seed: int = 0
    name: str = "random"

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        generator = torch.Generator().manual_seed(self.seed)
        return Choice(torch.randint(scores.kl.size(1), (scores.kl.size(0),), generator=generator))


@dataclass
class LatentSimilarity(Selector):
    """The paper's method: the candidate whose final hidden state at `layer` is least like the base's."""

    layer: int = DEFAULT_LAYER
    name: str = "latent_sim"
    needs_base = True

    def check(self, num_states: int, key: str) -> None:
        check_layer(self.layer, num_states, f"{key}.layer")

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        check_layer(self.layer, scores.num_states)
        return Choice(least_similar(scores.cosine[:, :, self.layer]), layer=self.layer)


class ScoreSelector(Selector):
    """The candidate with the highest (`highest`) or lowest of one per-candidate score of `CandidateScores`
    (`score`, a field name), ties to the first (`pick`)."""

    score: ClassVar[str]
    highest: ClassVar[bool]

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        return Choice(pick(getattr(scores, self.score), highest=self.highest))


@dataclass
class KL(ScoreSelector):
    """The candidate whose token distributions diverge most from the base's: KL(FT || base), highest."""

    name: str = "kl"
    score, highest, needs_base = "kl", True, True


@dataclass
class ReverseKL(ScoreSelector):
    """The same from the base's side: KL(base || FT), highest."""

    name: str = "reverse_kl"
    score, highest, needs_base = "reverse_kl", True, True


@dataclass
class BasePerplexity(ScoreSelector):
    """The response the base finds least likely: the base's perplexity of it, highest."""

    name: str = "base_perplexity"
    score, highest, needs_base = "base_perplexity", True, True


@dataclass
class Perplexity(ScoreSelector):
    """The fine-tuned model's most likely response: lowest perplexity."""

    name: str = "perplexity"
    score, highest = "perplexity", False


@dataclass
class HighPerplexity(ScoreSelector):
    """The opposite sign: the fine-tuned model's least likely response, highest perplexity."""

    name: str = "high_perplexity"
    score, highest = "perplexity", True


@dataclass
class SelfCertainty(ScoreSelector):
    """Kang et al. 2025: the response the model is most certain of, highest KL(uniform || p)."""

    name: str = "self_certainty"
    score, highest = "self_certainty", True


@dataclass
class LowSelfCertainty(ScoreSelector):
    """The opposite sign: the response the model is least certain of, lowest self-certainty."""

    name: str = "low_self_certainty"
    score, highest = "self_certainty", False


@dataclass
class Gini(ScoreSelector):
    """The response whose next-token distributions are most concentrated: mean Gini impurity, lowest
    (a confidence score, like perplexity's)."""

    name: str = "gini"
    score, highest = "gini", False


@dataclass
class MajorityVote(Selector):
    """The majority's verdict over the N candidates, then the first candidate with it. A tie (N/2 each way)
    is `tie`: "good", as the paper's Figure 5 caption reads (bad only when more than half are bad), or
    "bad", as the reference code counts it (good only when more than half are good)."""

    tie: str = "good"
    name: str = "majority_vote"

    def check(self, num_states: int, key: str) -> None:
        if self.tie not in ("good", "bad"):
            raise UserError(f"{key}.tie={self.tie!r}: set good (the paper's caption) or bad (the reference code)")

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        bad = _needs_labels(self.name, bad)
        good, bad_count = (~bad).sum(1), bad.sum(1)
        good_majority = good >= bad_count if self.tie == "good" else good > bad_count
        wanted = torch.where(good_majority[:, None], ~bad, bad)
        return Choice(wanted.float().argmax(1))  # first True


@dataclass
class OracleBestLayer(Selector):
    """The layer with the lowest bad rate *on these very labels*: an upper bound, not a method."""

    name: str = "oracle_best_layer"
    needs_base = True

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        bad = _needs_labels(self.name, bad)
        layer = int(selected_rate_by_layer(scores, bad).argmin())
        return Choice(latent_choice_by_layer(scores)[:, layer], layer=layer)


@dataclass
class ValBestLayer(Selector):
    """The best layer chosen on a seeded validation split of the prompts, applied to the rest;
    its rate is computed on the held-out prompts only (`Choice.evaluate_on`)."""

    val_fraction: float = 0.5
    seed: int = 0
    name: str = "val_best_layer"
    needs_base = True

    def check(self, num_states: int, key: str) -> None:
        if not 0 < self.val_fraction < 1:
            raise UserError(f"{key}.val_fraction={self.val_fraction}: set it strictly between 0 and 1")

    def choose(self, scores: CandidateScores, bad: torch.Tensor | None = None) -> Choice:
        bad = _needs_labels(self.name, bad)
        n_prompts = bad.size(0)
        n_val = min(max(1, round(n_prompts * self.val_fraction)), n_prompts - 1)
        if n_val < 1:
            raise UserError("val_best_layer needs at least 2 prompts: one to choose the layer, one to test it")
        val = torch.zeros(n_prompts, dtype=torch.bool)
        val[torch.randperm(n_prompts, generator=torch.Generator().manual_seed(self.seed))[:n_val]] = True
        layer = int(selected_rate_by_layer(scores[val], bad[val]).argmin())
        return Choice(latent_choice_by_layer(scores)[:, layer], layer=layer, evaluate_on=~val)
