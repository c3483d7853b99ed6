"""plan.py: a whole study, one command per stage, run in order (`conf/plan.yaml`, the stages from
`experiment=paper` or `experiment=paper_miniature`). Each stage is `python -m lightning_da <command>
<args>`, the same as typing the command: its outputs, resume and errors are that command's."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time

from omegaconf import DictConfig, OmegaConf

from lightning_da.errors import UserError
from lightning_da.runs.cost import Cost, stage_cost

log = logging.getLogger(__name__)
COMMANDS = ("train", "traces", "evaluate", "generate", "attack", "report")


def stage_commands(cfg: DictConfig) -> dict[str, list[str]]:
    """name -> argv of each stage to run, in the plan's order, checked before any runs."""
    only = list(cfg.only) if cfg.only is not None else list(cfg.stages)
    if cfg.get("reference") is None and any("${reference}" in str(arg) for name in only if name in cfg.stages
                                             for arg in OmegaConf.to_container(cfg.stages[name]).get("args") or []):
        if not cfg.dry_run:
            raise UserError("this plan reads the authors' spec and prompt from their code (spec=reference): set "
                            "reference=<a checkout of pankayaraj/Robust_Deliberative_Alignment>")
        cfg = cfg.copy()
        cfg.reference = "/path/to/Robust_Deliberative_Alignment"  # a dry run shows where it goes
    stages = OmegaConf.to_container(cfg.stages, resolve=True)
    if not stages:
        raise UserError("the plan has no stages: choose one, e.g. plan.py experiment=paper (or paper_miniature)")
    unknown = [name for name in only if name not in stages]
    if unknown:
        raise UserError(f"only={unknown}: not stages of this plan; choose from {list(stages)}")
    commands = {}
    for name in (n for n in stages if n in only):
        stage = stages[name]
        if stage.get("command") not in COMMANDS:
            raise UserError(f"stages.{name}.command={stage.get('command')}; use one of {', '.join(COMMANDS)}")
        commands[name] = [sys.executable, "-m", "lightning_da", stage["command"], *map(str, stage.get("args") or [])]
    return commands


def print_costs(commands: dict[str, list[str]]) -> None:
    """Each stage's command under a line with its jobs and the most tokens they sample, then the plan's total."""
    total, traces = Cost(0, 0), set()
    for name, argv in commands.items():
        cost = stage_cost(argv[3], argv[4:], traces)
        total += cost
        print(f"# {name}: {cost.describe()}\n{shlex.join(['python', '-m', 'lightning_da', *argv[3:]])}")
    print(f"# total: {total.describe()} (prompts x samples x max new tokens; a stage whose outputs exist resumes and samples less)")


def run_plan(cfg: DictConfig) -> dict[str, float]:
    """Each stage in turn; the seconds each took. A failing stage stops the plan with a one-line error
    naming it and the command that resumes from it."""
    commands = stage_commands(cfg)
    if cfg.dry_run:
        print_costs(commands)
        return {}
    seconds = {}
    for k, (name, argv) in enumerate(commands.items(), start=1):
        shown = shlex.join(["python", "-m", "lightning_da", *argv[3:]])
        log.info("[%d/%d] %s: %s", k, len(commands), name, shown)
        started = time.perf_counter()
        if subprocess.run(argv).returncode != 0:
            rest = list(commands)[k - 1 :]
            raise UserError(f"stage {name} failed (its error is above); fix it, then resume with only=[{','.join(rest)}]")
        seconds[name] = time.perf_counter() - started
        log.info("%s: done in %.0f s", name, seconds[name])
    return seconds
