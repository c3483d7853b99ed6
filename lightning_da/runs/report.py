"""report.py: from many evaluate.py runs to the paper's tables and the per-layer figure.

    python report.py outputs/evaluate/multiruns/<time>            # every results.json under it
    python report.py runs/a runs/b --out paper/ --wandb-project lightning_da

A configuration is one results.json: (teacher, student, stage, benchmark), read from the run's Hydra
choices and, through `adapter=`, from the train run that made the adapter. The paper's table has one
row per selector and, per benchmark, the mean relative drop across configurations with a 95%
interval (prompts resampled within each configuration, `lightning_da.stats`); safety benchmarks give
an ASR drop, utility benchmarks a utility drop. A configuration whose `first` rate is 0 has no drop:
it is left out of that mean and counted in a footnote.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from lightning_da import figures
from lightning_da.atomic import write_text_atomic
from lightning_da.errors import UserError
from lightning_da.stats import RESAMPLES, paired_bootstrap_many
from lightning_da.tables import csv_table, format_interval, format_number, markdown_table, rounded
from lightning_da.tasks import DROP_LABELS, EvaluationResults

UNKNOWN = "?"
NONE = "-"  # no teacher (a model as it is, the instruct_vs_base control) or no student (a teacher as it is)
# The paper's tables of drops vs `first`, each from the configurations of one stage.
TABLES = {"sft": "Table 1: after SFT", "grpo": "Table 2: after GRPO",
          "instruct_vs_base": "Table 3: the control, an instruction-tuned model against its pretrained base",
          "as_is": "Models as they are (no base)", "teacher": "Teachers as they are (no base)"}
BASE_ROW = "base student: first"  # the adapter disabled; its difference is base - first of the student


@dataclass
class Configuration:
    """One evaluate.py run: what it evaluated and its results.json."""

    teacher: str
    student: str
    stage: str
    benchmark: str
    results: EvaluationResults = field(repr=False)
    path: Path = field(repr=False)
    train_run: Path | None = field(default=None, repr=False)  # the train.py run that made the adapter

    @property
    def rate_name(self) -> str:
        return self.results.rate_name

    @property
    def kind(self) -> str:
        return self.results.kind

    @property
    def label(self) -> str:
        return f"{self.teacher} -> {self.student} ({self.stage}), {self.benchmark}"

    def outcomes(self, selector: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`first`'s and the selector's per-prompt flags on the prompts the selector is rated on."""
        first, method = self.results.outcomes["first"], self.results.outcomes[selector]
        pairs = [(f, m) for f, m in zip(first, method, strict=True) if m is not None]
        return torch.tensor([f for f, _ in pairs]), torch.tensor([m for _, m in pairs])


def _choices(run_dir: Path) -> dict:
    hydra = run_dir / ".hydra" / "hydra.yaml"
    if not hydra.is_file():
        return {}
    return yaml.safe_load(hydra.read_text())["hydra"]["runtime"]["choices"]


def load_configuration(results_file: Path) -> Configuration:
    results = EvaluationResults.read(results_file)
    run_dir = results_file.parent
    choices = _choices(run_dir)
    train_choices, train_run = {}, None
    config_file = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    if config.get("adapter"):
        train_run = Path(config["adapter"]).parent
        train_choices = _choices(train_run)
    teacher, student = train_choices.get("teacher", UNKNOWN), choices.get("student", train_choices.get("student", UNKNOWN))
    stage = train_choices.get("algorithm", UNKNOWN)
    as_is = (results.evaluated or {}).get("as_is")
    if as_is == "teacher":  # a teacher as it is: Figure 3's own row
        teacher, student, stage = choices.get("teacher", UNKNOWN), NONE, "teacher"
    elif as_is == "student":
        teacher, stage = NONE, "as_is"
    elif config.get("task_name") == "instruct_vs_base":  # experiment=instruct_vs_base or eval_control
        teacher, stage = NONE, "instruct_vs_base"
    return Configuration(teacher=teacher, student=student, stage=stage, benchmark=results.benchmark, results=results,
                         path=results_file, train_run=train_run)


def find_configurations(directories: list[str | Path]) -> list[Configuration]:
    """Every results.json under the given run or multirun directories, in path order."""
    files = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise UserError(f"{directory} is not a directory; pass evaluate.py run or multirun directories")
        files.extend(sorted(directory.rglob("results.json")))
    if not files:
        raise UserError(f"no results.json under {', '.join(map(str, directories))}; run evaluate.py there first")
    return [load_configuration(f) for f in dict.fromkeys(files)]


@dataclass
class Cell:
    """A selector on a group of configurations: the mean drop, its interval (from the resamples with a
    drop), the difference, McNemar's p, and how many configurations went into the drop (`n`) or had
    none (`undefined`)."""

    drop: float | None
    drop_ci: list | None
    difference: float
    difference_ci: list
    mcnemar_p: float
    undefined_resamples: int
    n: int
    undefined: int


def cell(configurations: list[Configuration], selector: str, *, seed: int, resamples: int) -> Cell:
    pairs = [c.outcomes(selector) for c in configurations]
    result = paired_bootstrap_many([f for f, _ in pairs], [m for _, m in pairs], seed=seed, resamples=resamples)
    undefined = sum(float(f.float().mean()) == 0 for f, _ in pairs)
    values = rounded(result.as_dict())
    return Cell(values["drop"], values["drop_ci"], values["difference"], values["difference_ci"], values["mcnemar_p"],
                values["undefined_resamples"], n=len(configurations) - undefined, undefined=undefined)


def selectors_of(configurations: list[Configuration]) -> list[str]:
    names = dict.fromkeys(name for c in configurations for name in c.results.outcomes)
    return [name for name in names if all(name in c.results.outcomes for c in configurations)]


def paper_table(configurations: list[Configuration], *, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """{(kind, benchmark): {selector: Cell}}: each benchmark's mean relative drop across its configurations."""
    table = {}
    for benchmark in dict.fromkeys(c.benchmark for c in configurations):
        group = [c for c in configurations if c.benchmark == benchmark]
        table[(group[0].kind, benchmark)] = {s: cell(group, s, seed=seed, resamples=resamples) for s in selectors_of(group)}
    return table


def render_paper_table(table: dict) -> tuple[str, list[str]]:
    """(Markdown, footnotes) of one paper table: rows selectors, a column per benchmark."""
    columns = list(table)
    selectors = list(dict.fromkeys(s for cells in table.values() for s in cells if s != "first"))
    header = ["selector"] + [f"{b} {DROP_LABELS[kind]} drop [95% CI] (n)" for kind, b in columns]
    rows = []
    for s in selectors:
        cells = [table[column].get(s) for column in columns]
        rows.append([s] + ["-" if c is None else f"{format_number(c.drop)} {format_interval(c.drop_ci)} ({c.n})" for c in cells])
    footnotes = []
    for (_, benchmark), cells in table.items():
        undefined = max((c.undefined for c in cells.values()), default=0)
        if undefined:
            footnotes.append(f"{benchmark}: {undefined} configuration(s) had a `first` rate of 0, so no relative drop; "
                             f"they are left out of its mean and n.")
        resamples = max((c.undefined_resamples for c in cells.values()), default=0)
        if resamples:
            footnotes.append(f"{benchmark}: the drop's interval leaves out the bootstrap resamples that drew no prompt "
                             f"flagged for `first` (up to {resamples}).")
    return markdown_table(header, rows), footnotes


# What to run for each of the paper's tables when a sweep has none of its stage.
MISSING_TABLE = {"sft": "evaluate.py adapter=<sft run>/adapter", "grpo": "evaluate.py adapter=<grpo run>/adapter",
                 "instruct_vs_base": "evaluate.py experiment=instruct_vs_base student=<name>"}
TABLE_CSV = ["stage", "benchmark", "drop_of", "selector", "drop", "drop_low", "drop_high", "difference", "difference_low",
             "difference_high", "mcnemar_p", "n"]


def render_tables(configurations: list[Configuration], *, seed: int, resamples: int) -> tuple[str, str]:
    """(Markdown, CSV) of the paper's tables, one per stage (TABLES), each with its footnotes; the CSV has
    a row per stage x benchmark x selector."""
    sections, csv_rows = [], []
    present = by_stage(configurations)
    for stage in dict.fromkeys([*MISSING_TABLE, *present]):
        if stage not in present:
            sections.append(f"## {TABLES[stage]}\n\nNot produced: no {stage} runs among these ({MISSING_TABLE[stage]}).\n")
            continue
        group = present[stage]
        table = paper_table(group, seed=seed, resamples=resamples)
        table_md, footnotes = render_paper_table(table)
        notes = "".join(f"\n- {note}" for note in footnotes)
        sections.append(f"## {TABLES.get(stage, f'Stage {stage}')}\n\n{table_md}\n{notes}\n")
        csv_rows += [[stage, benchmark, DROP_LABELS[kind], name, c.drop, *(c.drop_ci or [None, None]), c.difference,
                      *c.difference_ci, c.mcnemar_p, c.n]
                     for (kind, benchmark), cells in table.items() for name, c in cells.items() if name != "first"]
    return "\n".join(sections), csv_table(TABLE_CSV, csv_rows)


def render_configurations(configurations: list[Configuration]) -> tuple[str, str]:
    """(Markdown, CSV) of every configuration x selector: rate (with a graded judge, StrongREJECT's mean score of the
    selector's choices beside it), drop and its interval, McNemar p."""
    header = ["teacher", "student", "stage", "benchmark", "selector", "rate", "drop", "drop 95% CI", "diff (points)",
              "diff 95% CI", "McNemar p"]
    rows, csv_rows = [], []
    for c in configurations:
        rate, drops, intervals = c.results.rates, c.results.drops, c.results.intervals
        if c.results.base is not None:  # the base student's first, and the fine-tuned first against it
            base, change = c.results.base["first"], c.results.base["student_vs_base"]
            key = [c.teacher, c.student, c.stage, c.benchmark, BASE_ROW]
            rows.append(key + [f"{format_number(base)} {c.rate_name}", "", "", format_number(-change["difference"], ""),
                               format_interval([-change["difference_ci"][1], -change["difference_ci"][0]]), f"{change['mcnemar_p']:.3g}"])
            csv_rows.append(key + [c.rate_name, base, None, None, None, -change["difference"], -change["difference_ci"][1],
                                   -change["difference_ci"][0], change["mcnemar_p"], None])
        for s, value in rate.items():
            ci, graded = intervals.get(s), (c.results.strongreject or {}).get(s)
            key = [c.teacher, c.student, c.stage, c.benchmark, s]
            compared = [] if ci is None else [format_interval(ci["drop_ci"]), format_number(ci["difference"], ""), format_interval(ci["difference_ci"]),
                                              f"{ci['mcnemar_p']:.3g}"]
            shown = f"{format_number(value)} {c.rate_name}" + ("" if graded is None else f", StrongREJECT {graded:.2f}")
            rows.append(key + [shown, format_number(drops.get(s))] + (compared or ["", "", "", ""]))
            csv_rows.append(key + [c.rate_name, value, drops.get(s), *((ci and ci["drop_ci"]) or [None, None]),
                                   ci and ci["difference"], *((ci and ci["difference_ci"]) or [None, None]), ci and ci["mcnemar_p"], graded])
    csv_header = ["teacher", "student", "stage", "benchmark", "selector", "rate_name", "rate", "drop", "drop_low", "drop_high",
                  "difference", "difference_low", "difference_high", "mcnemar_p", "strongreject_score"]
    return markdown_table(header, rows), csv_table(csv_header, csv_rows)


def by_stage(configurations: list[Configuration]) -> dict[str, list[Configuration]]:
    """The configurations of each paper table's stage, in TABLES' order; any other stage (unknown: no
    train run to read it from) last, under its own name."""
    stages = list(TABLES) + [s for s in dict.fromkeys(c.stage for c in configurations) if s not in TABLES]
    return {stage: group for stage in stages if (group := [c for c in configurations if c.stage == stage])}


def _safety_first_mean(configurations: list[Configuration]) -> tuple[float, str] | None:
    safety = [c for c in configurations if c.kind == "safety" and c.results.by_layer]
    return (sum(c.results.rates["first"] for c in safety) / len(safety), "first, mean (no selection)") if safety else None


def _auroc_by_layer(c: Configuration) -> list[float] | None:
    scores = (c.results.signal or {}).get("scores", {})
    layers = sorted(int(k.split("@")[1]) for k in scores if k.startswith("cosine@"))
    values = [scores[f"cosine@{i}"]["auroc"] if scores[f"cosine@{i}"] else math.nan for i in layers]
    return values if layers and not all(math.isnan(v) for v in values) else None


# Every figure: (file, title, draw(configurations, path, choices)): draw writes the PNG if its runs allow, and returns
# None, or the one line that says what is missing (why it is not drawn, or what it shows as n/a). The paper's figures
# as it draws them (PAPER.md 7), then views of our own.
FIGURES = [
    ("figure2_unsafe_traces.png", "Figure 2: each teacher's unsafe traces on the training prompts", figures.unsafe_traces),
    ("figure3_safety_by_teacher.png", "Figure 3: the alignment gap, one student's safety rate per teacher after SFT",
     lambda cs, path, ch: figures.safety_by_teacher(cs, path, stage="sft", students=[ch.figure3_student])),
    ("figure18_safety_by_teacher_every_student.png", "Figure 18: every student's safety rate per teacher after SFT",
     lambda cs, path, ch: figures.safety_by_teacher(cs, path, stage="sft")),
    ("figure19_safety_by_teacher_after_grpo.png", "Figure 19: every GRPO student's safety rate per teacher after GRPO",
     lambda cs, path, ch: figures.safety_by_teacher(cs, path, stage="grpo")),
    ("figure4_utility_heatmap.png", "Figure 4: utility per teacher x student after SFT", figures.utility_heatmap),
    ("figure5_first_vs_majority.png", "Figure 5: one teacher's students, the first sample against majority voting",
     figures.first_vs_majority_by_benchmark),
    ("figure6_densities.png", "Figure 6: one configuration's perplexity, self-certainty, KL and latent similarity, unsafe vs safe",
     figures.densities_of_one),
    ("figures7_9_response_length.png", "Figures 7-9: response length of the base, SFT and GRPO students, one per GRPO teacher",
     figures.response_length),
    ("figures10_17_rate_by_layer.png", "Figures 10-17: the latent choice's safety rate or utility by layer, one per teacher",
     figures.rate_by_layer),
    ("asr_by_layer.png", "Extra: ASR of the latent choice by layer (mean of the safety configurations; an oracle view)",
     lambda cs, path, ch: None if figures.by_layer_lines(
         [c for c in cs if c.kind == "safety"], path, value=lambda c: c.results.by_layer, ylabel="ASR of the latent choice (%)",
         title="Best-of-N by the least base-attributable candidate, per layer", reference=_safety_first_mean(cs))
     else "no safety evaluation with a base: nothing to draw by layer"),
    ("by_layer_per_configuration.png", "Extra: per configuration, the latent choice's rate by layer against first",
     lambda cs, path, ch: None if figures.by_layer_panels(cs, path) else "no evaluation with a base: nothing to draw by layer"),
    ("auroc_by_layer.png", "Extra: is the signal there? AUROC of the cosine for unsafe vs safe candidates, by layer",
     lambda cs, path, ch: None if figures.by_layer_lines(
         cs, path, value=_auroc_by_layer, ylabel="AUROC (higher cosine = bad)", title="AUROC of the cosine to the base, by layer",
         reference=(0.5, "no signal")) else "no evaluation with both labels and a base: no AUROC to draw"),
    ("asr_heatmap_with_teachers.png", "Extra: ASR per teacher x student after SFT, beside each teacher's own (as_is)",
     lambda cs, path, ch: figures.heatmaps(cs, "safety", path, rate="ASR")),
    ("first_vs_majority_pooled.png", "Extra: the first sample against majority voting per student, pooled over teachers and benchmarks",
     lambda cs, path, ch: figures.first_vs_majority(cs, path)),
    ("densities_pooled.png", "Extra: the four scores of unsafe vs safe candidates, pooled over the SFT safety evaluations",
     lambda cs, path, ch: figures.densities(cs, path)),
]


def draw_figures(configurations: list[Configuration], out: Path,
                 choices: figures.FigureChoices = figures.PAPER_CHOICES) -> tuple[dict[str, Path], list[str]]:
    """Every figure that its runs allow, as PNGs in `out`; and report.md's lines: a link per figure drawn,
    one line per figure not drawn naming the runs it lacks."""
    drawn, lines = {}, []
    for name, title, draw in FIGURES:
        path = out / name
        for stale in (path, *out.glob(f"{path.stem}_*.png")):  # never one left from an earlier report
            stale.unlink(missing_ok=True)
        note = draw(configurations, path, choices)
        files = [path] if path.is_file() else sorted(out.glob(f"{path.stem}_*.png"))  # a figure, or one per teacher
        drawn.update({f.stem: f for f in files})
        if files:
            links = "\n\n".join(f"![{title}{'' if f == path else ' (' + f.stem.removeprefix(path.stem + '_') + ')'}]({f.name})"
                                  for f in files)
            lines.append(f"### {title}\n\n{links}" + (f"\n\n{note}." if note else ""))
        else:
            lines.append(f"### {title}\n\nNot drawn: {note}.")
    return drawn, lines


ATTACK_TARGETS = ("instruct", "aligned", "aligned_bon")


ATTACK_COLUMNS = ("asr", "search_asr", "confirm_rate", "strongreject_score", "mean_queries", "queries_to_jailbreak_mean",
                  "queries_to_jailbreak_median", "mean_samples", "samples_per_query", "total_queries", "total_samples",
                  "attacker_requests", "attacker_retries", "ended_streams", "unreadable_scores", "unreadable_verdicts",
                  "pruned_off_topic", "pruned_width")
TABLE4 = "## Table 4: adaptive attacks against the deployed targets"


def attack_cell(v: dict) -> str:
    """A target's rate (mean queries; the confirmed rate and StrongREJECT's score where measured)."""
    extra = [f"{v['mean_queries']:.1f}"]
    if v.get("confirm_rate") is not None:
        extra.append(f"{format_number(v['confirm_rate'])} confirmed")
    if v.get("strongreject_score") is not None:
        extra.append(f"SR {v['strongreject_score']:.2f}")
    return f"{format_number(v['asr'])} ({'; '.join(extra)})"


def attack_table(directories: list[str | Path]) -> tuple[str, str]:
    """(Markdown, CSV) of the paper's Table 4 from every attack.py run under `directories` (attack_results.json): per
    run, the method, what its evaluation judge measures (an ASR, or a refusal detector's non-refusal rate), and each
    target's rate with the queries it took; attack.csv holds every count."""
    runs = sorted({p for d in map(Path, directories) for p in d.rglob("attack_results.json")})
    if not runs:
        return f"{TABLE4}\n\nNot produced: no attack runs among these (attack.py adapter=<sft run>/adapter).\n", ""
    header = ["student", "method", "behaviours", "rate", *(f"{t} (queries)" for t in ATTACK_TARGETS), "aligned_bon vs aligned (points) [95% CI]"]
    rows, csv_rows = [], []
    for path in runs:
        results, student = json.loads(path.read_text()), _choices(path.parent).get("student", UNKNOWN)
        targets, method, measures = results["targets"], results.get("method", "pair"), results.get("measures", "ASR")
        cells = [attack_cell(targets[t]) if t in targets else "-" for t in ATTACK_TARGETS]
        pair = results["pairs"].get("aligned_bon_vs_aligned")
        rows.append([student, method.upper(), str(results["n_behaviours"]), measures, *cells,
                     "-" if pair is None else f"{format_number(pair['difference'], '')} {format_interval(pair['difference_ci'])}"])
        csv_rows += [[student, str(path.parent), method, measures, t, *(v.get(k) for k in ATTACK_COLUMNS)] for t, v in targets.items()]
    note = ("rate: the evaluation judge's share of behaviours whose best prompt jailbroke the target (an ASR; a refusal "
            "detector measures a non-refusal rate); queries: mean prompts sent to the target until success (or all "
            "rounds); confirmed: the best prompt re-sampled and re-judged; SR: StrongREJECT's mean score. A Best-of-N query "
            "draws N samples (`samples_per_query` in attack.csv).")
    markdown = f"{TABLE4}\n\n{markdown_table(header, rows)}\n\n{note}\n"
    return markdown, csv_table(["student", "run", "method", "measures", "target", *ATTACK_COLUMNS], csv_rows)


def write_report(configurations: list[Configuration], out: Path, *, seed: int = 0, resamples: int = RESAMPLES,
                 directories: list[str | Path] = (), choices: figures.FigureChoices = figures.PAPER_CHOICES) -> dict:
    """report.md, table.csv, configurations.csv and every figure its runs allow, in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    tables_md, tables_csv = render_tables(configurations, seed=seed, resamples=resamples)
    attack_md, attack_csv = attack_table(directories)
    configs_md, configs_csv = render_configurations(configurations)
    drawn, figure_lines = draw_figures(configurations, out, choices)
    markdown = (
        f"# Best-of-N latent attribution: {len(configurations)} configuration(s)\n\n"
        f"Mean relative drop vs `first` across configurations, with the 95% interval of a paired bootstrap "
        f"({resamples} resamples, prompts resampled within each configuration, seed {seed}). A positive ASR drop is "
        f"the safety gained; a positive utility drop is the utility lost.\n\n{tables_md}\n{attack_md}\n"
        f"## Per configuration\n\n{configs_md}\n\nMcNemar: exact, two-sided, against `first` on the same prompts.\n\n"
        f"## Figures\n\n" + "\n\n".join(figure_lines) + "\n"
    )
    files = {"report": out / "report.md", "table": out / "table.csv", "configurations": out / "configurations.csv"}
    if attack_csv:
        files["attack"] = out / "attack.csv"
    for key, text in (("report", markdown), ("table", tables_csv), ("configurations", configs_csv), ("attack", attack_csv)):
        if key in files:
            write_text_atomic(files[key], text)
    return {**files, **drawn}


def log_to_wandb(files: dict, project: str, out: Path) -> str:
    """The tables, the figures and every file as one `report` artifact in a new W&B run (online when logged in, else
    offline: `lightning_da.wandb_mode`); returns the run's directory."""
    import wandb

    from lightning_da import wandb_mode

    run = wandb.init(project=project, job_type="report", dir=str(out), mode=wandb_mode.choose_mode())
    for key in (k for k in ("table", "configurations", "attack") if k in files):
        rows = list(csv.reader(io.StringIO(files[key].read_text())))
        run.log({f"report/{key}": wandb.Table(columns=rows[0], data=rows[1:])})
    for key, path in files.items():
        if path.suffix == ".png":
            run.log({f"report/{key}": wandb.Image(str(path))})
    artifact = wandb.Artifact("best-of-n-report", type="report")
    for path in files.values():
        artifact.add_file(str(path))
    run.log_artifact(artifact)
    run_dir = run.dir
    wandb_mode.finish(run)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="report.py", description="Aggregate evaluate.py runs: report.md, table.csv, "
                                     "configurations.csv and the paper's figures")
    parser.add_argument("dirs", nargs="+", help="evaluate.py run or multirun directories (searched for results.json)")
    parser.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--wandb-project", help="also log the tables and figure as W&B artifacts to this project")
    default = figures.PAPER_CHOICES
    parser.add_argument("--figure3-student", default=default.figure3_student, help="Figure 3's student (the paper's Qwen2.5-14B)")
    parser.add_argument("--figure5-teacher", default=default.figure5_teacher, help="Figure 5's teacher (the paper's R1-Distill-Qwen-14B)")
    parser.add_argument("--figure6", default=",".join(default.figure6), metavar="STUDENT,TEACHER,BENCHMARK",
                        help="Figure 6's configuration (the paper's Qwen2.5-0.5B taught by R1-Distill-Qwen-14B, on DAN)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")  # the one line an error prints
    try:
        if args.resamples < 1:
            raise UserError(f"--resamples={args.resamples}: set it to an integer of at least 1")
        figure6 = tuple(args.figure6.split(","))
        if len(figure6) != 3 or not all(figure6):
            raise UserError(f"--figure6={args.figure6}: give student,teacher,benchmark, e.g. qwen2_5_0_5b,r1_qwen_14b,dan")
        choices = figures.FigureChoices(args.figure3_student, args.figure5_teacher, figure6)
        configurations = find_configurations(args.dirs)
        out = args.out or Path(args.dirs[0])
        files = write_report(configurations, out, seed=args.seed, resamples=args.resamples, directories=args.dirs, choices=choices)
        if args.wandb_project:
            log_to_wandb(files, args.wandb_project, out)
    except UserError as exc:
        logging.getLogger("report").error("error: %s", exc)
        sys.exit(2)
    print(files["report"].read_text().split("\n![")[0])
    print("written:", ", ".join(str(p) for p in files.values()))

