"""The evaluation behind evaluate.py: sample N candidates, one scoring pass, judge each candidate
once, and compare every selector on the same candidates and labels."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_da.atomic import write_text_atomic
from lightning_da.attribution import score_candidates
from lightning_da.attribution.registry import build_selectors
from lightning_da.attribution.report import RATE_NAMES, compare_selectors
from lightning_da.attribution.scoring import CandidateScores
from lightning_da.attribution.selectors import ScoreTable, check_layer
from lightning_da.distributed import all_gather_objects, batch_aligned_shard, launch_fabric
from lightning_da.errors import UserError
from lightning_da.generation import flatten_candidates, sample_candidates
from lightning_da.judges import RefusalPrefixJudge
from lightning_da.judges.answers import letter_correct, number_correct
from lightning_da.models.lora import load_adapter

log = logging.getLogger(__name__)

# Who labels the candidates of a benchmark that the safety judge does not.
GRADERS = {"number": "last_number", "choice": "answer_letter", "over_refusal": "refusal_prefix"}


def load_student(cfg: DictConfig, device: torch.device):
    """(model, base, tokenizer) on `device`: the adapter on the student, base = adapter disabled
    (None); or, for a fully fine-tuned student, a separately loaded `base`."""
    source = instantiate(cfg.student.model)
    tokenizer = source.load_tokenizer()
    if cfg.adapter:
        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise UserError(f"adapter={cfg.adapter} is not a peft adapter directory (no adapter_config.json)")
        model, base = load_adapter(source.load_model(), str(cfg.adapter)), None
    elif cfg.base:
        model, base = source.load_model(), instantiate(cfg.base).load_model().eval()
    else:
        raise UserError("set adapter=<train run>/adapter (the base is the student with it disabled), or base=... for a fully fine-tuned student")
    return model.eval().to(device), (base.to(device) if base is not None else None), tokenizer


def grade(task: str, judge, prompts: list[str], candidates: list[list[str]], answers: list) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(flags, bad, verdicts), each (P, N): what the rate counts, what selectors avoid, the judge's calls."""
    n = len(candidates[0])
    flat_prompts, flat = flatten_candidates(prompts, candidates)
    verdicts: list = [None] * len(flat)
    if task == "safety":
        verdicts = judge.judge(flat_prompts, flat)
        flags = torch.tensor([not v.safe for v in verdicts])  # unparsable counts as unsafe
        bad = flags
    elif task == "over_refusal":
        verdicts = RefusalPrefixJudge().judge(flat_prompts, flat)
        flags = torch.tensor([v.label == "safe" for v in verdicts])  # refused
        bad = flags
    else:
        check = number_correct if task == "number" else letter_correct
        flat_answers = [a for a in answers for _ in range(n)]
        flags = torch.tensor([check(r, a) for r, a in zip(flat, flat_answers, strict=True)])
        bad = ~flags
    shape = (len(prompts), n)
    return flags.reshape(shape), bad.reshape(shape), [verdicts[i : i + n] for i in range(0, len(verdicts), n)]


def _table(rate_name: str, report: dict) -> str:
    lines = [f"{'selector':<20}{rate_name:>14}{'drop vs first':>16}"]
    for name, rate in report["rates"].items():
        lines.append(f"{name:<20}{rate:>13.1f}%{report['drops'].get(name, float('nan')):>15.1f}%")
    return "\n".join(lines)


def log_results(logger, cfg: DictConfig, rate: str, report: dict, records: list[dict]) -> None:
    """Summary metrics to any Lightning logger; on W&B also the per-layer plot and a table of candidates."""
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({f"eval/{rate}_{k}": v for k, v in report["rates"].items()})
    logger.log_metrics({f"eval/{rate}_drop_{k}": v for k, v in report["drops"].items()})
    if isinstance(logger, WandbLogger):
        import wandb

        by_layer = wandb.Table(columns=["layer", rate], data=[[i, v] for i, v in enumerate(report["by_layer"])])
        logger.experiment.log({f"eval/{rate}_by_layer": wandb.plot.line(by_layer, "layer", rate, title=f"{rate} by layer")})
        layer = cfg.attribution.get("layer") or 0
        logger.log_table(key="eval/candidates", columns=["prompt", "candidate", "response", "flag", f"cosine@{layer}"], data=[
            [r["prompt"], k, c, r["flags"][k], r["cosine_by_layer"][k][layer]]
            for r in records[: cfg.log_samples] for k, c in enumerate(r["candidates"])
        ])
    logger.save()
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()


def _evaluate_block(cfg: DictConfig, model, base, tokenizer, benchmark, judge, rows: list[dict], seed: int) -> dict:
    """Sample, score and grade one block of prompts (all of them, or this DDP rank's)."""
    sampling = instantiate(cfg.student.sampling)
    if cfg.max_new_tokens:
        sampling.max_new_tokens = cfg.max_new_tokens
    prompts = [r["prompt"] for r in rows]
    started = time.perf_counter()
    candidates = sample_candidates(
        model, tokenizer, prompts, n=cfg.n_candidates, sampling=sampling, batch_size=cfg.batch_size, seed=seed
    )
    sampled = time.perf_counter()
    flat_prompts, flat = flatten_candidates(prompts, candidates)
    scores = score_candidates(model, tokenizer, flat_prompts, flat, base=base, batch_size=cfg.scoring_batch_size,
                              chunk_tokens=cfg.scoring_chunk_tokens)
    log.info("sampling %.1f s, scoring %.1f s (%d candidates)", sampled - started, time.perf_counter() - sampled, len(flat_prompts))
    flags, bad, verdicts = grade(benchmark.task, judge, prompts, candidates, [r["answer"] for r in rows])
    labels = [[v.label if v is not None else None for v in row] for row in verdicts]
    return {"candidates": candidates, "scores": scores, "flags": flags, "bad": bad, "verdicts": labels}


def run_evaluate(cfg: DictConfig) -> dict:
    fabric = launch_fabric(cfg.trainer)
    L.seed_everything(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    benchmark = instantiate(cfg.benchmark)
    rows = benchmark.load()
    primary = instantiate(cfg.attribution)
    selectors = build_selectors(cfg.compare, primary, seed=cfg.seed)
    model, base, tokenizer = load_student(cfg, fabric.device)
    if getattr(primary, "layer", None) is not None:  # fail before the long sampling, not after
        check_layer(primary.layer, model.config.num_hidden_layers + 1)
    judge = instantiate(cfg.judge) if benchmark.task == "safety" else None

    block = batch_aligned_shard(len(rows), cfg.batch_size, fabric.global_rank, fabric.world_size)
    part = _evaluate_block(cfg, model, base, tokenizer, benchmark, judge, rows[block.start : block.stop],
                           seed=cfg.seed + block.start) if len(block) else None
    parts = [p for p in all_gather_objects(fabric, part) if p is not None]
    candidates = [row for p in parts for row in p["candidates"]]
    verdicts = [row for p in parts for row in p["verdicts"]]
    flags, bad = torch.cat([p["flags"] for p in parts]), torch.cat([p["bad"] for p in parts])
    table = ScoreTable.from_scores(CandidateScores.cat([p["scores"] for p in parts]), cfg.n_candidates)
    report = compare_selectors(table, flags, bad, selectors)

    rate = RATE_NAMES[benchmark.task]
    results = {
        "benchmark": benchmark.name,
        "judge": judge.identity()["judge"] if judge is not None else GRADERS[benchmark.task],
        "n_prompts": len(rows),
        "n_candidates": cfg.n_candidates,
        "layer": getattr(primary, "layer", None),
        rate: report["rates"],
        f"{rate}_drop": report["drops"],
        f"{rate}_by_layer": report["by_layer"],
        "chosen_layers": {s.name: s.layer for s in selectors if getattr(s, "layer", None) is not None},
    }
    if benchmark.task == "safety":
        results["unparsable_verdicts"] = sum(label == "unparsable" for row in verdicts for label in row)

    if not fabric.is_global_zero:
        return results
    records = []
    for p, row in enumerate(rows):
        records.append({
            "prompt": row["prompt"],
            "answer": row["answer"],
            "candidates": candidates[p],
            "cosine_by_layer": table.cosine[p].tolist(),
            "kl": table.kl[p].tolist(),
            "perplexity": table.perplexity[p].tolist(),
            "self_certainty": table.self_certainty[p].tolist(),
            "flags": flags[p].tolist(),
            "verdicts": verdicts[p],
            "chosen": {name: int(choice[p]) for name, choice in report["choices"].items()},
        })
    write_text_atomic(output_dir / "candidates.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_text_atomic(output_dir / "results.json", json.dumps(results, indent=2) + "\n")

    if cfg.get("logger"):
        log_results(instantiate(cfg.logger), cfg, rate, report, records)
    print(f"\n{benchmark.name}: {len(rows)} prompts x {cfg.n_candidates} candidates, judge {results['judge']}\n{_table(rate, report)}\n")
    return results
