"""train.py: prompts -> teacher traces -> judge -> SFT -> adapter (`algorithm=sft`), or the RL stage
from an SFT adapter (`algorithm=grpo`).  `python train.py --help`"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_da import wandb_mode
from lightning_da.algorithms.grpo import SETTINGS, check_settings
from lightning_da.atomic import save_dir_atomic, write_text_atomic
from lightning_da.checkpoints import resolve_checkpoint, wandb_run_id
from lightning_da.data.filtering import judge_counts
from lightning_da.data.rl import TeacherFiltered
from lightning_da.distributed import check_accelerator, launch_ranks, process_rank
from lightning_da.errors import UserError
from lightning_da.fsdp import uses_fsdp
from lightning_da.generation import check_backend
from lightning_da.generation.colocated import PolicyEngine
from lightning_da.generation.vllm_engine import import_vllm
from lightning_da.global_batch import grpo_prompts_per_step, sft_accumulation, world_size
from lightning_da.models.lora import check_adapter_dir
from lightning_da.models.vocabulary import add_think_tokens, wants_think_tokens
from lightning_da.teacher import release_memory, stage_summary, summary_line, teacher_stage

log = logging.getLogger(__name__)


def _sample_table(splits, n: int) -> tuple[list[str], list[list]]:
    columns = ["split", "prompt", "categories", "output", "verdict", "verdict_category"]
    rows = []
    for name in ("kept", "rejected"):
        for row in splits[name].select(range(min(n, len(splits[name])))):
            rows.append([name, row["prompt"], ", ".join(row["categories"]), row["output"], row["verdict"], row["verdict_category"]])
    return columns, rows


def run_train(cfg: DictConfig) -> dict[str, float]:
    """`algorithm=sft` (the default): the distillation pipeline; `algorithm=grpo`: the RL stage.
    Returns the final metrics (also written to metrics.json)."""
    if cfg.get("init_adapter") is not None:
        raise UserError(f"init_adapter={cfg.init_adapter}: the key moved; set algorithm.module.init_adapter={cfg.init_adapter}")
    if cfg.algorithm.name == "grpo":
        check_settings({key: cfg.algorithm.module[key] for key in SETTINGS if key in cfg.algorithm.module})
    L.seed_everything(cfg.seed, workers=True)
    # Fail on what the user can fix now, not after hours of teacher generation or rollouts.
    check_accelerator(cfg.trainer)
    check_backend(cfg.generation)
    checkpoint = resolve_checkpoint(cfg.ckpt_path, cfg.paths.output_dir, sharded=uses_fsdp(cfg.trainer))
    per_rank_batch(cfg)
    instantiate(cfg.judge).check()  # its weights load only when it first judges
    launch_ranks(cfg.trainer)  # every rank now, not at fit: each generates and judges its slice of the traces
    student = instantiate(cfg.student.model)
    tokenizer = student.load_tokenizer()
    prepare = {"sft": _prepare_sft, "grpo": _prepare_grpo}.get(cfg.algorithm.name)
    if prepare is None:
        raise UserError(f"algorithm.name={cfg.algorithm.name}; use algorithm=sft or algorithm=grpo")
    module, datamodule, data_metrics, log_data = prepare(cfg, student, tokenizer)
    # Seed again: training must not depend on whether teacher sampling ran in this process or was cached.
    L.seed_everything(cfg.seed, workers=True)
    return _fit(cfg, module, datamodule, tokenizer, data_metrics, log_data, checkpoint)


def per_rank_batch(cfg: DictConfig) -> None:
    """The recipe's global batch (`algorithm.global_batch_size`) as each rank's settings, written into `cfg` (so that the
    logged config says what ran): SFT's accumulation, GRPO's prompts per step."""
    world = world_size(cfg.trainer)
    if cfg.algorithm.name == "grpo":
        cfg.algorithm.datamodule.prompts_per_step = grpo_prompts_per_step(cfg, world)
    else:
        cfg.trainer.accumulate_grad_batches = sft_accumulation(cfg, world)


def filtered_traces(cfg: DictConfig, data):
    """`data` (a prompt set) -> teacher traces -> judge: the `kept` and `rejected` splits, from the cache when
    an earlier run filled it."""
    spec = instantiate(cfg.spec)
    prompts = data.load(spec.categories)
    log.info("%d prompts; spec %s", len(prompts), spec.name)
    judge = instantiate(cfg.judge)
    rank, world = process_rank()
    stage = teacher_stage(cfg, spec, prompts, judge, rank=rank, world=world)
    if rank == 0:
        log.info("teacher stage: %s", summary_line({**stage_summary(cfg, spec, prompts, judge), **stage.stats()}))
    del judge
    release_memory()
    return stage.splits


def _prepare_sft(cfg: DictConfig, student, tokenizer):
    """Prompts -> teacher traces -> judge -> the SFT module and datamodule."""
    splits = filtered_traces(cfg, instantiate(cfg.data))
    # Before the traces are tokenised; the module resizes the embeddings to match.
    think = wants_think_tokens(cfg.algorithm.think_tokens, instantiate(cfg.teacher.model).name, student.name) and add_think_tokens(tokenizer)
    counts = {f"data/{k}": v for k, v in judge_counts(splits).items()}

    def log_data(logger) -> None:
        if isinstance(logger, WandbLogger):
            columns, rows = _sample_table(splits, cfg.log_samples)
            logger.log_table(key="data/teacher_traces", columns=columns, data=rows)

    # Built objects go in through partials: Hydra would turn a dataclass argument into a config node.
    datamodule = instantiate(cfg.algorithm.datamodule, _partial_=True)(traces=splits["kept"], tokenizer=tokenizer)
    module = instantiate(cfg.algorithm.module, _partial_=True)(student=student, vocab_size=len(tokenizer) if think else None)
    return module, datamodule, counts, log_data


def _prepare_grpo(cfg: DictConfig, student, tokenizer):
    """The RL prompts (the teacher-filtered ones, or a mixture) -> the GRPO module (policy = student +
    init_adapter, trainable) and datamodule."""
    if cfg.algorithm.module.init_adapter:
        check_adapter_dir(cfg.algorithm.module.init_adapter, "algorithm.module.init_adapter")
    data = instantiate(cfg.data)
    rows = data.rows(filtered_traces(cfg, data.prompts)["kept"]) if isinstance(data, TeacherFiltered) else data.load()
    log.info("%d RL prompts (%d harmful)", len(rows), sum(r["task"] == "safety" for r in rows))
    datamodule = instantiate(cfg.algorithm.datamodule, _partial_=True)(rows=rows, tokenizer=tokenizer)
    module = instantiate(cfg.algorithm.module, _partial_=True)(
        student=student, tokenizer=tokenizer,
        completions_file=str(Path(cfg.paths.output_dir) / "completions.jsonl"),
        rollout_engine=rollout_engine(cfg, student),
    )
    return module, datamodule, {"data/rl_prompts": len(rows)}, lambda logger: None


def rollout_engine(cfg: DictConfig, student):
    """With generation.backend=vllm, what builds each rank's colocated engine once its policy exists; else None."""
    if not check_backend(cfg.generation):
        return None
    import_vllm()  # now, not after the policy loaded
    rollouts = cfg.algorithm.datamodule.prompts_per_step * cfg.algorithm.module.num_generations
    return partial(PolicyEngine, student, instantiate(cfg.generation.vllm), cache_dir=cfg.paths.cache_dir, seed=cfg.seed,
                   rollouts=rollouts)


def _fit(cfg: DictConfig, module, datamodule, tokenizer, data_metrics: dict, log_data, checkpoint: Path | None) -> dict[str, float]:
    """The Lightning Trainer from the config (resuming `checkpoint`, and its W&B run); then the
    adapter and metrics.json on rank 0."""
    output_dir = Path(cfg.paths.output_dir)
    logger = False
    if cfg.get("logger"):
        is_wandb = cfg.logger.get("_target_", "").endswith("WandbLogger")
        logger = instantiate(cfg.logger, **({"id": wandb_run_id(output_dir, checkpoint), "resume": "allow"} if is_wandb else {}))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    if trainer.is_global_zero and logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(data_metrics, step=0)
        log_data(logger)

    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(data_metrics)
    adapter = module.gather_adapter()  # a collective under FSDP: before the rank-0 branch
    if trainer.is_global_zero:
        save_dir_atomic(output_dir / "adapter", lambda d: module.save_adapter(d, tokenizer, adapter))
        write_text_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("train/loss", "val/loss", "train/reward") if k in metrics)
        log.info("done: %s; adapter in %s", summary, output_dir / "adapter")
    if isinstance(logger, WandbLogger):
        wandb_mode.finish(logger.experiment)
    return metrics
