"""Deployable latent Best-of-N: sample N candidates and return the one least attributable to the base
model, at about the cost of sampling them.

    bon = LatentBestOfN.from_pretrained("outputs/train/runs/<run>/adapter")
    picks = bon.generate(["How do I pick a lock?"], n=8, layer=12)

The fine-tuned side's state is read while each candidate is sampled; the base runs only up to the
layer, with no logits (`lightning_da.attribution.latent`). The choice is evaluate.py's `latent_sim`
on the same candidates.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_da.attribution.latent import CHUNK_TOKENS, latent_block
from lightning_da.attribution.scoring import num_hidden_states
from lightning_da.attribution.selectors import DEFAULT_LAYER, check_layer
from lightning_da.configs import CONF_DIR
from lightning_da.errors import UserError, check_at_least
from lightning_da.generation import Completion, SamplingConfig, batch_seed, candidate_sampler, decode_completions
from lightning_da.models.lora import check_adapter_dir
from lightning_da.models.student import load_student, student_sampling

log = logging.getLogger(__name__)


@dataclass
class LatentPick:
    """One prompt's Best-of-N: the chosen `response` (candidate `index`), every candidate as text and
    as sampled (`completions`: token ids, whether `max_new_tokens` cut it), and each one's cosine to
    the base at `layer` (lowest chosen). `as_dict` keeps each candidate's response ids (no EOS), the ids
    its cosine was computed from: text need not tokenise back to them."""

    prompt: str
    response: str
    index: int
    candidates: list[str]
    cosines: list[float]
    layer: int
    completions: list[Completion]

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "response": self.response, "index": self.index, "layer": self.layer,
                "candidates": self.candidates, "candidate_ids": [c.response_ids for c in self.completions],
                "cosines": self.cosines, "truncated": [c.truncated for c in self.completions]}


def _sampling(default: SamplingConfig, overrides: dict) -> SamplingConfig:
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown sampling setting(s) {unknown}; use any of {sorted(known)}")
    return dataclasses.replace(default, **overrides)


class LatentBestOfN:
    """A fine-tuned student (with its adapter; or `base=` a separately loaded base for a fully
    fine-tuned one) that generates by latent Best-of-N.

    `sampling` is the default for `generate` (any of its fields can be overridden per call);
    `batch_size` prompts (x N candidates) are sampled together; `sampler`, another engine's
    `sample_completions` (vLLM's), samples instead of Hugging Face `generate`, and the fine-tuned
    states then come from a forward through the first `layer` blocks. `layer_key` is the setting an
    out-of-range layer's error names."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, base: PreTrainedModel | None = None,
                 layer: int = DEFAULT_LAYER, n: int = 8, sampling: SamplingConfig | None = None, batch_size: int = 8,
                 chunk_tokens: int = CHUNK_TOKENS, sampler: Callable | None = None, layer_key: str = "layer"):
        if base is None and not hasattr(model, "disable_adapter"):
            raise UserError("the student has no adapter, so there is no base to disable it to: load it with its adapter, "
                            "or pass base= (the model before fine-tuning)")
        self.model, self.tokenizer, self.base, self.sampler = model, tokenizer, base, sampler
        self.num_states = num_hidden_states(model)
        self.layer_key = layer_key
        self.layer = check_layer(layer, self.num_states, layer_key)
        self.n = check_at_least(n, "n")
        self.sampling = sampling or SamplingConfig()
        self.batch_size = check_at_least(batch_size, "batch_size")
        self.chunk_tokens = check_at_least(chunk_tokens, "chunk_tokens")
        self.timings: dict[str, float] = {}  # seconds of the last generate: sampling, selection (summed over blocks)

    @classmethod
    def from_config(cls, cfg: DictConfig, device: torch.device | str | None = None) -> LatentBestOfN:
        """From a composed generate.py or evaluate.py config: `student`, `adapter` (or `base`),
        `attribution.layer`, `n_candidates`, `student.sampling` with `max_new_tokens`, `batch_size`,
        `generation` (the backend)."""
        if "layer" not in cfg.attribution:
            raise UserError(f"attribution ({cfg.attribution._target_}) has no layer; latent Best-of-N needs attribution=latent_sim")
        if cfg.get("as_is"):
            raise UserError(f"as_is={cfg.as_is}: latent Best-of-N compares a model with its base; set adapter= or base=")
        sampler = candidate_sampler(cfg)
        model, base, tokenizer = load_student(cfg, device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model, tokenizer, base=base, layer=cfg.attribution.layer, n=cfg.n_candidates, sampler=sampler,
                   sampling=student_sampling(cfg), batch_size=cfg.batch_size, layer_key="attribution.layer")

    @classmethod
    def from_pretrained(cls, adapter: str | Path, *, student: str | None = None, device: torch.device | str | None = None,
                        overrides: list[str] = ()) -> LatentBestOfN:
        """The adapter a train run saved (`<run>/adapter`) on its student: the one that run trained
        (its `.hydra/config.yaml`), or `student=` a `conf/student` name. `overrides` are generate.py's
        (e.g. `["attribution.layer=16", "n_candidates=4"]`)."""
        check_adapter_dir(adapter)
        trained = Path(adapter).parent / ".hydra" / "config.yaml"
        recorded = OmegaConf.load(trained).get("student") if student is None and trained.is_file() else None
        if student is None and recorded is None:
            raise UserError(f"{adapter} is not in a train run (no {trained}); name its student, e.g. student='smollm2_135m'")
        choice = [f"student={student}"] if student is not None else []
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="generate", overrides=[*choice, f"adapter={adapter}", *overrides])
        except MissingConfigException as exc:  # an unknown student= (or group in `overrides`)
            raise UserError(f"{str(exc).splitlines()[0]}; use one of {exc.options}") from None
        if recorded is not None:
            with open_dict(cfg):
                cfg.student = recorded
        return cls.from_config(cfg, device)

    def generate(self, prompts: list[str], n: int | None = None, layer: int | None = None, *, seed: int = 0,
                 progress: bool = True, **sampling) -> list[LatentPick]:
        """N candidates per prompt (`n`, else the default), each scored by its cosine to the base at
        `hidden_states[layer]` (0 = embeddings, i = block i; else the default), the lowest chosen.
        `sampling`: SamplingConfig fields for this call (temperature, top_p, top_k, max_new_tokens,
        do_sample). Batch k of prompts is seeded `seed + k x batch_size`, as evaluate.py seeds it."""
        if not prompts:
            return []
        n = check_at_least(self.n if n is None else n, "n")
        layer = self.layer if layer is None else check_layer(layer, self.num_states, "layer")
        config = _sampling(self.sampling, sampling)
        picks: list[LatentPick] = []
        self.timings = {"sampling": 0.0, "selection": 0.0}
        # A block of batch_size prompts at a time: sampled, scored and decoded before the next, so the
        # kept states never outgrow one batch; each block seeded as one sample_completions call seeds it.
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="latent best-of-n", unit="batch",
                          disable=not progress, leave=False):
            picks += self._block(prompts[start : start + self.batch_size], n, layer, config, batch_seed(seed, start))
        log.info("sampling %.1f s, selection %.1f s (%d candidates)", *self.timings.values(), len(prompts) * n)
        return picks

    def _block(self, prompts: list[str], n: int, layer: int, sampling: SamplingConfig, seed: int) -> list[LatentPick]:
        block = latent_block(self.model, self.tokenizer, prompts, n=n, layer=layer, sampling=sampling, seed=seed,
                             batch_size=self.batch_size, chunk_tokens=self.chunk_tokens, base=self.base, sampler=self.sampler)
        self.timings["sampling"] += block.sampling_s
        self.timings["selection"] += block.selection_s
        texts = decode_completions(self.tokenizer, block.completions)
        return [LatentPick(prompt, texts[p][int(block.chosen[p])], int(block.chosen[p]), texts[p], block.cosines[p].tolist(), layer,
                           block.completions[p]) for p, prompt in enumerate(prompts)]
