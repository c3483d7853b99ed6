"""evaluate.py: sample N candidates, one scoring pass, grade each candidate once, and compare every
selector on the same candidates and labels.  `python evaluate.py --help`"""

from __future__ import annotations

import contextlib
import json
import logging
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_da import wandb_mode
from lightning_da.atomic import write_text_atomic
from lightning_da.attribution.comparison import compare_selectors
from lightning_da.attribution.registry import build_selectors, check_selectors
from lightning_da.attribution.scoring import check_hidden_at, num_hidden_states
from lightning_da.attribution.signal import format_signal, signal_auroc
from lightning_da.best_of_n import best_of_n_sharded, first_sample_block, run_sharded
from lightning_da.distributed import launch_fabric
from lightning_da.errors import check_at_least
from lightning_da.generation import candidate_sampler
from lightning_da.models.student import evaluated_node, load_student, student_sampling
from lightning_da.stats import RESAMPLES, paired_bootstrap
from lightning_da.tables import format_interval, format_number, rounded
from lightning_da.tasks import EvaluationResults, get_task

log = logging.getLogger(__name__)


def check_settings(cfg: DictConfig) -> None:
    """The counts evaluate.py reads, checked before anything loads."""
    for key in ("n_candidates", "batch_size", "scoring_batch_size", "scoring_chunk_tokens"):
        check_at_least(cfg[key], key)
    check_at_least(cfg.max_new_tokens, "max_new_tokens", optional=True)
    check_at_least(cfg.log_samples, "log_samples", minimum=0)
    check_hidden_at(cfg.scoring_hidden_at)


def format_table(rate_name: str, rates: dict, drops: dict, intervals: dict) -> str:
    """Each selector's rate, its drop vs `first` with the 95% interval, the rate difference with its
    interval, and the McNemar p-value; a footnote where a drop is undefined."""
    header = f"{'selector':<20}{rate_name:>10}{'drop vs first':>15}{'95% CI':>17}{'diff (points)':>15}{'95% CI':>17}{'McNemar p':>11}"
    lines = [header]
    for name, rate in rates.items():
        row = f"{name:<20}{format_number(rate):>10}{format_number(drops.get(name)):>15}"
        if name in intervals:
            ci = intervals[name]
            row += (f"{format_interval(ci['drop_ci']):>17}{format_number(ci['difference'], ''):>15}{format_interval(ci['difference_ci']):>17}"
                    f"{ci['mcnemar_p']:>11.3g}")
        lines.append(row)
    lines.append(f"95% CI: paired bootstrap over prompts ({RESAMPLES} resamples); McNemar: exact, two-sided.")
    if any(drops.get(name) is None for name in rates) and drops:
        lines.append(f"n/a: first's {rate_name} is 0 on these prompts, so no relative drop is defined.")
    left_out = max((ci["undefined_resamples"] for ci in intervals.values()), default=0)
    if left_out:
        lines.append(f"Drop intervals leave out the resamples that drew no prompt flagged for first (up to {left_out}).")
    return "\n".join(lines)


def log_results(logger, cfg: DictConfig, rate: str, report: dict, records: list[dict], layer: int | None,
                strongreject: dict | None = None) -> None:
    """Summary metrics to any Lightning logger; on W&B also the per-layer plot and a table of candidates
    with their cosine at `layer` (the one the primary selector used) and the selectors that picked each."""
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({f"eval/{rate}_{k}": v for k, v in report["rates"].items()})
    logger.log_metrics({f"eval/strongreject_{k}": v for k, v in (strongreject or {}).items() if v is not None})
    logger.log_metrics({f"eval/{rate}_drop_{k}": v for k, v in report["drops"].items() if v is not None})
    for name, ci in report["intervals"].items():
        drop_low, drop_high = ci["drop_ci"] or (None, None)
        bounds = {"drop_low": drop_low, "drop_high": drop_high, "difference_low": ci["difference_ci"][0],
                  "difference_high": ci["difference_ci"][1], "mcnemar_p": ci["mcnemar_p"]}
        logger.log_metrics({f"eval/{rate}_{key}_{name}": v for key, v in bounds.items() if v is not None})
    if isinstance(logger, WandbLogger):
        import wandb

        by_layer = wandb.Table(columns=["layer", rate], data=[[i, v] for i, v in enumerate(report["by_layer"])])
        logger.experiment.log({f"eval/{rate}_by_layer": wandb.plot.line(by_layer, "layer", rate, title=f"{rate} by layer")})
        columns = ["prompt", "candidate", "response", "flag", "chosen_by"] + ([f"cosine@{layer}"] if layer is not None else [])
        logger.log_table(key="eval/candidates", columns=columns, data=[
            [r["prompt"], k, c, r["flags"][k], ", ".join(name for name, pick in r["chosen"].items() if pick == k)]
            + ([r["cosine_by_layer"][k][layer]] if layer is not None else [])
            for r in records[: cfg.log_samples] for k, c in enumerate(r["candidates"])
        ])
    logger.save()
    if isinstance(logger, WandbLogger):
        wandb_mode.finish(logger.experiment)


def log_signal(logger, signal: dict | None) -> None:
    """Each score's AUROC and interval bounds as metrics (`eval/auroc/<score>`, `cosine@<layer>` per layer);
    on W&B also the AUROC-by-layer curve."""
    if signal is None:
        return
    values = {name: v for name, v in signal["scores"].items() if v is not None}
    logger.log_metrics({f"eval/auroc/{name}{suffix}": value for name, v in values.items()
                        for suffix, value in (("", v["auroc"]), ("_low", v["ci"][0]), ("_high", v["ci"][1]))})
    if isinstance(logger, WandbLogger):
        import wandb

        layers = [[int(name.split("@")[1]), v["auroc"], *v["ci"]] for name, v in values.items() if name.startswith("cosine@")]
        table = wandb.Table(columns=["layer", "auroc", "low", "high"], data=layers)
        logger.experiment.log({"eval/auroc_by_layer": wandb.plot.line(table, "layer", "auroc", title="AUROC of the cosine by layer")})


def base_first(model, tokenizer, prompts: list[str], answers: list, student_first: list[int], *, rank: int, world_size: int,
               seed: int, batch_size: int, **grading) -> dict:
    """What fine-tuning did: `first` of the base (`model` with the adapter disabled, or `base=`) on the same
    prompts and seeds, with the student's `first` against it (difference = student - base)."""
    blocks = run_sharded(partial(first_sample_block, model, tokenizer), prompts, answers, rank=rank, world_size=world_size,
                         seed=seed, batch_size=batch_size, **grading)
    base_flags, lengths = torch.cat([f for f, _ in blocks]), torch.cat([n for _, n in blocks])
    student = paired_bootstrap(base_flags, torch.tensor(student_first), seed=seed)
    return {"first": rounded(float(base_flags.float().mean()) * 100), "student_vs_base": rounded(student.as_dict()),
            "outcomes": base_flags.int().tolist(), "first_length": rounded(float(lengths.float().mean()))}


def format_base(rate_name: str, base: dict) -> str:
    change = base["student_vs_base"]
    return (f"base student (adapter disabled), first: {format_number(base['first'])} {rate_name}; the fine-tuned student's first "
            f"differs by {format_number(change['difference'], ' points')} {format_interval(change['difference_ci'])}, "
            f"McNemar p {change['mcnemar_p']:.3g}")


def run_evaluate(cfg: DictConfig) -> EvaluationResults:
    check_settings(cfg)
    fabric = launch_fabric(cfg.trainer)
    L.seed_everything(cfg.seed)
    benchmark = instantiate(cfg.benchmark)
    task = get_task(benchmark.task, f"benchmark {benchmark.name}")
    selectors = build_selectors(cfg)
    sampling = student_sampling(cfg)
    rows = benchmark.load()
    judge = instantiate(cfg.judge) if task.uses_judge else None
    if judge is not None:
        judge.check()  # its weights load only when it first judges, after sampling
    sampler = candidate_sampler(cfg)  # vLLM's candidates, if asked; scoring stays on the Hugging Face model below
    model, base, tokenizer = load_student(cfg, fabric.device)
    tokenizer.opening = benchmark.opening  # the benchmark's opening of the assistant turn, if it has one (formats.opening)
    check_selectors(selectors, num_hidden_states(model))  # before the long sampling, not after

    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    common = {"rank": fabric.global_rank, "world_size": fabric.world_size, "seed": cfg.seed, "batch_size": cfg.batch_size,
              "task": task, "judge": judge, "sampling": sampling}
    result = best_of_n_sharded(model, tokenizer, prompts, answers, n=cfg.n_candidates, base=base, sampler=sampler,
                               scoring_batch_size=cfg.scoring_batch_size, chunk_tokens=cfg.scoring_chunk_tokens,
                               hidden_at=cfg.scoring_hidden_at, **common)
    report = compare_selectors(result.scores, result.flags, result.bad, selectors.values(), seed=cfg.seed)
    primary = report["choices"][selectors["attribution"].name]
    signal = signal_auroc(result.scores, result.bad, seed=cfg.seed)
    results = EvaluationResults(
        benchmark=benchmark.name, task=task.name, judge=judge.identity()["judge"] if judge is not None else task.grader,
        n_prompts=len(rows), n_candidates=cfg.n_candidates, layer=primary.layer, rates=report["rates"], drops=report["drops"],
        by_layer=report["by_layer"], intervals=report["intervals"], outcomes=report["outcomes"],
        chosen_layers={name: c.layer for name, c in report["choices"].items() if c.layer is not None},
        unparsable_verdicts=sum(label == "unparsable" for row in result.verdicts for label in row) if task.uses_judge else None,
        signal=signal, evaluated=evaluated(cfg, base), strongreject=strongreject_means(result.graded, report["choices"]),
        first_length=rounded(sum(len(row[0]) for row in result.candidate_ids) / len(result.candidate_ids)),
    )
    if cfg.compare_base and base is not False:
        with model.disable_adapter() if base is None else contextlib.nullcontext():
            results.base = base_first(base if base is not None else model, tokenizer, prompts, answers,
                                      report["outcomes"]["first"], **common)
    if fabric.is_global_zero:
        _write_and_show(cfg, results, candidate_records(rows, result, report["choices"]), report, primary)
    return results


def strongreject_means(graded: list[list[float | None]], choices: dict) -> dict | None:
    """Per selector, the mean StrongREJECT score of the candidates it chose (None without a graded judge); an unreadable
    grade counts 1, the worst, as its verdict counts unsafe."""
    if not any(score is not None for row in graded for score in row):
        return None
    means = {}
    for name, choice in choices.items():  # on the prompts the selector's rate is computed on
        rated = [p for p in range(len(graded)) if choice.evaluate_on is None or bool(choice.evaluate_on[p])]
        scores = [graded[p][int(choice.index[p])] for p in rated]
        means[name] = sum(1.0 if s is None else s for s in scores) / len(scores) if scores else None
    return rounded(means)


def evaluated(cfg: DictConfig, base) -> dict:
    """What was evaluated: the model's name, and its base ("adapter disabled", the base's name, or None)."""
    name = instantiate(evaluated_node(cfg).model).name
    if base is False:
        return {"model": name, "base": None, "as_is": cfg.as_is}
    return {"model": name, "base": "adapter disabled" if base is None else instantiate(cfg.base).name, "as_is": None}


def candidate_records(rows: list[dict], result, choices: dict) -> list[dict]:
    """candidates.jsonl: per prompt, every candidate as text and as the sampled token ids its scores were
    computed from, each score, flag and verdict, and which selector chose which candidate."""
    scores = result.scores
    return [{
        "prompt": row["prompt"],
        "answer": row["answer"],
        "candidates": result.candidates[p],
        "candidate_ids": result.candidate_ids[p],
        "cosine_by_layer": scores.cosine[p].tolist(),
        "kl": scores.kl[p].tolist(),
        "perplexity": scores.perplexity[p].tolist(),
        "self_certainty": scores.self_certainty[p].tolist(),
        "gini": scores.gini[p].tolist(),
        "reverse_kl": scores.reverse_kl[p].tolist(),
        "base_perplexity": scores.base_perplexity[p].tolist(),
        "flags": result.flags[p].tolist(),
        "verdicts": result.verdicts[p],
        "graded": result.graded[p],
        "chosen": {name: int(choice.index[p]) for name, choice in choices.items()},
    } for p, row in enumerate(rows)]


def _write_and_show(cfg: DictConfig, results: EvaluationResults, records: list[dict], report: dict, primary) -> None:
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "candidates.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_text_atomic(output_dir / "results.json", results.to_json())
    rate = results.rate_name
    if cfg.get("logger"):
        shown = primary if primary.layer is not None else report["choices"].get("latent_sim", primary)  # the cosine to show
        logger = instantiate(cfg.logger)
        log_signal(logger, results.signal)
        log_results(logger, cfg, rate, report, records, shown.layer, results.strongreject)
    table = format_table(rate, results.rates, results.drops, results.intervals)
    print(f"\n{results.benchmark}: {results.n_prompts} prompts x {results.n_candidates} candidates, judge {results.judge}\n{table}")
    if results.strongreject is not None:
        print("StrongREJECT score of each selector's choices (mean, 0-1): "
              + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in results.strongreject.items()))
    if results.base is not None:
        print(format_base(rate, results.base))
    print(format_signal(results.signal, results.layer))
    print()
