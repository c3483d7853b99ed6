"""attack.py: PAIR against the deployed targets on the same behaviours and seeds, the paper's Table 4.
`python attack.py --help`

Each behaviour's attacks on every target are written, whole, to <run>/attack.parts/ as they finish
(key.json: the behaviours and settings); a crashed run started again in the same `hydra.run.dir`
keeps them and attacks only the rest. At the end: attack.jsonl (a line per behaviour and target, every
turn), attack_results.json (ASR per target, paired intervals and McNemar between targets; report.py
reads it for Table 4), the printed table
and W&B.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError
from tqdm.auto import tqdm

from lightning_da.atomic import keyed_parts_dir, write_text_atomic
from lightning_da.attack.models import (
    CALL_STRIDE,
    TARGETS,
    BestOfNTarget,
    ChatAttacker,
    FirstSampleTarget,
    JudgeScorer,
    RatingScorer,
)
from lightning_da.attack.pair import PAIR, behaviours
from lightning_da.attribution.selectors import check_layer
from lightning_da.data.traces import content_key
from lightning_da.errors import UserError, check_at_least
from lightning_da.generation import VLLMGenerator, check_backend, sample_chats
from lightning_da.latent_best_of_n import LatentBestOfN
from lightning_da.models.student import load_student, student_sampling
from lightning_da.stats import paired_bootstrap
from lightning_da.tables import format_interval, format_number, rounded

log = logging.getLogger(__name__)
SCORERS = ("judge", "rating")


def check_settings(cfg: DictConfig) -> None:
    """Every count and choice attack.py reads, before anything loads."""
    for key in ("depth", "n_streams", "max_attempts", "keep_last_n"):
        check_at_least(cfg.attack[key], f"attack.{key}")
    for key in ("n_candidates", "batch_size"):
        check_at_least(cfg[key], key)
    check_at_least(cfg.max_new_tokens, "max_new_tokens", optional=True)
    unknown = [t for t in cfg.targets if t not in TARGETS]
    if unknown or not cfg.targets:
        raise UserError(f"targets={list(cfg.targets)}: choose one or more of {', '.join(TARGETS)}")
    if not cfg.adapter:
        raise UserError("set adapter=<sft run>/adapter: the aligned student (its adapter disabled is the instruct target)")
    try:
        cfg.attacker.model  # noqa: B018 - resolves attacker=teacher's ${teacher.model}
    except InterpolationKeyError:
        raise UserError("attacker=teacher attacks with a teacher's model: set teacher=<name> (conf/teacher/)") from None
    if cfg.scorer not in SCORERS:
        raise UserError(f"scorer={cfg.scorer}; use judge (the judge= group: success = unsafe) or rating (PAIR's 1-10 by rating_model)")


def chat_sampler(cfg: DictConfig, node: DictConfig, device):
    """`sample(chats, sampling, seed=, continuation=)` for the model `node`: a vLLM engine under
    `generation.backend=vllm` (large attackers), else Hugging Face `generate` on it loaded here."""
    source = instantiate(node)
    tokenizer = source.load_tokenizer()
    if check_backend(cfg.generation):
        engine = VLLMGenerator(source, instantiate(cfg.generation.vllm), cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
        return partial(engine.sample_chats, tokenizer)
    return partial(sample_chats, source.load_model().eval().to(device), tokenizer)


def build_attacker(cfg: DictConfig, device) -> ChatAttacker:
    return ChatAttacker(seed=cfg.seed, sample=chat_sampler(cfg, cfg.attacker.model, device), sampling=instantiate(cfg.attacker.sampling))


def build_scorer(cfg: DictConfig, judge, attacker: ChatAttacker, device):
    """The judge= group's verdicts, or PAIR's 1-10 rating by `rating_model` (the attacker's own model when
    it is the same node: loaded once)."""
    if cfg.scorer == "judge":
        return JudgeScorer(judge)
    if OmegaConf.to_container(cfg.rating_model, resolve=True) == OmegaConf.to_container(cfg.attacker.model, resolve=True):
        return RatingScorer(seed=cfg.seed, sample=attacker.sample)
    return RatingScorer(seed=cfg.seed, sample=chat_sampler(cfg, cfg.rating_model, device))


def build_targets(cfg: DictConfig, model, base, tokenizer) -> dict:
    """name -> target callable, in `cfg.targets`' order, each seeded alike."""
    sampling = student_sampling(cfg)
    builders = {
        "instruct": lambda: FirstSampleTarget(seed=cfg.seed, model=model, tokenizer=tokenizer, sampling=sampling, adapter_disabled=True),
        "aligned": lambda: FirstSampleTarget(seed=cfg.seed, model=model, tokenizer=tokenizer, sampling=sampling),
        "aligned_bon": lambda: BestOfNTarget(seed=cfg.seed, bon=LatentBestOfN(
            model, tokenizer, base=base, layer=cfg.attribution.layer, n=cfg.n_candidates, sampling=sampling, batch_size=cfg.batch_size,
            layer_key="attribution.layer")),
    }
    return {name: builders[name]() for name in cfg.targets}


def resume_key(cfg: DictConfig, goals: list[tuple[str, str]], judge) -> dict:
    """Everything that changes a behaviour's result: the finished behaviours of a run with another key are not
    reused (`keyed_parts_dir`)."""
    return {
        "behaviours": content_key([list(g) for g in goals]), "targets": list(cfg.targets), "seed": cfg.seed, "adapter": cfg.adapter,
        "settings": OmegaConf.to_container(cfg.attack), "student": OmegaConf.to_container(cfg.student, resolve=True),
        "attacker": OmegaConf.to_container(cfg.attacker, resolve=True), "judge": judge.identity(), "n_candidates": cfg.n_candidates,
        "max_new_tokens": cfg.max_new_tokens, "layer": cfg.attribution.layer, "scorer": cfg.scorer,
        "rating_model": OmegaConf.to_container(cfg.rating_model, resolve=True) if cfg.scorer == "rating" else None,
        "backend": cfg.generation.backend, "seeds": f"calls {CALL_STRIDE} apart",  # engines sample differently; the seed scheme
    }


def run_attack(cfg: DictConfig) -> dict:
    check_settings(cfg)
    L.seed_everything(cfg.seed)
    goals = behaviours(instantiate(cfg.benchmark).load())
    judge = instantiate(cfg.judge)
    judge.check()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, base, tokenizer = load_student(cfg, device)
    check_layer(cfg.attribution.layer, model.config.get_text_config().num_hidden_layers + 1, "attribution.layer")
    attacker, targets = build_attacker(cfg, device), build_targets(cfg, model, base, tokenizer)
    scorer = build_scorer(cfg, judge, attacker, device)
    run = Path(cfg.paths.output_dir)
    parts = keyed_parts_dir(run / "attack.parts", resume_key(cfg, goals, judge))
    todo = [k for k in range(len(goals)) if not (parts / f"behaviour-{k:06d}.jsonl").exists()]
    if len(todo) < len(goals):
        log.info("resuming: %d of %d behaviours already in %s", len(goals) - len(todo), len(goals), parts)
    for k in tqdm(todo, desc="PAIR", unit="behaviour"):
        records = []
        for name, target in targets.items():
            for seeded in (attacker, target, scorer):
                if hasattr(seeded, "start"):
                    seeded.start(k)
            result = PAIR(attacker=attacker, target=target, judge=scorer, **cfg.attack).attack(*goals[k])
            records.append({"behaviour": k, "target": name, **result.to_dict()})
            log.info("behaviour %d, %s: %s after %d queries (%d samples)%s", k, name,
                     f"jailbroken in round {result.turns[-1].round}" if result.success else "held", result.queries,
                     result.samples, f"; attacker gave no JSON on streams {result.ended_streams}" if result.ended_streams else "")
        write_text_atomic(parts / f"behaviour-{k:06d}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    text = "".join((parts / f"behaviour-{k:06d}.jsonl").read_text() for k in range(len(goals)))
    write_text_atomic(run / "attack.jsonl", text)
    shutil.rmtree(parts)
    results = summarize([json.loads(line) for line in text.splitlines()], list(cfg.targets), n=cfg.n_candidates, seed=cfg.seed)
    write_text_atomic(run / "attack_results.json", json.dumps(results, indent=2) + "\n")
    print(format_results(results))
    if cfg.get("logger"):
        log_results(instantiate(cfg.logger), cfg, results)
    return results


def summarize(records: list[dict], targets: list[str], *, n: int, seed: int) -> dict:
    """Per target: ASR (% of behaviours jailbroken), the mean target queries and samples (to success, or
    all spent), the per-behaviour outcomes; per pair of targets, the paired interval and McNemar."""
    outcomes = {t: [int(r["success"]) for r in records if r["target"] == t] for t in targets}
    per_target = {}
    for t in targets:
        mine = [r for r in records if r["target"] == t]
        per_target[t] = {"asr": 100 * sum(outcomes[t]) / len(mine), "mean_queries": sum(r["queries"] for r in mine) / len(mine),
                         "mean_samples": sum(r["samples"] for r in mine) / len(mine),
                         "samples_per_query": n if t == "aligned_bon" else 1}
    pairs = {f"{b}_vs_{a}": paired_bootstrap(torch.tensor(outcomes[a]), torch.tensor(outcomes[b]), seed=seed).as_dict()
             for a, b in itertools.combinations(targets, 2)}
    return rounded({"n_behaviours": len(outcomes[targets[0]]), "targets": per_target, "pairs": pairs, "outcomes": outcomes})


def format_results(results: dict) -> str:
    lines = [f"PAIR on {results['n_behaviours']} behaviours",
             f"{'target':<14}{'ASR':>8}{'queries':>10}{'samples':>10}{'samples/query':>15}"]
    for t, v in results["targets"].items():
        lines.append(f"{t:<14}{format_number(v['asr']):>8}{v['mean_queries']:>10.1f}{v['mean_samples']:>10.1f}{v['samples_per_query']:>15}")
    for name, ci in results["pairs"].items():
        lines.append(f"{name}: {format_number(ci['difference'], ' points')} {format_interval(ci['difference_ci'])}, "
                     f"McNemar p {ci['mcnemar_p']:.3g}")
    lines.append("queries: prompts sent to the target until the first success (or all rounds); a Best-of-N query draws N samples.")
    return "\n".join(lines)


def log_results(logger, cfg: DictConfig, results: dict) -> None:
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({f"attack/{k}_{t}": v[k] for t, v in results["targets"].items() for k in ("asr", "mean_queries", "mean_samples")})
    logger.log_metrics({f"attack/{name}_{k}": ci[k] for name, ci in results["pairs"].items() for k in ("difference", "mcnemar_p")})
    logger.save()
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
        logger.experiment.finish()
