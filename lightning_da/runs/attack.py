"""attack.py: PAIR or TAP against the deployed targets on the same behaviours and seeds, the paper's Table 4.
`python attack.py --help`

Per behaviour and target: the search (driven by `scorer`), then its best prompt measured by the evaluation judge
(`judge=`) at the deployed length, and re-sampled `attack.confirm_samples` times. Each behaviour's records on every
target are written, whole, to <run>/attack.parts/ as they finish (key.json: the behaviours and settings); a crashed
run started again in the same `hydra.run.dir` keeps them and attacks only the rest. At the end: attack.jsonl (a line
per behaviour and target, every turn), the transfer replays (each target's winning prompts on the others),
attack_results.json (report.py reads it for Table 4), jailbreakbench/<target>.json, the printed table and W&B.
"""

from __future__ import annotations

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

from lightning_da import wandb_mode
from lightning_da.atomic import keyed_parts_dir, write_text_atomic
from lightning_da.attack.behaviours import behaviours
from lightning_da.attack.measure import measure
from lightning_da.attack.models import (
    CALL_STRIDE,
    PHASE_CALLS,
    TARGETS,
    BestOfNTarget,
    ChatAttacker,
    FirstSampleTarget,
    JudgeScorer,
    OnTopicEvaluator,
    RatingScorer,
)
from lightning_da.attack.pair import PAIR
from lightning_da.attack.prompts import system_templates
from lightning_da.attack.results import format_results, jailbreakbench_artifact, summarize, transfer_summary
from lightning_da.attack.tap import TAP
from lightning_da.attribution.selectors import check_layer
from lightning_da.data.traces import content_key
from lightning_da.errors import UserError, check_at_least
from lightning_da.generation import VLLMGenerator, check_backend, sample_chats
from lightning_da.judges import StrongRejectRubricJudge
from lightning_da.latent_best_of_n import LatentBestOfN
from lightning_da.models.student import load_student, student_sampling

log = logging.getLogger(__name__)
SCORERS = ("judge", "rating", "strongreject")
METHODS = ("pair", "tap")
# Each method's own settings where attack.depth / attack.n_streams are null (PAIR: the paper's depth 8, 3 streams;
# TAP: its authors' depth 10 from 1 root).
METHOD_DEFAULTS = {"pair": {"depth": 8, "n_streams": 3}, "tap": {"depth": 10, "n_streams": 1}}


def search_settings(cfg: DictConfig) -> dict:
    """The search's counts: attack.* with the method's defaults filled in, TAP's own keys for TAP only (its system
    prompts are `attack_templates`)."""
    settings = OmegaConf.to_container(cfg.attack, resolve=True)
    method = settings.pop("method")
    for key in ("target_max_new_tokens", "confirm_samples", "transfer", "strategies", "system_prompts"):  # not the search's
        settings.pop(key)
    if method != "tap":
        settings.pop("branching_factor"), settings.pop("width")
    return {**settings, **{k: v if settings[k] is None else settings[k] for k, v in METHOD_DEFAULTS[method].items()}}


def attack_templates(cfg: DictConfig) -> list[str]:
    """The attacker's system prompts: attack.system_prompts' files, else attack.strategies."""
    return system_templates(list(cfg.attack.strategies), cfg.attack.system_prompts and list(cfg.attack.system_prompts))


def check_settings(cfg: DictConfig) -> None:
    """Every count and choice attack.py reads, before anything loads."""
    if cfg.attack.method not in METHODS:
        raise UserError(f"attack.method={cfg.attack.method}: choose {' or '.join(METHODS)}")
    for key in ("depth", "n_streams"):
        check_at_least(cfg.attack[key], f"attack.{key}", optional=True)
    for key in ("max_attempts", "keep_last_n", "branching_factor", "width"):
        check_at_least(cfg.attack[key], f"attack.{key}")
    check_at_least(cfg.attack.confirm_samples, "attack.confirm_samples", minimum=0)
    if not isinstance(cfg.attack.transfer, bool):
        raise UserError(f"attack.transfer={cfg.attack.transfer}: set true (replay each target's winning prompts on the others) or false")
    if cfg.attack.confirm_samples >= PHASE_CALLS:
        raise UserError(f"attack.confirm_samples={cfg.attack.confirm_samples}: at most {PHASE_CALLS - 1}")
    for key in ("n_candidates", "batch_size"):
        check_at_least(cfg[key], key)
    check_at_least(cfg.max_new_tokens, "max_new_tokens", optional=True)
    short, full = check_at_least(cfg.attack.target_max_new_tokens, "attack.target_max_new_tokens", optional=True), student_sampling(cfg).max_new_tokens
    if short is not None and short >= full:
        raise UserError(f"attack.target_max_new_tokens={short} is not shorter than the deployed {full} new tokens: leave it "
                        "null (the search's answers are the deployed ones)")
    attack_templates(cfg)
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
        raise UserError(f"scorer={cfg.scorer}; use judge (the judge= group's verdicts), rating (PAIR's 1-10 by rating_model) "
                        "or strongreject (StrongREJECT's rubric graded by rating_model)")


def build_judge(cfg: DictConfig):
    """The evaluation judge (`judge=`)."""
    return instantiate(cfg.judge)


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


def rating_sampler(cfg: DictConfig, attacker: ChatAttacker, device):
    """The sampler of `rating_model` (PAIR's rater, TAP's on-topic evaluator): the attacker's own when it is the same
    model (loaded once)."""
    if OmegaConf.to_container(cfg.rating_model, resolve=True) == OmegaConf.to_container(cfg.attacker.model, resolve=True):
        return attacker.sample
    return chat_sampler(cfg, cfg.rating_model, device)


def build_scorer(cfg: DictConfig, judge, attacker: ChatAttacker, device):
    """The judge= group's verdicts, PAIR's 1-10 rating by `rating_model`, or StrongREJECT's rubric graded by it."""
    if cfg.scorer == "judge":
        return JudgeScorer(judge)
    if cfg.scorer == "strongreject":
        engine = check_backend(cfg.generation)
        return JudgeScorer(StrongRejectRubricJudge(instantiate(cfg.rating_model), backend="vllm" if engine else "hf",
                                                   vllm=instantiate(cfg.generation.vllm) if engine else None))
    return RatingScorer(seed=cfg.seed, sample=rating_sampler(cfg, attacker, device))


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
        "settings": OmegaConf.to_container(cfg.attack, resolve=True), "student": OmegaConf.to_container(cfg.student, resolve=True),
        "system_prompts": [content_key(t) for t in attack_templates(cfg)],
        "attacker": OmegaConf.to_container(cfg.attacker, resolve=True), "judge": judge.identity(), "n_candidates": cfg.n_candidates,
        "max_new_tokens": cfg.max_new_tokens, "layer": cfg.attribution.layer, "scorer": cfg.scorer,
        "rating_model": OmegaConf.to_container(cfg.rating_model, resolve=True) if cfg.scorer != "judge" or cfg.attack.method == "tap" else None,
        "backend": cfg.generation.backend, "seeds": f"calls {CALL_STRIDE} apart, phases {PHASE_CALLS} calls",
    }


def attack_behaviour(k: int, goal: tuple[str, str], row: dict, search_cls, settings: dict, models: dict, targets: dict,
                     judge, cfg: DictConfig) -> list[dict]:
    """Behaviour k on every target: the search, then its best prompt measured (`attack.measure`)."""
    attacker, scorer, on_topic = models["attacker"], models["scorer"], models.get("on_topic")
    records = []
    for name, target in targets.items():
        for seeded in (attacker, target, scorer, on_topic):
            if hasattr(seeded, "start"):
                seeded.start(k)
        short = cfg.attack.target_max_new_tokens
        search = search_cls(attacker=attacker, target=partial(target, max_new_tokens=short), judge=scorer,
                            **({"on_topic": on_topic} if on_topic is not None else {}), **settings)
        result = search.attack(*goal)
        target.start(k, "measure")
        final = measure(result, target, judge, rerun=short is not None, confirm_samples=cfg.attack.confirm_samples)
        records.append({"behaviour": k, "target": name, "category": row.get("category"), "behavior": row.get("behavior"),
                        **result.to_dict(), "final": final})
        log.info("behaviour %d, %s: %s after %d queries (%d samples); the evaluation judge: %s%s", k, name,
                 "the scorer's success" if result.success else "no success", result.queries, result.samples,
                 final["label"], f"; ended conversations {result.ended_streams}" if result.ended_streams else "")
    return records


def replay_transfers(records: list[dict], targets: dict, judge, n_behaviours: int) -> dict[str, dict[str, list]]:
    """Each target's jailbreaking prompts sent once to every other target (at the deployed length, its own seeds) and
    judged: replays[source][destination][behaviour] is True/False, or None where the source won nothing."""
    won = {(r["target"], r["behaviour"]): r for r in records if r["final"]["jailbroken"]}
    replays = {s: {d: [None] * n_behaviours for d in targets if d != s} for s in targets}
    for k in tqdm(range(n_behaviours), desc="transfer", unit="behaviour"):
        for destination, target in targets.items():
            sources = [s for s in targets if s != destination and (s, k) in won]
            if not sources:
                continue
            target.start(k, "transfer")
            responses, _ = target([won[(s, k)]["final"]["prompt"] for s in sources])
            verdicts = judge.judge([won[(sources[0], k)]["goal"]] * len(sources), responses)
            for s, verdict in zip(sources, verdicts, strict=True):
                replays[s][destination][k] = not verdict.safe
    return replays


def run_attack(cfg: DictConfig) -> dict:
    check_settings(cfg)
    L.seed_everything(cfg.seed)
    benchmark = instantiate(cfg.benchmark)
    rows = benchmark.load()
    goals = behaviours(rows)
    judge = build_judge(cfg)
    judge.check()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, base, tokenizer = load_student(cfg, device)
    check_layer(cfg.attribution.layer, model.config.get_text_config().num_hidden_layers + 1, "attribution.layer")
    targets = build_targets(cfg, model, base, tokenizer)
    attacker = build_attacker(cfg, device)
    models = {"attacker": attacker, "scorer": build_scorer(cfg, judge, attacker, device)}
    if cfg.attack.method == "tap":
        models["on_topic"] = OnTopicEvaluator(seed=cfg.seed, sample=rating_sampler(cfg, attacker, device))
    search_cls, settings = PAIR if cfg.attack.method == "pair" else TAP, {**search_settings(cfg), "templates": attack_templates(cfg)}
    run = Path(cfg.paths.output_dir)
    parts = keyed_parts_dir(run / "attack.parts", resume_key(cfg, goals, judge))
    todo = [k for k in range(len(goals)) if not (parts / f"behaviour-{k:06d}.jsonl").exists()]
    if len(todo) < len(goals):
        log.info("resuming: %d of %d behaviours already in %s", len(goals) - len(todo), len(goals), parts)
    for k in tqdm(todo, desc=cfg.attack.method.upper(), unit="behaviour"):
        records = attack_behaviour(k, goals[k], rows[k], search_cls, settings, models, targets, judge, cfg)
        write_text_atomic(parts / f"behaviour-{k:06d}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    text = "".join((parts / f"behaviour-{k:06d}.jsonl").read_text() for k in range(len(goals)))
    records = [json.loads(line) for line in text.splitlines()]
    transfer = None
    if cfg.attack.transfer and len(targets) > 1:
        transfer = transfer_summary(records, replay_transfers(records, targets, judge, len(goals)), seed=cfg.seed)
    results = summarize(records, list(cfg.targets), n=cfg.n_candidates, seed=cfg.seed, method=cfg.attack.method,
                        measures=getattr(judge, "measures", "ASR"))
    results["transfer"] = transfer
    write_text_atomic(run / "attack.jsonl", text)
    parameters = {"method": cfg.attack.method, "model": instantiate(cfg.student.model).name, "adapter": str(cfg.adapter),
                  "attacker": instantiate(cfg.attacker.model).name, "scorer": cfg.scorer, "judge": judge.identity()["judge"],
                  "measures": results["measures"], "benchmark": getattr(benchmark, "name", None)}
    for name in cfg.targets:
        write_text_atomic(run / "jailbreakbench" / f"{name}.json", json.dumps(jailbreakbench_artifact(records, name, parameters), indent=2) + "\n")
    write_text_atomic(run / "attack_results.json", json.dumps(results, indent=2) + "\n")
    shutil.rmtree(parts)
    print(format_results(results, transfer))
    if cfg.get("logger"):
        log_results(instantiate(cfg.logger), cfg, results)
    return results


def log_results(logger, cfg: DictConfig, results: dict) -> None:
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({f"attack/{k}_{t}": v[k] for t, v in results["targets"].items()
                        for k in ("asr", "search_asr", "confirm_rate", "strongreject_score", "mean_queries", "mean_samples")
                        if v[k] is not None})
    logger.log_metrics({f"attack/{name}_{k}": ci[k] for name, ci in results["pairs"].items() for k in ("difference", "mcnemar_p")})
    logger.log_metrics({f"attack/transfer_{name}": cell["rate"] for name, cell in (results["transfer"] or {}).items()
                        if cell["rate"] is not None})
    logger.save()
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
        wandb_mode.finish(logger.experiment)
