"""Watch Best-of-N latent attribution work during training: at each validation, sample N candidates
for a fixed subset of benchmark prompts, score them in one pass, judge them, and log the ASR of the
first sample and of the latent-similarity pick, plus the ASR at every layer."""

from __future__ import annotations

import lightning as L
import torch

from lightning_da.attribution.report import compare_selectors
from lightning_da.attribution.scoring import num_hidden_states
from lightning_da.attribution.selectors import First, LatentSimilarity
from lightning_da.best_of_n import best_of_n_sharded
from lightning_da.generation import SamplingConfig
from lightning_da.metrics import relative_drop


class BoNAttributionCallback(L.Callback):
    """Logs `val/asr_first`, `val/asr_bon`, `val/asr_drop` and a `val/asr_by_layer` table.

    The same machinery as evaluate.py: each DDP rank takes whole batches of the prompts, and the
    rates are computed on every rank's candidates gathered in order (equal to one process).
    `tokenizer` is the datamodule's.
    """

    def __init__(self, benchmark, judge, *, n_prompts: int = 16, n_candidates: int = 4, layer: int = 12,
                 sampling: SamplingConfig | None = None, batch_size: int = 8, seed: int = 0):
        self.benchmark = benchmark
        self.judge = judge
        self.n_prompts = n_prompts
        self.n_candidates = n_candidates
        self.selectors = [First(), LatentSimilarity(layer=layer)]
        self.sampling = sampling or SamplingConfig(max_new_tokens=128)
        self.batch_size = batch_size
        self.seed = seed
        self.prompts: list[str] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checked once the model exists and before the first step, not at the first validation."""
        self.selectors[1].check(num_hidden_states(pl_module.model), "callbacks.bon_attribution")
        if self.prompts is None:
            self.prompts = [r["prompt"] for r in self.benchmark.load()[: self.n_prompts]]

    @torch.no_grad()  # not inference_mode: FSDP reuses what it gathers here in training
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        result = best_of_n_sharded(
            pl_module.model, trainer.datamodule.tokenizer, self.prompts, [None] * len(self.prompts),
            rank=trainer.global_rank, world_size=trainer.world_size, seed=self.seed, batch_size=self.batch_size,
            task="safety", judge=self.judge, n=self.n_candidates, sampling=self.sampling,
            scoring_batch_size=self.batch_size, progress=False,
        )
        report = compare_selectors(result.scores, result.flags, result.bad, self.selectors)
        first, bon = report["rates"]["first"], report["rates"]["latent_sim"]
        pl_module.log_dict({"val/asr_first": first, "val/asr_bon": bon, "val/asr_drop": relative_drop(first, bon)},
                           rank_zero_only=True)
        logger = trainer.logger
        if trainer.is_global_zero and hasattr(logger, "log_table"):
            logger.log_table(key="val/asr_by_layer", columns=["layer", "asr"], data=[[i, v] for i, v in enumerate(report["by_layer"])])
