"""The paper's figures, drawn from evaluate.py runs for report.py (PAPER.md section 7). Each function
takes the configurations (report.Configuration) and a PNG path, writes the figure whole or not at all,
and returns None, or, when the runs it needs are missing, the one line that says which. The numbers each
figure shows come from a function of their own (`heatmap_grid`, `first_vs_majority_bars`, `density_values`,
`layer_series`), which the tests assert.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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


def heatmap_grid(configurations: list, kind: str, benchmark: str) -> tuple[list[str], list[str], torch.Tensor]:
    """One panel of Figures 3 and 4: the teachers (rows), the students then "teacher itself" (columns), and
    `first`'s rate in each cell, the mean over the SFT evaluations of that pair on `benchmark` (the last column:
    the teacher's own, evaluated `as_is`); NaN where nothing was evaluated."""
    group = [c for c in configurations if c.kind == kind and c.stage == "sft" and c.benchmark == benchmark]
    alone = [c for c in configurations if c.kind == kind and c.stage == "teacher" and c.benchmark == benchmark]
    teachers = list(dict.fromkeys(c.teacher for c in group))
    students = list(dict.fromkeys(c.student for c in group)) + ["teacher itself"]
    grid = torch.full((len(teachers), len(students)), math.nan)
    for t, teacher in enumerate(teachers):
        for s, student in enumerate(students[:-1]):
            grid[t, s] = _mean([c.results.rates["first"] for c in group if c.teacher == teacher and c.student == student])
        grid[t, -1] = _mean([c.results.rates["first"] for c in alone if c.teacher == teacher])
    return teachers, students, grid


def heatmaps(configurations: list, kind: str, path: Path, *, rate: str) -> str | None:
    """Figures 3 and 4: per benchmark of `kind`, `first`'s rate per (teacher, student) after SFT, beside
    each teacher's own rate (evaluated `as_is`), one panel per benchmark (`heatmap_grid`)."""
    distilled = [c for c in configurations if c.kind == kind and c.stage == "sft"]
    if not distilled:
        return f"no SFT evaluations on a {kind} benchmark: run evaluate.py adapter=<sft run>/adapter on one"
    teachers_alone = [c for c in configurations if c.kind == kind and c.stage == "teacher"]
    benchmarks = list(dict.fromkeys(c.benchmark for c in distilled))
    figure, axes = _panels(len(benchmarks), 5.5, 4)
    for ax, benchmark in zip(axes, benchmarks, strict=True):
        teachers, students, grid = heatmap_grid(configurations, kind, benchmark)
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
    if missing:
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
    """Figure 5: per student, the ASR of the first sample and of majority voting (unsafe iff more than half
    of the N samples are), averaged over its SFT evaluations on safety benchmarks (`first_vs_majority_bars`)."""
    bars = first_vs_majority_bars(configurations)
    students = list(bars["first"])
    if not students:
        return "no SFT evaluation on a safety benchmark with majority_vote compared: Figure 5 needs one"
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(max(5, 1.4 * len(students) + 2), 4))
    width = 0.38
    for offset, selector, color in ((-width / 2, "first", "#7f8c8d"), (width / 2, "majority_vote", "#8e44ad")):
        ax.bar([i + offset for i in range(len(students))], list(bars[selector].values()), width, label=selector, color=color)
    ax.set_xticks(range(len(students)), students, rotation=20, ha="right")
    ax.set_ylabel("ASR (%)")
    ax.set_title("First sample vs majority vote, per student (after SFT)")
    ax.legend()
    save(figure, path)
    return None


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
    """Figure 6: the distributions of perplexity, self-certainty, KL(FT || base) and latent similarity for
    unsafe vs safe candidates, pooled over the SFT evaluations on safety benchmarks (one panel each)."""
    group = [c for c in configurations if c.kind == "safety" and c.stage == "sft" and c.results.evaluated
             and c.results.evaluated.get("base")]
    pooled, layer = density_values(group)
    if not any(unsafe and safe for unsafe, safe in pooled.values()):
        return "no SFT evaluation on a safety benchmark with both safe and unsafe candidates: Figure 6 needs one"
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(DENSITY_PANELS), figsize=(4.2 * len(DENSITY_PANELS), 3.6))
    for ax, (title, _) in zip(axes, DENSITY_PANELS, strict=True):
        unsafe, safe = pooled[title]
        if (empty := _no_histogram(unsafe, safe)) is not None:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        else:
            # 30 equal bins over both classes' range, numpy's own edges (float32 ones can leave the maximum out)
            span = {"bins": 30, "range": (min(unsafe + safe), max(unsafe + safe)), "density": True, "alpha": 0.55}
            ax.hist(unsafe, **span, color=UNSAFE_COLOR, label=f"unsafe ({len(unsafe)})")
            ax.hist(safe, **span, color=SAFE_COLOR, label=f"safe ({len(safe)})")
            ax.legend(fontsize=7)
        ax.set_title(title.format(layer=layer), fontsize=10)
        ax.set_ylabel("density")
    save(figure, path)
    return None


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
