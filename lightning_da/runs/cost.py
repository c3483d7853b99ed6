"""What a plan's stage will generate at most, for `plan.py dry_run=true`: the jobs of its sweep and the tokens they
sample (prompts x samples x max new tokens), from each job's own composed config, without loading a model or a
hub dataset (the embedded sets and local files are counted; hub sets by their documented size)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_da.configs import CONF_DIR
from lightning_da.data.benchmarks import PAIR50
from lightning_da.data.traces import slice_batches
from lightning_da.global_batch import grpo_prompts_per_step

# Rows of the hub sets as documented (PAPER.md 4; the datasets' cards), by hub id; STAR-41K is "~41K".
DOCUMENTED_ROWS = {"UCSC-VLAA/STAR-41K": 41_000, "TrustAIRLab/in-the-wild-jailbreak-prompts": 1_405, "allenai/wildjailbreak": 2_000,
                   "openai/gsm8k": 1_319, "cais/mmlu": 966, "walledai/AdvBench": 520, "walledai/HarmBench": 200, "walledai/XSTest": 250,
                   "JailbreakBench/JBB-Behaviors": 100}
EMBEDDED = ("StrongRejectPrompts", "StrongRejectBenchmark", "ArithmeticBenchmark")


@dataclass
class Cost:
    jobs: int
    tokens: int | None  # None: some job's prompt count is unknown

    def __add__(self, other: Cost) -> Cost:
        tokens = None if self.tokens is None or other.tokens is None else self.tokens + other.tokens
        return Cost(self.jobs + other.jobs, tokens)

    def describe(self) -> str:
        tokens = "an unknown number of" if self.tokens is None else f"{self.tokens:,}"
        return f"{self.jobs} job{'s' * (self.jobs != 1)}, at most {tokens} new tokens"


@contextlib.contextmanager
def _composing():
    """Compose with the running app's Hydra (plan.py's), else with our config directory."""
    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield


def rows(node: DictConfig) -> int | None:
    """The prompts a data or benchmark node yields (its `limit` applied); None when only the hub knows."""
    return _rows(OmegaConf.to_yaml(node, resolve=True))


@functools.cache
def _rows(node_yaml: str) -> int | None:
    node = OmegaConf.create(node_yaml)
    target = str(node.get("_target_", ""))
    if target.endswith("TeacherFiltered"):
        return rows(node.prompts)  # at most: the judge keeps some
    if target.endswith("PromptMixture"):
        parts = [rows(node.harmful), rows(node.benign) if node.get("benign") is not None else 0]
        return None if None in parts else sum(parts)
    if target.endswith(EMBEDDED) or node.get("path"):
        return len(instantiate(node).load())
    size = DOCUMENTED_ROWS.get(node.get("hub_id") or node.get("name"))
    if target.endswith("AdvBench") and node.get("subset") is not None:
        size = len(PAIR50)  # AdvBench's one curated subset
    limit = node.get("limit")
    if size is None:
        return limit
    return size if limit is None else min(size, limit)


def _times(*factors) -> int | None:
    return None if None in factors else math.prod(factors)


def trace_key(cfg: DictConfig) -> str:
    """What keys a teacher's trace cache (`teacher.teacher_traces`): the jobs of a stage that share it sample it once."""
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["teacher", "data", "spec", "seed", "generation"]), resolve=True)


def samples_traces(command: str, cfg: DictConfig) -> bool:
    """Whether a job of `command` samples a teacher's traces (traces.py, or train.py's SFT)."""
    return command == "traces" or (command == "train" and cfg.algorithm.name == "sft")


def job_tokens(command: str, cfg: DictConfig) -> int | None:
    """The most tokens one job of `command` samples with `cfg` (traces.py: its slice of the teacher's traces; an SFT
    job: all of them)."""
    if samples_traces(command, cfg):
        prompts = rows(cfg.data)
        if command == "traces" and prompts is not None:
            prompts = sum(map(len, slice_batches(prompts, cfg.teacher.batch_size, cfg.slice, cfg.slices)))
        return _times(prompts, cfg.teacher.samples_per_prompt, cfg.teacher.sampling.max_new_tokens)
    if command == "train":  # GRPO's rollouts over its epochs, or its steps (its prompts' traces are the SFT stage's)
        module, prompts = cfg.algorithm.module, rows(cfg.data)
        devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
        if prompts is not None:
            prompts *= cfg.trainer.max_epochs or 1
            if (cfg.trainer.get("max_steps") or -1) > 0:  # optimizer steps: each generation batch makes mu x k of them
                per_batch = module.get("num_iterations", 1) * module.get("steps_per_generation", 1)
                batches = -(-cfg.trainer.max_steps // per_batch)
                prompts = min(prompts, batches * grpo_prompts_per_step(cfg, devices) * devices)
        rounds = module.max_generation_rounds if module.dynamic_sampling else 1
        return _times(prompts, module.num_generations, module.sampling.max_new_tokens, rounds)
    max_new = cfg.max_new_tokens or cfg.student.sampling.max_new_tokens
    if command == "evaluate":  # N candidates a prompt, and the base's one
        samples = cfg.n_candidates + int(bool(cfg.compare_base) and cfg.get("as_is") is None)
        return _times(rows(cfg.benchmark), samples, max_new)
    if command == "attack":
        return _times(rows(cfg.benchmark), attack_tokens(cfg, max_new))
    return 0  # report.py samples nothing


RATER_TOKENS = {"judge": 0, "rating": 16, "strongreject": 1000}  # what the search's scorer generates per answer
ON_TOPIC_TOKENS = 10


def attack_tokens(cfg: DictConfig, max_new: int) -> int:
    """The most tokens one behaviour samples across its targets: the attacker's tries of every conversation, the target's
    answers at the search's length (each a Best-of-N query's N samples) and their ratings, TAP's on-topic answers, then
    the best prompt's full-length re-run, its confirmations and its transfer replays."""
    from lightning_da.runs.attack import search_settings

    a, s = cfg.attack, search_settings(cfg)
    if a.method == "tap":  # level 1 asks each root's children; later levels at most `width` leaves' children
        asks = s["n_streams"] * s["branching_factor"] + (s["depth"] - 1) * s["width"] * s["branching_factor"]
        sent = min(s["width"], s["n_streams"] * s["branching_factor"]) + (s["depth"] - 1) * s["width"]
    else:
        asks = sent = s["depth"] * s["n_streams"]
    searched = a.target_max_new_tokens or max_new
    attacker = asks * (a.max_attempts * cfg.attacker.sampling.max_new_tokens + (ON_TOPIC_TOKENS if a.method == "tap" else 0))
    measured = int(a.target_max_new_tokens is not None) + a.confirm_samples + (len(cfg.targets) - 1 if a.transfer else 0)
    return sum(attacker + sent * (per_query * searched + RATER_TOKENS[cfg.scorer]) + measured * per_query * max_new
               for per_query in (cfg.n_candidates if t == "aligned_bon" else 1 for t in cfg.targets))


def _swept(value: str) -> bool:
    return "," in value and not value.startswith(("[", "{", "'", '"'))


def stage_cost(command: str, args: list[str], traces: set[str] | None = None) -> Cost:
    """Every job of one stage (its sweeper's parameters and comma lists on its command line), each composed as it runs.
    `traces`: the trace caches earlier stages fill (`trace_key`), which this stage's SFT jobs then read; it gains the
    stage's own."""
    if command == "report":
        return Cost(1, 0)
    args = [a for a in args if a not in ("-m", "--multirun")]
    with _composing():
        swept = compose(config_name=command, overrides=args, return_hydra_config=True).hydra.sweeper.params or {}
        params = {k: str(v).split(",") for k, v in swept.items()}
        fixed = []
        for arg in args:
            key, _, value = arg.partition("=")
            if _swept(value):
                params[key] = value.split(",")
            else:
                fixed.append(arg)
                params.pop(key.lstrip("+~"), None)  # the command line wins over the sweeper's value, as in Hydra
        total, filled = Cost(0, 0), set()
        traces = set() if traces is None else traces
        for values in itertools.product(*params.values()):
            cfg = compose(config_name=command, overrides=fixed + [f"{k}={v}" for k, v in zip(params, values, strict=True)])
            # A traces.py job samples its own slice; an SFT job none where an earlier job filled its teacher's cache.
            shared = command == "train" and samples_traces(command, cfg) and trace_key(cfg) in traces | filled
            total += Cost(1, 0 if shared else job_tokens(command, cfg))
            if samples_traces(command, cfg):
                filled.add(trace_key(cfg))
        traces |= filled
    return total
