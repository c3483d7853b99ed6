"""The paper's figures as the paper draws them (PAPER.md section 7), and views of our own, drawn from what
evaluate.py and train.py wrote, for report.py. Each function takes the configurations (report.Configuration) and a
PNG path, writes the figure whole or not at all, and returns None, or the one line that names the runs it lacks
(why it is not drawn, or what it shows as n/a). The numbers each figure shows come from a function of their own
(`unsafe_trace_counts`, `safety_rates`, `heatmap_grid`, `majority_bars`, `density_values`, `response_lengths`,
`rate_by_layer_lines`, `first_vs_majority_bars`, `layer_series`), which the tests assert.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

UNSAFE_COLOR, SAFE_COLOR = "#c0392b", "#2e86c1"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path) -> None:
    """Whole or not at all, as every other output."""
    plt = _pyplot()
    figure.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    figure.savefig(partial, dpi=120)
    plt.close(figure)
    partial.replace(path)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _panels(count: int, width: float, height: float):
    """(figure, the first `count` axes) of a grid up to 3 wide, each panel `width` x `height`; the rest hidden."""
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = _pyplot().subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return figure, list(axes.flat[:count])


def heatmap_grid(configurations: list, kind: str, benchmark: str, *, with_teachers: bool = True) -> tuple[list[str], list[str], torch.Tensor]:
    """One heatmap panel: the teachers (rows), the students (columns), and `first`'s rate in each cell, the mean
    over the SFT evaluations of that pair on `benchmark`; `with_teachers` adds a last column "teacher itself" (each
    teacher's own rate, evaluated `as_is`: not in the paper); NaN where nothing was evaluated."""
    group = [c for c in configurations if c.kind == kind and c.stage == "sft" and c.benchmark == benchmark]
    alone = [c for c in configurations if c.kind == kind and c.stage == "teacher" and c.benchmark == benchmark]
    teachers = list(dict.fromkeys(c.teacher for c in group))
    students = list(dict.fromkeys(c.student for c in group)) + (["teacher itself"] if with_teachers else [])
    grid = torch.full((len(teachers), len(students)), math.nan)
    for t, teacher in enumerate(teachers):
        for s, student in enumerate(students):
            grid[t, s] = _mean([c.results.rates["first"] for c in group if c.teacher == teacher and c.student == student])
        if with_teachers:
            grid[t, -1] = _mean([c.results.rates["first"] for c in alone if c.teacher == teacher])
    return teachers, students, grid


def heatmaps(configurations: list, kind: str, path: Path, *, rate: str, with_teachers: bool = True) -> str | None:
    """Per benchmark of `kind`, `first`'s rate per (teacher, student) after SFT (`with_teachers`: beside each
    teacher's own rate, evaluated `as_is`), one panel per benchmark (`heatmap_grid`)."""
    distilled = [c for c in configurations if c.kind == kind and c.stage == "sft"]
    if not distilled:
        return f"no SFT evaluations on a {kind} benchmark: run evaluate.py adapter=<sft run>/adapter on one"
    teachers_alone = [c for c in configurations if c.kind == kind and c.stage == "teacher"]
    benchmarks = list(dict.fromkeys(c.benchmark for c in distilled))
    figure, axes = _panels(len(benchmarks), 5.5, 4)
    for ax, benchmark in zip(axes, benchmarks, strict=True):
        teachers, students, grid = heatmap_grid(configurations, kind, benchmark, with_teachers=with_teachers)
        image = ax.imshow(grid.numpy(), cmap="Reds" if kind == "safety" else "Greens", vmin=0, vmax=100, aspect="auto")
        for t in range(len(teachers)):
            for s in range(len(students)):
                value = float(grid[t, s])
                ax.text(s, t, "n/a" if math.isnan(value) else f"{value:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(students)), students, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(teachers)), teachers, fontsize=8)
        ax.set_title(f"{benchmark}: {rate} of the first sample (%)", fontsize=10)
        figure.colorbar(image, fraction=0.046)  # beside the image's own panel
    save(figure, path)
    missing = sorted({c.teacher for c in distilled} - {c.teacher for c in teachers_alone})
    if with_teachers and missing:
        return f"no evaluation of teacher(s) {', '.join(missing)} as it is: their column reads n/a (evaluate.py as_is=teacher teacher=<name>)"
    return None


FIGURE5_SELECTORS = ("first", "majority_vote")


def first_vs_majority_bars(configurations: list) -> dict[str, dict[str, float]]:
    """Figure 5's bars: {selector: {student: its ASR}}, the mean over the student's SFT evaluations on safety
    benchmarks that compared majority voting."""
    group = [c for c in configurations if c.kind == "safety" and c.stage == "sft" and "majority_vote" in c.results.rates]
    students = list(dict.fromkeys(c.student for c in group))
    return {selector: {s: _mean([c.results.rates[selector] for c in group if c.student == s]) for s in students}
            for selector in FIGURE5_SELECTORS}


def first_vs_majority(configurations: list, path: Path) -> str | None:
    """Figure 5 pooled (an extra): per student, the ASR of the first sample and of majority voting (unsafe iff more than half
    of the N samples are), averaged over its SFT evaluations on safety benchmarks (`first_vs_majority_bars`)."""
    bars = first_vs_majority_bars(configurations)
    students = list(bars["first"])
    if not students:
        return "no SFT evaluation on a safety benchmark with majority_vote compared: this view needs one"
    figure, ax = _pyplot().subplots(figsize=(max(5, 1.4 * len(students) + 2), 4))
    _first_vs_majority_panel(ax, bars)
    ax.set_title("First sample vs majority vote, per student (after SFT)")
    save(figure, path)
    return None


def _first_vs_majority_panel(ax, bars: dict[str, dict[str, float]]) -> None:
    """Per student ({selector: {student: ASR}}), `first`'s bar beside majority voting's, the pair on the student's tick."""
    students, width = list(bars["first"]), 0.38
    for offset, selector, color in ((-width / 2, "first", "#7f8c8d"), (width / 2, "majority_vote", "#8e44ad")):
        ax.bar([i + offset for i in range(len(students))], list(bars[selector].values()), width, label=selector, color=color)
    ax.set_xticks(range(len(students)), students, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("ASR (%)")
    ax.legend(fontsize=7)


# Figure 6's panels: (title, how to read a candidates.jsonl record's values for that score).
DENSITY_PANELS: list[tuple[str, Callable[[dict, int], list[float]]]] = [
    ("perplexity (log10)", lambda r, layer: [math.log10(v) if v and v > 0 else math.nan for v in r["perplexity"]]),
    ("self-certainty", lambda r, layer: r["self_certainty"]),
    ("KL(FT || base)", lambda r, layer: r["kl"]),
    ("latent similarity (cosine at layer {layer})", lambda r, layer: [c[layer] for c in r["cosine_by_layer"]]),
]


def density_values(configurations: list) -> tuple[dict[str, tuple[list, list]], int | None]:
    """Figure 6's numbers: each panel's values for unsafe and safe candidates (a candidate's `flags`), pooled over
    the configurations' candidates.jsonl; and the cosine's layer (the last configuration's, clipped to the model)."""
    pooled = {title: ([], []) for title, _ in DENSITY_PANELS}
    layer = None
    for c in configurations:
        candidates = c.path.parent / "candidates.jsonl"
        if not candidates.is_file():
            continue
        layer = c.results.layer if c.results.layer is not None else 12
        for line in candidates.read_text().splitlines():
            record = json.loads(line)
            for title, read in DENSITY_PANELS:
                for value, unsafe in zip(read(record, min(layer, len(record["cosine_by_layer"][0]) - 1)), record["flags"], strict=True):
                    if value is not None and not math.isnan(value):
                        pooled[title][0 if unsafe else 1].append(value)
    return pooled, layer


def _no_histogram(unsafe: list[float], safe: list[float]) -> str | None:
    """Why a density panel draws no histogram (a class without values, or every value equal), or None."""
    if not (unsafe or safe):
        return "no values"
    if not (unsafe and safe):
        return f"no {'safe' if unsafe else 'unsafe'} candidate with a value"
    return "no spread to show" if min(unsafe + safe) == max(unsafe + safe) else None


def densities(configurations: list, path: Path) -> str | None:
    """Figure 6 pooled (an extra): the histograms of perplexity, self-certainty, KL(FT || base) and latent similarity for
    unsafe vs safe candidates, pooled over the SFT evaluations on safety benchmarks (one panel each)."""
    group = [c for c in configurations if c.kind == "safety" and c.stage == "sft" and c.results.evaluated
             and c.results.evaluated.get("base")]
    pooled, layer = density_values(group)
    if not any(unsafe and safe for unsafe, safe in pooled.values()):
        return "no SFT evaluation on a safety benchmark with both safe and unsafe candidates: this view needs one"
    _density_panels(pooled, layer, _histograms, path)
    return None


def _histograms(ax, unsafe: list[float], safe: list[float]) -> None:
    # 30 equal bins over both classes' range, numpy's own edges (float32 ones can leave the maximum out)
    span = {"bins": 30, "range": (min(unsafe + safe), max(unsafe + safe)), "density": True, "alpha": 0.55}
    ax.hist(unsafe, **span, color=UNSAFE_COLOR, label=f"unsafe ({len(unsafe)})")
    ax.hist(safe, **span, color=SAFE_COLOR, label=f"safe ({len(safe)})")


def _density_panels(pooled: dict[str, tuple[list, list]], layer: int | None, draw: Callable, path: Path, title: str | None = None) -> None:
    """Figure 6's row of panels, one per score: `draw(ax, unsafe, safe)` where both classes have values to compare,
    else the reason it cannot."""
    figure, axes = _pyplot().subplots(1, len(DENSITY_PANELS), figsize=(4.2 * len(DENSITY_PANELS), 3.6))
    for ax, (name, _) in zip(axes, DENSITY_PANELS, strict=True):
        unsafe, safe = pooled[name]
        if (empty := _no_histogram(unsafe, safe)) is not None:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        else:
            draw(ax, unsafe, safe)
            ax.legend(fontsize=7)
        ax.set_title(name.format(layer=layer), fontsize=10)
        ax.set_ylabel("density")
    if title:
        figure.suptitle(title, fontsize=10)
    save(figure, path)


def layer_series(configurations: list, value: Callable) -> tuple[list[tuple[str, list[float]]], list[float]]:
    """The by-layer figures' lines: (label, `value(c)`) per configuration with a value (a list per layer; None
    leaves it out), and their mean over the layers all of them have (NaN left out)."""
    series = [(c.label, v) for c in configurations if (v := value(c))]
    if not series:
        return [], []
    depth = min(len(v) for _, v in series)
    return series, torch.tensor([v[:depth] for _, v in series], dtype=torch.float64).nanmean(0).tolist()


def by_layer_lines(configurations: list, path: Path, *, value: Callable, ylabel: str, title: str,
                   reference: tuple[float, str] | None = None) -> bool:
    """One line per configuration (`value(c)`: a list per layer, or None to leave it out) and their mean."""
    series, mean = layer_series(configurations, value)
    if not series:
        return False
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 5))
    for label, values in series:
        ax.plot(values, alpha=0.5, linewidth=1, label=label)
    ax.plot(mean, color="black", linewidth=2.5, label=f"mean of {len(series)}")
    if reference is not None:
        ax.axhline(reference[0], color="black", linestyle="--", linewidth=1, label=reference[1])
    ax.set_xlabel("layer (0 = embeddings)")
    ax.xaxis.set_major_locator(_pyplot().MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    save(figure, path)
    return True


def by_layer_panels(configurations: list, path: Path) -> bool:
    """The per-layer figure of each configuration (the paper's Figures 10-17): its latent choice's rate
    at every layer against its `first`, one panel per configuration."""
    group = [c for c in configurations if c.results.by_layer]
    if not group:
        return False
    figure, axes = _panels(len(group), 4.5, 3.2)
    for ax, c in zip(axes, group, strict=True):
        ax.plot(c.results.by_layer, color="black", linewidth=1.5, label="latent choice")
        ax.axhline(c.results.rates["first"], color="grey", linestyle="--", linewidth=1, label="first")
        ax.set_title(c.label, fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.xaxis.set_major_locator(_pyplot().MaxNLocator(integer=True))
        ax.set_ylabel(f"{c.rate_name} (%)", fontsize=8)
        ax.legend(fontsize=6)
    save(figure, path)
    return True


# -- the paper's figures as the paper draws them (PAPER.md 7) ---------------------------------------------------------

@dataclass(frozen=True)
class FigureChoices:
    """Which student, teacher and configuration the single-configuration figures show (report.py's --figure* flags):
    the paper's Figure 3 student, Figure 5 teacher and Figure 6 configuration (student, teacher, benchmark)."""

    figure3_student: str = "qwen2_5_14b"
    figure5_teacher: str = "r1_qwen_14b"
    figure6: tuple[str, str, str] = ("qwen2_5_0_5b", "r1_qwen_14b", "dan")


PAPER_CHOICES = FigureChoices()


def _missing(expected: list[tuple], present: set[tuple], what: str) -> str | None:
    """The line naming the expected runs that are absent (the first few), or None."""
    absent = [e for e in expected if e not in present]
    if not absent:
        return None
    shown = "; ".join(" / ".join(map(str, e)) for e in absent[:6])
    return f"no {what} for {shown}{f' and {len(absent) - 6} more' if len(absent) > 6 else ''}: those bars read n/a"


def unsafe_trace_counts(configurations: list) -> tuple[dict[str, int], list[str]]:
    """Figure 2's bars: per teacher, the number of its training traces the filter's judge called unsafe
    (`data/traces_unsafe` in the SFT run's metrics.json, the SFT runs of the evaluated adapters); and the train
    runs without one."""
    counts, missing = {}, {}
    for c in configurations:
        if c.stage != "sft" or c.train_run is None or c.teacher in counts:
            continue
        metrics = c.train_run / "metrics.json"
        value = json.loads(metrics.read_text()).get("data/traces_unsafe") if metrics.is_file() else None
        if value is None:
            missing.setdefault(c.teacher, []).append(str(c.train_run))
        else:
            counts[c.teacher] = int(value)  # the students of one teacher share its filtered traces, so one run tells
    return counts, sorted({run for teacher, runs in missing.items() if teacher not in counts for run in runs})


def unsafe_traces(configurations: list, path: Path, choices: FigureChoices) -> str | None:
    """Figure 2: per teacher, how many of its traces on the training prompts its filter judged unsafe."""
    counts, missing = unsafe_trace_counts(configurations)
    if not counts:
        return "no SFT run with the filter's counts (metrics.json's data/traces_unsafe) behind these evaluations: Figure 2 needs one"
    figure, ax = _pyplot().subplots(figsize=(max(5, 0.9 * len(counts) + 2), 4))
    ax.bar(list(counts), list(counts.values()), color=UNSAFE_COLOR)
    ax.set_xticks(range(len(counts)), list(counts), rotation=25, ha="right")
    ax.set_ylabel("traces judged unsafe")
    ax.set_title("Each teacher's unsafe traces on the training prompts (the filter's count)")
    save(figure, path)
    return f"no metrics.json with data/traces_unsafe in {', '.join(missing)}" if missing else None


def safety_rates(configurations: list, stage: str, student: str) -> dict[str, dict[str, float]]:
    """Figures 3, 18 and 19: {safety benchmark: {teacher: the safety rate (100 - ASR of the first sample), the mean over
    `student`'s `stage` evaluations}}."""
    group = [c for c in configurations if c.kind == "safety" and c.stage == stage and c.student == student]
    benchmarks = list(dict.fromkeys(c.benchmark for c in configurations if c.kind == "safety" and c.stage == stage))
    teachers = list(dict.fromkeys(c.teacher for c in configurations if c.stage == stage))
    return {b: {t: 100 - _mean([c.results.rates["first"] for c in group if c.teacher == t and c.benchmark == b]) for t in teachers}
            for b in benchmarks}


def safety_by_teacher(configurations: list, path: Path, *, stage: str, students: list[str] | None = None) -> str | None:
    """One row of panels per student (`students`, else every student of `stage`), one panel per safety benchmark:
    the safety rate of the first sample as a bar per teacher (no teacher column: the paper evaluates none)."""
    every = list(dict.fromkeys(c.student for c in configurations if c.stage == stage and c.kind == "safety"))
    students = students if students is not None else every
    if not any(s in every for s in students):
        return f"no {stage.upper()} evaluation of {', '.join(students) or 'any student'} on a safety benchmark"
    rates = {s: safety_rates(configurations, stage, s) for s in students}
    benchmarks = list(next(iter(rates.values())))
    figure, axes = _pyplot().subplots(len(students), len(benchmarks), figsize=(4.2 * len(benchmarks), 3.2 * len(students)),
                                      squeeze=False)
    for row, student in zip(axes, students, strict=True):
        for ax, benchmark in zip(row, benchmarks, strict=True):
            bars = rates[student][benchmark]
            ax.bar(range(len(bars)), [0 if math.isnan(v) else v for v in bars.values()], color=SAFE_COLOR)
            for i, v in enumerate(bars.values()):
                ax.text(i, 1, "n/a" if math.isnan(v) else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(bars)), list(bars), rotation=30, ha="right", fontsize=7)
            ax.set_ylim(0, 100)
            ax.set_title(f"{student}, {benchmark}", fontsize=9)
            ax.set_ylabel("safety rate (%)", fontsize=8)
    save(figure, path)
    expected = [(s, t, b) for s in students for b in benchmarks for t in rates[s][b]]
    present = {(c.student, c.teacher, c.benchmark) for c in configurations if c.stage == stage and c.kind == "safety"}
    return _missing(expected, present, f"{stage.upper()} evaluation (student / teacher / benchmark)")


def utility_heatmap(configurations: list, path: Path, choices: FigureChoices) -> str | None:
    """Figure 4: the first sample's utility per (teacher, student) after SFT, one heatmap per utility benchmark."""
    return heatmaps(configurations, "utility", path, rate="accuracy", with_teachers=False)


def majority_bars(configurations: list, teacher: str) -> dict[str, dict[str, dict[str, float]]]:
    """Figure 5: {safety benchmark: {selector: {student: ASR}}} for `teacher`'s SFT students (the mean of their runs)."""
    group = [c for c in configurations if c.kind == "safety" and c.stage == "sft" and c.teacher == teacher
             and "majority_vote" in c.results.rates]
    students = list(dict.fromkeys(c.student for c in group))
    return {b: {sel: {s: _mean([c.results.rates[sel] for c in group if c.student == s and c.benchmark == b]) for s in students}
                for sel in FIGURE5_SELECTORS} for b in dict.fromkeys(c.benchmark for c in group)}


def first_vs_majority_by_benchmark(configurations: list, path: Path, choices: FigureChoices) -> str | None:
    """Figure 5: for one teacher (`choices.figure5_teacher`), per student the ASR of the first sample beside majority
    voting's (a 4-4 tie as `selectors.majority_vote.tie` counts it), one panel per safety benchmark."""
    bars = majority_bars(configurations, choices.figure5_teacher)
    if not bars:
        return f"no SFT evaluation of teacher {choices.figure5_teacher}'s students on a safety benchmark with majority_vote compared"
    figure, axes = _panels(len(bars), 5, 3.8)
    for ax, (benchmark, selectors) in zip(axes, bars.items(), strict=True):
        _first_vs_majority_panel(ax, selectors)
        ax.set_title(f"{benchmark} (teacher {choices.figure5_teacher})", fontsize=9)
    save(figure, path)
    expected = [(s, b) for b, selectors in bars.items() for s in selectors["first"]]
    present = {(s, b) for b, selectors in bars.items() for s, v in selectors["first"].items() if not math.isnan(v)}
    return _missing(expected, present, f"SFT evaluation of teacher {choices.figure5_teacher}'s students (student / benchmark)")


def kde(values: list[float], grid: torch.Tensor) -> torch.Tensor:
    """A Gaussian kernel density of `values` on `grid`, Scott's bandwidth (std x n^(-1/5)); one value: a unit-width bump."""
    x = torch.tensor(values, dtype=torch.float64)
    spread = float(x.std()) if len(values) > 1 else 0.0
    width = (spread if spread > 0 else 1.0) * len(values) ** (-1 / 5)
    z = (grid[:, None].double() - x[None]) / width
    return torch.exp(-0.5 * z**2).mean(1) / (width * math.sqrt(2 * math.pi))


def densities_of_one(configurations: list, path: Path, choices: FigureChoices) -> str | None:
    """Figure 6: for one configuration (`choices.figure6`: student, teacher, benchmark, after SFT), the smoothed
    densities of perplexity, self-certainty, KL(FT || base) and latent similarity, unsafe vs safe candidates."""
    student, teacher, benchmark = choices.figure6
    group = [c for c in configurations if (c.student, c.teacher, c.benchmark, c.stage) == (student, teacher, benchmark, "sft")]
    pooled, layer = density_values(group)
    if not any(unsafe and safe for unsafe, safe in pooled.values()):
        return (f"no SFT evaluation of {student} taught by {teacher} on {benchmark} with both safe and unsafe candidates "
                f"(report.py --figure6 student,teacher,benchmark chooses another)")
    _density_panels(pooled, layer, _smoothed, path, title=f"{student} taught by {teacher}, {benchmark}")
    return None


def _smoothed(ax, unsafe: list[float], safe: list[float]) -> None:
    low, high = min(unsafe + safe), max(unsafe + safe)
    grid = torch.linspace(low - 0.1 * (high - low), high + 0.1 * (high - low), 200)
    for values, color, label in ((unsafe, UNSAFE_COLOR, "unsafe"), (safe, SAFE_COLOR, "safe")):
        density = kde(values, grid).numpy()  # once, for the line and its fill
        ax.plot(grid.numpy(), density, color=color, label=f"{label} ({len(values)})")
        ax.fill_between(grid.numpy(), density, color=color, alpha=0.2)


def response_lengths(configurations: list, teacher: str) -> dict[str, dict[str, dict[str, float]]]:
    """Figures 7-9 for one GRPO teacher: {safety benchmark: {student: {"base", "sft", "grpo": the mean length in tokens of
    the first samples}}}, for the students GRPO trained from that teacher's SFT adapters (NaN where a run is missing)."""
    safety = [c for c in configurations if c.kind == "safety" and c.teacher == teacher]
    grpo = [c for c in safety if c.stage == "grpo"]
    lengths = {}
    for b in dict.fromkeys(c.benchmark for c in grpo):
        lengths[b] = {}
        for s in dict.fromkeys(c.student for c in grpo):
            runs = {stage: [c for c in safety if (c.stage, c.student, c.benchmark) == (stage, s, b)] for stage in ("sft", "grpo")}
            base = [c.results.base["first_length"] for c in runs["sft"] + runs["grpo"] if c.results.base]
            lengths[b][s] = {"base": _mean(base[:1]),
                             **{stage: _mean([c.results.first_length for c in runs[stage] if c.results.first_length is not None])
                                for stage in ("sft", "grpo")}}
    return lengths


def per_teacher(path: Path, teacher: str) -> Path:
    """The file of one teacher's figure among a numbered set (Figures 7-9, 10-17): `<stem>_<teacher>.png`."""
    return path.with_name(f"{path.stem}_{teacher}.png")


def response_length(configurations: list, path: Path, choices: FigureChoices) -> str | None:
    """Figures 7-9: one figure per GRPO teacher (`per_teacher`), a panel per safety benchmark: per student, the mean
    response length of the base model, the SFT student and the GRPO student (first samples)."""
    teachers = list(dict.fromkeys(c.teacher for c in configurations if c.stage == "grpo" and c.kind == "safety"))
    if not teachers:
        return "no GRPO evaluation on a safety benchmark: Figures 7-9 need the GRPO students and their SFT ones"
    width, gaps = 0.27, []
    for teacher in teachers:
        lengths = response_lengths(configurations, teacher)
        figure, axes = _panels(len(lengths), 5, 3.6)
        for ax, (benchmark, students) in zip(axes, lengths.items(), strict=True):
            for k, (stage, color) in enumerate((("base", "#95a5a6"), ("sft", "#2980b9"), ("grpo", "#27ae60"))):
                values = [v[stage] for v in students.values()]
                gaps += [f"{teacher} / {s} / {benchmark} / {stage}" for s, v in students.items() if math.isnan(v[stage])]
                ax.bar([i + (k - 1) * width for i in range(len(students))], [0 if math.isnan(v) else v for v in values], width,
                       label=stage, color=color)
            ax.set_xticks(range(len(students)), list(students), rotation=25, ha="right", fontsize=8)
            ax.set_ylabel("mean response length (tokens)", fontsize=8)
            ax.set_title(f"teacher {teacher}, {benchmark}", fontsize=9)
            ax.legend(fontsize=7)
        save(figure, per_teacher(path, teacher))
    return f"no length for {'; '.join(gaps[:6])}: those bars read 0" if gaps else None


def rate_by_layer_lines(configurations: list, teacher: str) -> dict[str, dict[str, list[float]]]:
    """Figures 10-17 for one teacher: {SFT student: {benchmark: the latent choice's safety rate (100 - ASR) or utility at
    every layer}}."""
    group = [c for c in configurations if c.stage == "sft" and c.teacher == teacher and c.results.by_layer]
    return {s: {c.benchmark: [100 - v if c.kind == "safety" else v for v in c.results.by_layer] for c in group if c.student == s}
            for s in dict.fromkeys(c.student for c in group)}


def rate_by_layer(configurations: list, path: Path, choices: FigureChoices) -> str | None:
    """Figures 10-17: one figure per teacher (`per_teacher`), a panel per SFT student, a line per benchmark: the latent
    choice's safety rate (or utility) by layer."""
    teachers = list(dict.fromkeys(c.teacher for c in configurations if c.stage == "sft" and c.results.by_layer))
    if not teachers:
        return "no SFT evaluation with a base: nothing to draw by layer"
    for teacher in teachers:
        lines = rate_by_layer_lines(configurations, teacher)
        figure, axes = _panels(len(lines), 4.2, 3.2)
        for ax, (student, benchmarks) in zip(axes, lines.items(), strict=True):
            for benchmark, values in benchmarks.items():
                ax.plot(values, marker=".", linewidth=1.2, label=benchmark)
            ax.set_title(f"{teacher} -> {student}", fontsize=9)
            ax.set_xlabel("layer", fontsize=8)
            ax.xaxis.set_major_locator(_pyplot().MaxNLocator(integer=True))
            ax.set_ylabel("safety rate / utility (%)", fontsize=8)
            ax.legend(fontsize=6)
        save(figure, per_teacher(path, teacher))
    return None
