"""The training pipeline behind train.py: prompts -> teacher traces -> judge -> SFT -> adapter."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_da.atomic import save_dir_atomic, write_text_atomic
from lightning_da.checkpoints import check_checkpoint
from lightning_da.data.filtering import judge_counts, judge_traces
from lightning_da.data.prompts import prompts_fingerprint
from lightning_da.data.traces import TraceCache, generate_traces
from lightning_da.distributed import check_accelerator
from lightning_da.generation import sample_chats

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Return freed model memory (after the caller dropped its references) before the next model loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def teacher_traces(cfg: DictConfig, spec, prompts):
    """Generate (or resume, or reuse) the teacher's traces for `prompts` with `spec` in context."""
    source = instantiate(cfg.teacher.model)
    sampling = instantiate(cfg.teacher.sampling)
    cache = TraceCache(
        cfg.paths.cache_dir,
        {
            "teacher": source.identity(),
            "prompts": prompts_fingerprint(prompts),
            "spec": spec.identity(),
            "sampling": sampling.as_dict(),
            "samples_per_prompt": cfg.teacher.samples_per_prompt,
            "demonstrations": OmegaConf.to_container(cfg.teacher.demonstrations),
            "seed": cfg.seed,
        },
    )
    if cache.complete:
        return cache, cache.dataset()
    traces = _generate_with_teacher(cfg, source, cache, spec, sampling, prompts)
    release_memory()
    return cache, traces


def _generate_with_teacher(cfg: DictConfig, source, cache: TraceCache, spec, sampling, prompts):
    """Load the teacher and fill `cache`; the model goes out of scope when this returns."""
    tokenizer = source.load_tokenizer()
    model = source.load_model().eval()
    if getattr(source, "device_map", None) is None and torch.cuda.is_available():
        model = model.cuda()
    k = cfg.teacher.samples_per_prompt

    def generate(rows: list[dict], first_index: int) -> list[list[str]]:
        chats = [spec.teacher_messages(row["prompt"], row["categories"], cfg.teacher.demonstrations) for row in rows]
        outputs = sample_chats(model, tokenizer, chats, sampling, num_return_sequences=k, seed=cfg.seed + first_index)
        return [outputs[i : i + k] for i in range(0, len(outputs), k)]

    return generate_traces(cache, prompts, generate, batch_size=cfg.teacher.batch_size)


def _sample_table(splits, n: int) -> tuple[list[str], list[list]]:
    columns = ["split", "prompt", "categories", "output", "verdict", "verdict_category"]
    rows = []
    for name in ("kept", "rejected"):
        for row in splits[name].select(range(min(n, len(splits[name])))):
            rows.append([name, row["prompt"], ", ".join(row["categories"]), row["output"], row["verdict"], row["verdict_category"]])
    return columns, rows


def run_train(cfg: DictConfig) -> dict[str, float]:
    """The whole SFT pipeline; returns the final metrics (also written to metrics.json)."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    # Fail on what the user can fix now, not after hours of teacher generation.
    check_accelerator(cfg.trainer)
    check_checkpoint(cfg.ckpt_path)

    spec = instantiate(cfg.spec)
    prompts = instantiate(cfg.data).load(spec.categories)
    student = instantiate(cfg.student.model)
    tokenizer = student.load_tokenizer()  # fail early, before hours of teacher generation
    log.info("%d prompts; spec %s", len(prompts), spec.name)

    cache, traces = teacher_traces(cfg, spec, prompts)
    judge = instantiate(cfg.judge)
    splits = judge_traces(cache, traces, judge)
    del judge
    release_memory()
    counts = judge_counts(splits)

    # Seed again: training must not depend on whether teacher sampling ran in this process or was cached.
    L.seed_everything(cfg.seed, workers=True)
    # Built objects go in through partials: Hydra would turn a dataclass argument into a config node.
    datamodule = instantiate(cfg.algorithm.datamodule, _partial_=True)(traces=splits["kept"], tokenizer=tokenizer)
    module = instantiate(cfg.algorithm.module, _partial_=True)(student=student)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)

    if trainer.is_global_zero and logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics({f"data/{k}": v for k, v in counts.items()}, step=0)
        if isinstance(logger, WandbLogger):
            columns, rows = _sample_table(splits, cfg.log_samples)
            logger.log_table(key="data/teacher_traces", columns=columns, data=rows)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update({f"data/{k}": v for k, v in counts.items()})
    if trainer.is_global_zero:
        save_dir_atomic(output_dir / "adapter", lambda d: module.save_adapter(d, tokenizer))
        write_text_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        log.info(
            "done: %d traces kept, %d rejected; train/loss %.4f, val/loss %.4f; adapter in %s",
            counts["traces_kept"], counts["traces_rejected"], metrics.get("train/loss", float("nan")),
            metrics.get("val/loss", float("nan")), output_dir / "adapter",
        )
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
    return metrics
