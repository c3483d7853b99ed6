"""Watch Best-of-N latent attribution work during training: at each validation, sample N candidates
for a fixed subset of benchmark prompts, score them in one pass, judge them, and log the ASR of the
first sample and of the latent-similarity pick, plus the ASR at every layer."""

from __future__ import annotations

import lightning as L
import torch

from lightning_da.attribution.scoring import score_candidates
from lightning_da.attribution.selectors import First, LatentSimilarity, ScoreTable, check_layer, latent_choice_by_layer
from lightning_da.generation import SamplingConfig, flatten_candidates, sample_candidates
from lightning_da.metrics import PercentRate, relative_drop


class BoNAttributionCallback(L.Callback):
    """Logs `val/asr_first`, `val/asr_bon`, `val/asr_drop` and a `val/asr_by_layer` table.

    Prompts are split across DDP ranks; the rates are torchmetrics, so they reduce over all ranks.
    `tokenizer` defaults to the datamodule's.
    """

    def __init__(self, benchmark, judge, *, n_prompts: int = 16, n_candidates: int = 4, layer: int = 12,
                 sampling: SamplingConfig | None = None, batch_size: int = 8, seed: int = 0):
        self.benchmark = benchmark
        self.judge = judge
        self.n_prompts = n_prompts
        self.n_candidates = n_candidates
        self.layer = layer
        self.sampling = sampling or SamplingConfig(max_new_tokens=128)
        self.batch_size = batch_size
        self.seed = seed
        self.prompts: list[str] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.prompts is None:
            rows = self.benchmark.load()[: self.n_prompts]
            self.prompts = [r["prompt"] for r in rows][trainer.global_rank :: trainer.world_size]

    @torch.inference_mode()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        model = pl_module.model
        tokenizer = trainer.datamodule.tokenizer
        check_layer(self.layer, model.config.num_hidden_layers + 1, key="callbacks.bon_attribution.layer")
        candidates = sample_candidates(model, tokenizer, self.prompts, n=self.n_candidates, sampling=self.sampling,
                                       batch_size=self.batch_size, seed=self.seed, progress=False)
        flat_prompts, flat = flatten_candidates(self.prompts, candidates)
        scores = score_candidates(model, tokenizer, flat_prompts, flat, batch_size=self.batch_size, progress=False)
        table = ScoreTable.from_scores(scores, self.n_candidates)
        unsafe = torch.tensor([not v.safe for v in self.judge.judge(flat_prompts, flat)]).reshape(-1, self.n_candidates)

        rates = {}
        for key, choice in (("first", First().choose(table)), ("bon", LatentSimilarity(self.layer).choose(table))):
            metric = PercentRate().to(pl_module.device)
            metric.update(unsafe.gather(1, choice[:, None]).squeeze(1).to(pl_module.device))
            rates[key] = float(metric.compute())  # all-reduced across ranks
        by_layer = []
        per_layer_choice = latent_choice_by_layer(table)
        for layer in range(per_layer_choice.size(1)):
            metric = PercentRate().to(pl_module.device)
            metric.update(unsafe.gather(1, per_layer_choice[:, layer : layer + 1]).squeeze(1).to(pl_module.device))
            by_layer.append(float(metric.compute()))

        pl_module.log_dict({"val/asr_first": rates["first"], "val/asr_bon": rates["bon"],
                            "val/asr_drop": relative_drop(rates["first"], rates["bon"])}, rank_zero_only=True)
        logger = trainer.logger
        if trainer.is_global_zero and hasattr(logger, "log_table"):
            logger.log_table(key="val/asr_by_layer", columns=["layer", "asr"], data=[[i, v] for i, v in enumerate(by_layer)])
