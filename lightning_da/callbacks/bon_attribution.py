"""Watch Best-of-N latent attribution work during training: at each validation, sample N candidates
for a fixed subset of benchmark prompts, judge them, and log the ASR of the first sample and of the
latent-similarity pick at `layer`. That pick takes the cheap path (`LatentBestOfN`: states kept while
sampling, the base run to the layer only); `by_layer=true` scores every layer in the full pass
instead, for the ASR at every layer too."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch

from lightning_da.attribution.comparison import compare_selectors
from lightning_da.attribution.scoring import num_hidden_states
from lightning_da.attribution.selectors import First, LatentSimilarity
from lightning_da.best_of_n import best_of_n_sharded, latent_pick_block, run_sharded
from lightning_da.errors import UserError
from lightning_da.fsdp import shards_model
from lightning_da.generation import SamplingConfig
from lightning_da.metrics import gathered_rate, relative_drop
from lightning_da.tasks import TASKS


class BoNAttributionCallback(L.Callback):
    """Logs `val/asr_first`, `val/asr_bon`, `val/asr_drop`, and with `by_layer` a `val/asr_by_layer` table.

    The same machinery as evaluate.py: each DDP rank takes whole batches of the prompts, and the
    rates are computed on every rank's candidates gathered in order (equal to one process).
    `tokenizer` is the datamodule's.
    """

    def __init__(self, benchmark, judge, *, n_prompts: int = 16, n_candidates: int = 4, selector: LatentSimilarity | None = None,
                 sampling: SamplingConfig | None = None, batch_size: int = 8, seed: int = 0, by_layer: bool = False):
        self.benchmark = benchmark
        self.judge = judge
        self.n_prompts = n_prompts
        self.n_candidates = n_candidates
        self.selectors = [First(), selector or LatentSimilarity()]
        self.sampling = sampling or SamplingConfig(max_new_tokens=128)
        self.batch_size = batch_size
        self.seed = seed
        self.by_layer = by_layer
        self.prompts: list[str] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checked once the model exists and before the first step, not at the first validation."""
        if shards_model(trainer):  # each rank would sample and score a different number of steps
            raise UserError("callbacks=with_bon does not run under trainer=fsdp (sharded sampling would hang); "
                            "use trainer=ddp, or evaluate the adapter with evaluate.py after training")
        self.selectors[1].check(num_hidden_states(pl_module.model), "callbacks.bon_attribution.selector")
        if self.prompts is None:
            self.prompts = [r["prompt"] for r in self.benchmark.load()[: self.n_prompts]]

    @torch.no_grad()  # not inference_mode: FSDP reuses what it gathers here in training
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        tokenizer, prompts = trainer.datamodule.tokenizer, self.prompts
        common = {"rank": trainer.global_rank, "world_size": trainer.world_size, "seed": self.seed, "batch_size": self.batch_size,
                  "task": TASKS["safety"], "judge": self.judge, "n": self.n_candidates, "sampling": self.sampling, "progress": False}
        if self.by_layer:
            result = best_of_n_sharded(pl_module.model, tokenizer, prompts, [None] * len(prompts),
                                       scoring_batch_size=self.batch_size, **common)
            report = compare_selectors(result.scores, result.flags, result.bad, self.selectors)
            first, bon = report["rates"]["first"], report["rates"]["latent_sim"]
        else:
            parts = run_sharded(partial(latent_pick_block, pl_module.model, tokenizer), prompts, [None] * len(prompts),
                                layer=self.selectors[1].layer, **common)
            flags, chosen = (torch.cat(part) for part in zip(*parts, strict=True))
            first, bon = gathered_rate(flags[:, 0]), gathered_rate(flags.gather(1, chosen[:, None]))
        pl_module.log_dict({"val/asr_first": first, "val/asr_bon": bon, "val/asr_drop": relative_drop(first, bon)},
                           rank_zero_only=True)
        logger = trainer.logger
        if self.by_layer and trainer.is_global_zero and hasattr(logger, "log_table"):
            logger.log_table(key="val/asr_by_layer", columns=["layer", "asr"], data=[[i, v] for i, v in enumerate(report["by_layer"])])
