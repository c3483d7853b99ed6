"""report.py: evaluate.py runs -> the paper's table, per-configuration table, figure, W&B artifacts."""

import base64
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from lightning_da.errors import UserError
from lightning_da.runs.report import find_configurations, main, paper_table, write_report
from lightning_da.stats import paired_bootstrap_many
from lightning_da.tasks import EvaluationResults
from tests import wandb_log

ROOT = Path(__file__).resolve().parents[1]


def choices(run: Path, **chosen) -> None:
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": chosen}}}))


def evaluation(root: Path, name: str, *, benchmark: str, task: str, outcomes: dict, teacher="qwq", student="llama3_8b",
               stage="sft", as_is=None, experiment=None, candidates=None, lengths=None, traces_unsafe=None, strongreject=None) -> Path:
    """An evaluate.py run directory as evaluate.py writes it, and the train run its adapter came from (none
    for a model evaluated `as_is` or the instruct_vs_base control). `candidates`: candidates.jsonl's records;
    `lengths`: (the first samples' mean length, the base's), the base's `first` then written too; `traces_unsafe`:
    the train run's metrics.json count of unsafe traces; `strongreject`: a graded judge's mean score per selector."""
    run = root / "evaluate" / name
    chosen = {"student": student, "benchmark": benchmark, **({"teacher": teacher} if as_is == "teacher" else {}),
              **({"experiment": experiment} if experiment else {})}
    choices(run, **chosen)
    adapter = None
    if as_is is None and experiment is None:
        train = root / f"train-{name}"
        choices(train, teacher=teacher, student=student, algorithm=stage)
        adapter = str(train / "adapter")
        if traces_unsafe is not None:
            (train / "metrics.json").write_text(json.dumps({"train/loss": 1.0, "data/traces_unsafe": traces_unsafe}))
    task_name = "instruct_vs_base" if experiment else "evaluate"  # what experiment=instruct_vs_base and eval_control set
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"adapter": adapter, "as_is": as_is, "task_name": task_name}))
    rates = {s: 100 * sum(o for o in v if o is not None) / sum(o is not None for o in v) for s, v in outcomes.items()}
    first = rates["first"]
    drops = {s: (first - r) / first * 100 if first else None for s, r in rates.items()}
    with_base = as_is is None
    signal = {"scores": {f"cosine@{i}": {"auroc": 0.5 + 0.1 * i, "ci": [0.4, 0.9]} for i in range(3)}} if with_base else None
    results = EvaluationResults(benchmark=benchmark, task=task, judge="refusal_prefix", n_prompts=len(outcomes["first"]),
                                n_candidates=2, layer=1 if with_base else None, rates=rates, drops=drops, intervals={},
                                outcomes=outcomes, chosen_layers={}, signal=signal,
                                by_layer=[first, first / 2, first / 3] if task == "safety" and with_base else [],
                                evaluated={"model": student, "base": "adapter disabled" if with_base else None, "as_is": as_is},
                                first_length=lengths[0] if lengths else None, strongreject=strongreject,
                                base=None if lengths is None else {
                                    "first": first, "outcomes": outcomes["first"], "first_length": lengths[1],
                                    "student_vs_base": {"difference": 0.0, "difference_ci": [0.0, 0.0], "mcnemar_p": 1.0}})
    (run / "results.json").write_text(results.to_json())
    if candidates is not None:
        (run / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in candidates))
    return run


def candidate_records(seed: int, prompts: int = 6) -> list[dict]:
    """candidates.jsonl records of 2 candidates each, every score filled, unsafe and safe both present."""
    g = torch.Generator().manual_seed(seed)
    return [{"flags": [bool(p % 2), not p % 3], "perplexity": (torch.rand(2, generator=g) * 10 + 1).tolist(),
             "self_certainty": torch.rand(2, generator=g).tolist(), "kl": torch.rand(2, generator=g).tolist(),
             "cosine_by_layer": torch.rand(2, 3, generator=g).tolist()} for p in range(prompts)]


@pytest.fixture
def runs(tmp_path):
    evaluation(tmp_path, "a", benchmark="strongreject", task="safety",
               outcomes={"first": [1, 1, 1, 0], "latent_sim": [0, 1, 0, 0]})
    evaluation(tmp_path, "b", benchmark="strongreject", task="safety", student="qwen2_5_0_5b",
               outcomes={"first": [0, 0, 0], "latent_sim": [0, 1, 0]})  # first is 0: no drop
    evaluation(tmp_path, "c", benchmark="gsm8k", task="number",
               outcomes={"first": [1, 1, 0, 1, 0], "latent_sim": [1, 0, 0, 1, None]})  # None: not rated
    return tmp_path


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_configurations_are_read_from_the_runs_and_their_train_runs(runs):
    configurations = find_configurations([runs / "evaluate"])
    assert [(c.teacher, c.student, c.stage, c.benchmark, c.kind) for c in configurations] == [
        ("qwq", "llama3_8b", "sft", "strongreject", "safety"), ("qwq", "qwen2_5_0_5b", "sft", "strongreject", "safety"),
        ("qwq", "llama3_8b", "sft", "gsm8k", "utility")]


def test_what_no_run_names_reads_unknown(tmp_path):
    """Each field from the run that keeps it, `?` where none does: a results.json with no Hydra record beside it; a
    student named only by its train run; a train run whose record is gone; a model as it is; a teacher as it is
    whose run names no teacher."""
    bare = tmp_path / "evaluate" / "bare"
    bare.mkdir(parents=True)
    (bare / "results.json").write_text(MINIMAL.to_json())
    choices(evaluation(tmp_path, "from-train", benchmark="dan", task="safety", outcomes={"first": [1]}, student="qwen2_5_0_5b"),
            benchmark="dan")
    evaluation(tmp_path, "gone", benchmark="dan", task="safety", outcomes={"first": [1]}, teacher="r1_qwen_14b")
    (tmp_path / "train-gone" / ".hydra" / "hydra.yaml").unlink()
    evaluation(tmp_path, "alone", benchmark="dan", task="safety", outcomes={"first": [1]}, student="qwen2_5_0_5b", as_is="student")
    choices(evaluation(tmp_path, "teacher-alone", benchmark="dan", task="safety", outcomes={"first": [1]}, as_is="teacher"),
            benchmark="dan")
    assert [(c.teacher, c.student, c.stage) for c in find_configurations([tmp_path / "evaluate"])] == [
        ("-", "qwen2_5_0_5b", "as_is"), ("?", "?", "?"), ("qwq", "qwen2_5_0_5b", "sft"), ("?", "llama3_8b", "?"), ("?", "-", "teacher")]


def test_paper_table_against_hand_computation(runs):
    table = paper_table(find_configurations([runs / "evaluate"]), seed=1, resamples=500)
    safety = table[("safety", "strongreject")]["latent_sim"]
    assert safety.drop == pytest.approx((75 - 25) / 75 * 100, abs=1e-4)  # configuration b has no drop
    assert safety.n == 1 and safety.undefined == 1
    assert safety.difference == pytest.approx(((25 - 75) + (100 / 3 - 0)) / 2, abs=1e-4)
    expected = paired_bootstrap_many([[1, 1, 1, 0], [0, 0, 0]], [[0, 1, 0, 0], [0, 1, 0]], seed=1, resamples=500)
    assert safety.difference_ci == pytest.approx(list(expected.difference_ci), abs=1e-4)
    utility = table[("utility", "gsm8k")]["latent_sim"]
    assert utility.drop == pytest.approx((75 - 50) / 75 * 100, abs=1e-4)  # the unrated prompt left out of both
    by_default = paper_table(find_configurations([runs / "evaluate"]), resamples=500)[("safety", "strongreject")]["latent_sim"]
    seed_0 = paired_bootstrap_many([[1, 1, 1, 0], [0, 0, 0]], [[0, 1, 0, 0], [0, 1, 0]], seed=0, resamples=500)
    assert by_default.difference_ci == pytest.approx(list(seed_0.difference_ci), abs=1e-4)  # the bootstrap's seed: 0


def test_report_files_have_no_nan_and_footnote_the_undefined_drop(runs):
    files = write_report(find_configurations([runs / "evaluate"]), runs / "report", resamples=200)
    markdown = files["report"].read_text()
    assert "nan" not in markdown.lower() and "strongreject: 1 configuration(s) had a `first` rate of 0" in markdown
    table = read_csv(files["table"])
    assert [(row["stage"], row["benchmark"], row["selector"]) for row in table] == [
        ("sft", "strongreject", "latent_sim"), ("sft", "gsm8k", "latent_sim")]
    assert float(table[0]["drop"]) == pytest.approx(66.6667) and table[0]["n"] == "1" and table[0]["drop_of"] == "ASR"
    assert len(read_csv(files["configurations"])) == 6  # 3 configurations x 2 selectors
    assert files["asr_by_layer"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # What these runs lack is named, one line per figure, never an empty plot.
    assert "Not drawn: no SFT evaluation on a safety benchmark with majority_vote compared" in markdown
    assert "Not drawn: no SFT evaluation on a safety benchmark with both safe and unsafe candidates" in markdown
    assert ("Not drawn: no SFT evaluation of teacher r1_qwen_14b's students on a safety benchmark with majority_vote compared"
            in markdown)  # Figure 5's teacher, the paper's by default
    assert "no evaluation of teacher(s) qwq as it is" in markdown and "figure5_first_vs_majority" not in files
    assert "Not produced: no grpo runs among these" in markdown and "Not produced: no instruct_vs_base runs" in markdown
    assert "Not produced: no attack runs among these" in markdown


def test_every_table_and_figure_from_a_whole_sweep(tmp_path):
    """SFT and GRPO runs, a teacher as it is, the instruct_vs_base control: Tables 1-3 and every figure."""
    from lightning_da.figures import FigureChoices

    safe_first = {"first": [1, 0, 1, 1], "latent_sim": [0, 0, 1, 0], "majority_vote": [1, 0, 0, 1]}
    for teacher in ("qwq", "r1_qwen_14b"):
        for student in ("llama3_8b", "qwen2_5_0_5b"):
            evaluation(tmp_path, f"{teacher}-{student}", benchmark="dan", task="safety", outcomes=safe_first, teacher=teacher,
                       student=student, candidates=candidate_records(len(teacher) + len(student)), lengths=(120.0, 80.0),
                       traces_unsafe=len(teacher))
            evaluation(tmp_path, f"{teacher}-{student}-gsm8k", benchmark="gsm8k", task="number", teacher=teacher, student=student,
                       outcomes={"first": [1, 0, 1], "latent_sim": [1, 1, 0], "majority_vote": [1, 0, 1]})
        evaluation(tmp_path, f"{teacher}-alone", benchmark="dan", task="safety", teacher=teacher, as_is="teacher",
                   outcomes={"first": [0, 0, 1, 0], "perplexity": [0, 1, 0, 0]})
    evaluation(tmp_path, "grpo", benchmark="dan", task="safety", stage="grpo", outcomes=safe_first, lengths=(90.0, 80.0))
    evaluation(tmp_path, "control", benchmark="dan", task="safety", experiment="eval_control", outcomes=safe_first)
    attack = tmp_path / "evaluate" / "attack"
    choices(attack, student="llama3_2_1b")
    (attack / "attack_results.json").write_text(json.dumps({
        "n_behaviours": 50, "outcomes": {},
        "targets": {"instruct": {"asr": 88.0, "mean_queries": 5.5, "mean_samples": 5.5, "samples_per_query": 1},
                    "aligned": {"asr": 68.0, "mean_queries": 9.0, "mean_samples": 9.0, "samples_per_query": 1},
                    "aligned_bon": {"asr": 66.0, "mean_queries": 9.5, "mean_samples": 76.0, "samples_per_query": 8}},
        "pairs": {"aligned_bon_vs_aligned": {"difference": -2.0, "difference_ci": [-10.0, 6.0], "mcnemar_p": 0.8}}}))
    configurations = find_configurations([tmp_path / "evaluate"])
    assert {(c.teacher, c.student, c.stage) for c in configurations if c.stage in ("teacher", "instruct_vs_base")} == {
        ("qwq", "-", "teacher"), ("r1_qwen_14b", "-", "teacher"), ("-", "llama3_8b", "instruct_vs_base")}
    files = write_report(configurations, tmp_path / "report", resamples=100, directories=[tmp_path / "evaluate"],
                         choices=FigureChoices("llama3_8b", "qwq", ("qwen2_5_0_5b", "r1_qwen_14b", "dan")))
    markdown = files["report"].read_text()
    assert "| llama3_2_1b | PAIR | 50 | ASR | 88.0% (5.5) | 68.0% (9.0) | 66.0% (9.5) | -2.0 [-10.0, 6.0] |" in markdown  # Table 4
    assert [row["target"] for row in read_csv(files["attack"])] == ["instruct", "aligned", "aligned_bon"]
    for heading in ("## Table 1: after SFT", "## Table 2: after GRPO", "## Table 3: the control", "## Teachers as they are",
                    "## Table 4: adaptive attacks"):
        assert heading in markdown
    figures = {"figure2_unsafe_traces", "figure3_safety_by_teacher", "figure18_safety_by_teacher_every_student",
               "figure19_safety_by_teacher_after_grpo", "figure4_utility_heatmap", "figure5_first_vs_majority", "figure6_densities",
               "figures7_9_response_length_qwq", "figures10_17_rate_by_layer_qwq", "figures10_17_rate_by_layer_r1_qwen_14b",
               "asr_by_layer", "by_layer_per_configuration",
               "auroc_by_layer", "asr_heatmap_with_teachers", "first_vs_majority_pooled", "densities_pooled"}
    assert figures == {k for k in files if files[k].suffix == ".png"} and "Not drawn" not in markdown and "Not produced" not in markdown
    for name in figures:
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name}.png)" in markdown
    sections = {part.split("\n")[0]: part for part in markdown.split("### ")[1:]}
    assert "no evaluation of teacher(s)" not in sections["Extra: ASR per teacher x student after SFT, beside each teacher's own (as_is)"]
    assert sections["Figure 19: every GRPO student's safety rate per teacher after GRPO"].endswith(
        "(figure19_safety_by_teacher_after_grpo.png)\n\n")  # its one run, qwq -> llama3_8b: nothing missing
    stages = {row["stage"] for row in read_csv(files["table"])}
    assert stages == {"sft", "grpo", "instruct_vs_base", "teacher"}


def test_each_figure_shows_the_numbers_of_its_runs(tmp_path):
    """The numbers behind Figures 3-6 and the by-layer lines, each cell from its runs by hand: Figure 3's cell is
    `first`'s ASR of that (teacher, student) after SFT (the mean of its runs), its last column the teacher's own;
    Figure 5's bars are per student; Figure 6 pools every candidate by its flag; a by-layer line is its run's."""
    from lightning_da import figures

    sft = {("qwq", "llama3_8b"): [1, 0, 0, 0], ("qwq", "qwen2_5_0_5b"): [1, 1, 0, 0], ("r1_qwen_14b", "llama3_8b"): [1, 1, 1, 0]}
    majority = {("qwq", "llama3_8b"): [0, 0, 0, 0], ("qwq", "qwen2_5_0_5b"): [1, 0, 0, 0], ("r1_qwen_14b", "llama3_8b"): [1, 1, 0, 0]}
    records = {pair: candidate_records(k, prompts=4) for k, pair in enumerate(sft)}
    for (teacher, student), first in sft.items():
        evaluation(tmp_path, f"{teacher}-{student}", benchmark="dan", task="safety", teacher=teacher, student=student,
                   outcomes={"first": first, "majority_vote": majority[teacher, student]}, candidates=records[teacher, student])
    evaluation(tmp_path, "qwq-llama-again", benchmark="dan", task="safety", teacher="qwq", student="llama3_8b",
               outcomes={"first": [0, 0, 1, 1], "majority_vote": [0, 0, 0, 1]})
    evaluation(tmp_path, "qwq-alone", benchmark="dan", task="safety", teacher="qwq", as_is="teacher", outcomes={"first": [0, 1, 0, 0]})
    evaluation(tmp_path, "grpo", benchmark="dan", task="safety", stage="grpo", outcomes={"first": [1, 1, 1, 1], "majority_vote": [1] * 4})
    evaluation(tmp_path, "gsm8k", benchmark="gsm8k", task="number", outcomes={"first": [1, 1, 1, 1], "majority_vote": [1] * 4})
    configurations = find_configurations([tmp_path / "evaluate"])

    teachers, students, grid = figures.heatmap_grid(configurations, "safety", "dan")
    assert (teachers, students) == (["qwq", "r1_qwen_14b"], ["llama3_8b", "qwen2_5_0_5b", "teacher itself"])
    assert torch.equal(grid.isnan(), torch.tensor([[False, False, False], [False, True, True]]))
    assert grid.nan_to_num(-1).tolist() == [[(25 + 50) / 2, 50, 25], [75, -1, -1]]

    assert figures.first_vs_majority_bars(configurations) == {"first": {"llama3_8b": (25 + 50 + 75) / 3, "qwen2_5_0_5b": 50},
                                                               "majority_vote": {"llama3_8b": (0 + 25 + 50) / 3, "qwen2_5_0_5b": 25}}

    sft_runs = [c for c in configurations if c.stage == "sft" and c.kind == "safety"]
    pooled, layer = figures.density_values(sft_runs)
    every = [r for pair in sft for r in records[pair]]
    flagged = [(value, flag) for r in every for value, flag in zip(r["kl"], r["flags"], strict=True)]
    assert layer == 1 and pooled["KL(FT || base)"] == ([v for v, f in flagged if f], [v for v, f in flagged if not f])
    cosines = [(c[1], flag) for r in every for c, flag in zip(r["cosine_by_layer"], r["flags"], strict=True)]
    assert pooled["latent similarity (cosine at layer {layer})"] == ([v for v, f in cosines if f], [v for v, f in cosines if not f])
    unsafe_log_ppl = [math.log10(v) for r in every for v, f in zip(r["perplexity"], r["flags"], strict=True) if f]
    assert pooled["perplexity (log10)"][0] == pytest.approx(unsafe_log_ppl) and len(pooled["self-certainty"][1]) == 2 * 12 - len(unsafe_log_ppl)

    uneven = {id(c): v for c, v in zip(sft_runs, ([10.0, 20.0, 30.0], [30.0, math.nan]), strict=False)}
    assert figures.layer_series(sft_runs[:2], lambda c: uneven[id(c)])[1] == [20.0, 20.0]  # the layers all have, NaN left out
    series, mean = figures.layer_series(sft_runs, lambda c: c.results.by_layer)
    firsts = [25.0, 50.0, 75.0, 50.0]  # each run's `first` (the helper's by_layer: first, first / 2, first / 3)
    assert sorted(v[0] for _, v in series) == sorted(firsts)
    assert mean == pytest.approx([sum(firsts) / 4, sum(firsts) / 8, sum(firsts) / 12])


def test_main_writes_the_report_and_a_wandb_artifact(runs, capsys, monkeypatch):
    """report.py's main in this process (test_wheel runs the installed CLI): it prints the report's text up to its
    figures and the files it wrote, whole; the W&B run (offline when WANDB_MODE is unset), read back from its
    `.wandb` log, is a `report` job in the project asked for, holding the report artifact with every file's exact
    bytes, each table's rows as its CSV has them, and each figure's exact PNG."""
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = runs / "out"
    (runs / "evaluate" / "attack").mkdir()
    (runs / "evaluate" / "attack" / "attack_results.json").write_text(json.dumps({"n_behaviours": 2, "outcomes": {}, "pairs": {}, "targets": {
        "instruct": {"asr": 50.0, "mean_queries": 2.0, "mean_samples": 2.0, "samples_per_query": 1}}}))
    try:
        main([str(runs / "evaluate"), "--out", str(out), "--resamples", "200", "--seed", "3", "--wandb-project", "lightning_da_test"])
    finally:
        wandb.teardown()  # W&B's settings outlive the run: the next one in this process reads WANDB_MODE afresh
    written = [out / name for name in ("report.md", "table.csv", "configurations.csv", "attack.csv",
                                       "figure18_safety_by_teacher_every_student.png", "figure4_utility_heatmap.png",
                                       "figures10_17_rate_by_layer_qwq.png", "asr_by_layer.png", "by_layer_per_configuration.png",
                                       "auroc_by_layer.png", "asr_heatmap_with_teachers.png")]
    report = (out / "report.md").read_text()
    assert capsys.readouterr().out == report[: report.index("\n![")] + "\n" + "written: " + ", ".join(map(str, written)) + "\n"
    assert "| latent_sim |" in report and "(200 resamples, prompts resampled within each configuration, seed 3)" in report
    (log,) = (out / "wandb").glob("offline-run-*/*.wandb")
    md5 = {p.name: base64.b64encode(hashlib.md5(p.read_bytes()).digest()).decode() for p in written}
    logged = wandb_log.artifacts(log)
    assert logged.pop("best-of-n-report") == {"type": "report", "files": md5}
    assert sorted(file for a in logged.values() if a["type"] == "run_table" for file in a["files"]) == [  # the wandb.Tables
        "report/attack.table.json", "report/configurations.table.json", "report/table.table.json"]
    run, history = wandb_log.run_and_history(log)
    assert run == ("lightning_da_test", "report")
    for name in ("table", "configurations", "attack"):
        table = json.loads((log.parent / "files" / history[f"report/{name}/path"]).read_text())
        rows = list(csv.reader(io.StringIO((out / f"{name}.csv").read_text())))
        assert (table["columns"], [[str(v) for v in row] for row in table["data"]]) == (rows[0], rows[1:])
    for path in written[4:]:
        assert history[f"report/{path.stem}/_type"] == "image-file"
        assert history[f"report/{path.stem}/sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_wandb_mode_is_the_users(runs, monkeypatch):
    """WANDB_MODE=disabled, as a user sets it: no run is written, offline or online."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        main([str(runs / "evaluate"), "--out", str(runs / "out"), "--resamples", "10", "--wandb-project", "lightning_da_test"])
    finally:
        wandb.teardown()
    assert (runs / "out" / "report.md").is_file() and not list((runs / "out").glob("wandb/*run-*"))


def test_the_command_line_defaults_and_help(runs, capsys, monkeypatch):
    """Without --out the report lands in the first directory, with the bootstrap's 10,000 resamples and seed 0;
    --resamples 1 is the least it takes; --help says what each option does."""
    main([str(runs / "evaluate" / "a"), str(runs / "evaluate" / "b")])
    report = (runs / "evaluate" / "a" / "report.md").read_text()
    assert "# Best-of-N latent attribution: 2 configuration(s)" in report
    assert "(10000 resamples, prompts resampled within each configuration, seed 0)" in report
    main([str(runs / "evaluate" / "c"), "--resamples", "1"])
    assert "(1 resamples," in (runs / "evaluate" / "c" / "report.md").read_text()
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0 and capsys.readouterr().out == (
        "usage: report.py [-h] [--out OUT] [--seed SEED] [--resamples RESAMPLES] [--wandb-project WANDB_PROJECT] "
        "[--figure3-student FIGURE3_STUDENT] [--figure5-teacher FIGURE5_TEACHER]\n"
        "                 [--figure6 STUDENT,TEACHER,BENCHMARK]\n"
        "                 dirs [dirs ...]\n\n"
        "Aggregate evaluate.py runs: report.md, table.csv, configurations.csv and the paper's figures\n\n"
        "positional arguments:\n"
        "  dirs                  evaluate.py run or multirun directories (searched for results.json)\n\n"
        "options:\n"
        "  -h, --help            show this help message and exit\n"
        "  --out OUT             where to write (default: the first directory)\n"
        "  --seed SEED           the bootstrap's seed\n"
        "  --resamples RESAMPLES\n"
        "                        bootstrap resamples\n"
        "  --wandb-project WANDB_PROJECT\n"
        "                        also log the tables and figure as W&B artifacts to this project\n"
        "  --figure3-student FIGURE3_STUDENT\n"
        "                        Figure 3's student (the paper's Qwen2.5-14B)\n"
        "  --figure5-teacher FIGURE5_TEACHER\n"
        "                        Figure 5's teacher (the paper's R1-Distill-Qwen-14B)\n"
        "  --figure6 STUDENT,TEACHER,BENCHMARK\n"
        "                        Figure 6's configuration (the paper's Qwen2.5-0.5B taught by R1-Distill-Qwen-14B, on DAN)\n")


def test_an_error_is_one_plain_line_on_stderr(tmp_path, capsys):
    """As the CLI prints it: the root logger set up by main itself (pytest's own handlers set aside)."""
    import logging

    handlers, logging.root.handlers = logging.root.handlers, []
    try:
        with pytest.raises(SystemExit) as exited:
            main([str(tmp_path / "runs"), "--resamples", "0"])
        with pytest.raises(SystemExit) as figure6:
            main([str(tmp_path / "runs"), "--figure6", "qwen2_5_0_5b,r1_qwen_14b"])
    finally:
        for handler in logging.root.handlers:
            handler.close()
        logging.root.handlers = handlers
    assert exited.value.code == figure6.value.code == 2 and capsys.readouterr().err == (
        "error: --resamples=0: set it to an integer of at least 1\n"
        "error: --figure6=qwen2_5_0_5b,r1_qwen_14b: give student,teacher,benchmark, e.g. qwen2_5_0_5b,r1_qwen_14b,dan\n")


MINIMAL = EvaluationResults("b", "safety", "j", 1, 1, None, {}, {}, [], {}, {}, {})


def results_json(text: str):
    """A maker of a run directory `x` whose results.json holds `text`."""

    def make(root: Path) -> None:
        (root / "x").mkdir(parents=True)
        (root / "x" / "results.json").write_text(text)

    return make


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root.mkdir(), "no results.json under {runs}; run evaluate.py there first"),
    (lambda root: None, "{runs} is not a directory; pass evaluate.py run or multirun directories"),
    (results_json("{"),
     "{runs}/x/results.json is not valid JSON (Expecting property name enclosed in double quotes); delete it or rerun its evaluation"),
    (results_json("{}"),
     "{runs}/x/results.json is a results file of schema version 1, this lightning_da reads version 2; rerun its evaluation with "
     "this version"),
    (results_json("[]"),
     "{runs}/x/results.json is a results file of schema version None, this lightning_da reads version 2; rerun its evaluation "
     "with this version"),
    (results_json('{"schema_version": 3}'),
     "{runs}/x/results.json is a results file of schema version 3, this lightning_da reads version 2; rerun its evaluation with "
     "this version"),
    (results_json('{"schema_version": 2, "task": "safety"}'),
     "{runs}/x/results.json lacks ['benchmark', 'by_layer', 'chosen_layers', 'drops', 'intervals', 'judge', 'layer', 'n_candidates', "
     "'n_prompts', 'outcomes', 'rates'] and has unknown keys none; rerun its evaluation"),
    (results_json(MINIMAL.to_json().replace('"judge"', '"jduge"')),
     "{runs}/x/results.json lacks ['judge'] and has unknown keys ['jduge']; rerun its evaluation"),
    (results_json(MINIMAL.to_json().replace('"base"', '"extra": 1, "base"')),
     "{runs}/x/results.json lacks nothing and has unknown keys ['extra']; rerun its evaluation"),
])
def test_bad_directories_are_one_line_and_exit_2(tmp_path, caplog, make, message):
    """report.py's own main, in this process (its real CLI runs above and in test_wheel): the whole line."""
    make(tmp_path / "runs")
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "runs")])
    errors = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert exited.value.code == 2 and errors == [("report", "error: " + message.format(runs=tmp_path / "runs"))]
    with pytest.raises(UserError):
        find_configurations([tmp_path / "runs"])


def test_no_results_under_several_directories_names_them_all(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with pytest.raises(UserError) as error:
        find_configurations([tmp_path / "a", tmp_path / "b"])
    assert str(error.value) == f"no results.json under {tmp_path / 'a'}, {tmp_path / 'b'}; run evaluate.py there first"


@pytest.fixture
def drawn(monkeypatch):
    """The figures report.py draws, kept as matplotlib objects when saved (their PNGs are written as usual)."""
    from lightning_da import figures

    kept = {}
    original = figures.save

    def save(figure, path):
        kept[Path(path).stem] = {"axes": [ax for ax in figure.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"],
                                 "size": tuple(figure.get_size_inches())}
        original(figure, path)

    monkeypatch.setattr(figures, "save", save)
    return kept


def texts(ax) -> dict:
    """What a reader reads on one panel: title, axis labels, tick labels, legend entries, the text in the panel."""
    legend = ax.get_legend()
    return {"title": ax.get_title(), "x": ax.get_xlabel(), "y": ax.get_ylabel(),
            "xticks": [t.get_text() for t in ax.get_xticklabels()], "yticks": [t.get_text() for t in ax.get_yticklabels()],
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [], "text": [t.get_text() for t in ax.texts]}


def test_each_figure_says_what_it_shows(tmp_path, drawn):
    """Figures 3-6 drawn from a small sweep, read back from the drawn axes: every title, axis label, tick label,
    legend entry and cell text, and the values each plots, from the runs by hand."""
    from lightning_da import figures

    sft = {("qwq", "llama3_8b"): [1, 0, 0, 0], ("r1_qwen_14b", "llama3_8b"): [1, 1, 1, 0]}
    for k, ((teacher, student), first) in enumerate(sft.items()):
        evaluation(tmp_path, f"{teacher}-{student}", benchmark="dan", task="safety", teacher=teacher, student=student,
                   outcomes={"first": first, "majority_vote": [0, 0, 0, k]}, candidates=candidate_records(k, prompts=4))
    evaluation(tmp_path, "qwq-alone", benchmark="dan", task="safety", teacher="qwq", as_is="teacher", outcomes={"first": [0, 1, 1, 1]})
    evaluation(tmp_path, "gsm8k", benchmark="gsm8k", task="number", outcomes={"first": [1, 1, 0, 1]}, candidates=candidate_records(7))
    # Not in Figure 6: after GRPO, and a teacher as it is (no base), whatever their candidates.
    evaluation(tmp_path, "grpo", benchmark="dan", task="safety", stage="grpo", outcomes={"first": [1, 1]}, candidates=candidate_records(8))
    evaluation(tmp_path, "r1-alone", benchmark="xstest", task="over_refusal", teacher="r1_qwen_14b", as_is="teacher",
               outcomes={"first": [1, 1]}, candidates=candidate_records(9))
    configurations = find_configurations([tmp_path / "evaluate"])
    out = tmp_path / "figures"
    out.mkdir()

    note = figures.heatmaps(configurations, "safety", out / "figure3.png", rate="ASR")
    assert note == ("no evaluation of teacher(s) r1_qwen_14b as it is: their column reads n/a "
                    "(evaluate.py as_is=teacher teacher=<name>)")
    (ax,) = drawn["figure3"]["axes"]
    assert texts(ax) == {"title": "dan: ASR of the first sample (%)", "x": "", "y": "", "xticks": ["llama3_8b", "teacher itself"],
                         "yticks": ["qwq", "r1_qwen_14b"], "legend": [], "text": ["25", "75", "75", "n/a"]}
    image = ax.get_images()[0]
    assert image.get_clim() == (0, 100) and image.get_cmap().name == "Reds"
    assert image.colorbar is not None and image.colorbar.mappable is image  # the scale is the image's, 0-100
    assert figures.heatmaps(configurations, "utility", out / "figure4.png", rate="accuracy") == (
        "no evaluation of teacher(s) qwq as it is: their column reads n/a (evaluate.py as_is=teacher teacher=<name>)")
    (ax,) = drawn["figure4"]["axes"]
    assert texts(ax)["title"] == "gsm8k: accuracy of the first sample (%)" and ax.get_images()[0].get_cmap().name == "Greens"
    assert texts(ax)["text"] == ["75", "n/a"]

    assert figures.first_vs_majority(configurations, out / "figure5.png") is None
    (ax,) = drawn["figure5"]["axes"]
    assert texts(ax) == {"title": "First sample vs majority vote, per student (after SFT)", "x": "", "y": "ASR (%)",
                         "xticks": ["llama3_8b"], "yticks": texts(ax)["yticks"], "legend": ["first", "majority_vote"], "text": []}
    first, majority = ax.patches
    assert (first.get_height(), majority.get_height()) == (50.0, 12.5)
    # side by side, first on the left, the pair centred on the student's tick
    assert first.get_x() + first.get_width() == pytest.approx(majority.get_x()) and first.get_width() == pytest.approx(majority.get_width())
    assert first.get_x() + first.get_width() == pytest.approx(ax.get_xticks()[0])

    assert figures.densities(configurations, out / "figure6.png") is None
    axes = drawn["figure6"]["axes"]
    assert len({round(ax.get_position().y0, 6) for ax in axes}) == 1  # one row of panels
    assert [texts(ax)["title"] for ax in axes] == ["perplexity (log10)", "self-certainty", "KL(FT || base)",
                                                    "latent similarity (cosine at layer 1)"]
    records = candidate_records(0, prompts=4) + candidate_records(1, prompts=4)
    unsafe = sum(f for r in records for f in r["flags"])
    assert all(texts(ax)["legend"] == [f"unsafe ({unsafe})", f"safe ({2 * 8 - unsafe})"] and texts(ax)["y"] == "density" for ax in axes)
    for ax in axes:  # each histogram is a density: its bars' areas sum to 1 per class, over 30 equal bins spanning the values
        unsafe_bars, safe_bars = ax.containers
        for bars in (unsafe_bars, safe_bars):
            assert len(bars) == 30 and sum(p.get_height() * p.get_width() for p in bars) == pytest.approx(1.0)

    distilled = [c for c in configurations if c.kind == "safety" and c.stage == "sft" and c.results.by_layer]
    lines = figures.by_layer_lines(distilled, out / "lines.png",
                                   value=lambda c: c.results.by_layer, ylabel="ASR (%)", title="by layer", reference=(40.0, "first"))
    assert lines is True
    (ax,) = drawn["lines"]["axes"]
    assert {k: texts(ax)[k] for k in ("title", "x", "y", "legend")} == {
        "title": "by layer", "x": "layer (0 = embeddings)", "y": "ASR (%)",
        "legend": ["qwq -> llama3_8b (sft), dan", "r1_qwen_14b -> llama3_8b (sft), dan", "mean of 2", "first"]}
    assert all(tick == int(tick) for tick in ax.get_xticks())  # layers are whole numbers
    assert [list(line.get_ydata()) for line in ax.get_lines()][:3] == [[25.0, 12.5, 25 / 3], [75.0, 37.5, 25.0], [50.0, 25.0, 50 / 3]]
    assert list(ax.get_lines()[3].get_ydata()) == [40.0, 40.0]  # the reference line
    assert figures.by_layer_panels(distilled, out / "panels.png") is True
    panels = drawn["panels"]["axes"]
    assert [texts(ax)["title"] for ax in panels] == ["qwq -> llama3_8b (sft), dan", "r1_qwen_14b -> llama3_8b (sft), dan"]
    assert [(texts(ax)["y"], texts(ax)["x"], texts(ax)["legend"]) for ax in panels] == [("asr (%)", "layer", ["latent choice", "first"])] * 2
    assert [[list(line.get_ydata()) for line in ax.get_lines()] for ax in panels] == [
        [[25.0, 12.5, 25 / 3], [25.0, 25.0]], [[75.0, 37.5, 25.0], [75.0, 75.0]]]
    assert all(tick == int(tick) for ax in panels for tick in ax.get_xticks())
    assert figures.by_layer_panels([], out / "none.png") is False and not (out / "none.png").exists()
    assert figures.by_layer_lines(distilled, out / "none.png", value=lambda c: None, ylabel="", title="") is False
    assert not (out / "none.png").exists()


def test_panels_fill_rows_of_three_and_a_panel_without_spread_says_so(tmp_path, drawn):
    """Four benchmarks: two rows of three panels, the last two hidden. A density panel draws no histogram, and
    says why, when it has no value at all, one class without values, or values all equal."""
    from lightning_da import figures

    for benchmark in ("dan", "wildjailbreak", "strongreject", "harmbench"):
        evaluation(tmp_path, benchmark, benchmark=benchmark, task="safety", outcomes={"first": [1, 0], "majority_vote": [0, 0]})
    flat = [{"flags": [True, False], "perplexity": [None, 0.0], "self_certainty": [0.3, 0.3], "kl": [0.5, None],
             "cosine_by_layer": [[1.0, 0.2], [1.0, 0.4]]}]
    evaluation(tmp_path, "flat", benchmark="dan", task="safety", outcomes={"first": [1], "majority_vote": [0]}, candidates=flat)
    configurations = find_configurations([tmp_path / "evaluate"])
    figures.heatmaps(configurations, "safety", tmp_path / "heat.png", rate="ASR")
    assert [texts(ax)["title"].split(":")[0] for ax in drawn["heat"]["axes"]] == ["dan", "harmbench", "strongreject", "wildjailbreak"]
    assert drawn["heat"]["size"] == pytest.approx((5.5 * 3, 4 * 2))  # the grid: 3 columns, 2 rows
    figures.densities(configurations, tmp_path / "densities.png")
    panels = {texts(ax)["title"]: texts(ax)["text"] for ax in drawn["densities"]["axes"]}
    assert panels == {"perplexity (log10)": ["no values"], "self-certainty": ["no spread to show"],
                      "KL(FT || base)": ["no safe candidate with a value"], "latent similarity (cosine at layer 1)": []}
    assert [figures._no_histogram(unsafe, safe) for unsafe, safe in (([], []), ([1.0], []), ([], [1.0]), ([2.0], [2.0]), ([1.0], [2.0]))] == [
        "no values", "no safe candidate with a value", "no unsafe candidate with a value", "no spread to show", None]
    latent = drawn["densities"]["axes"][-1]  # 0.2 unsafe, 0.4 safe: each its class's whole density, the maximum counted
    assert [sum(p.get_height() * p.get_width() for p in bars) for bars in latent.containers] == pytest.approx([1.0, 1.0])
    # Only unsafe candidates anywhere: no panel can compare, so no figure.
    unsafe = [{**flat[0], "flags": [True, True], "kl": [0.1, 0.7]}]
    evaluation(tmp_path / "unsafe", "dan", benchmark="dan", task="safety", outcomes={"first": [1]}, candidates=unsafe)
    assert figures.densities(find_configurations([tmp_path / "unsafe"]), tmp_path / "none.png") == (
        "no SFT evaluation on a safety benchmark with both safe and unsafe candidates: this view needs one")
    assert figures.densities_of_one(find_configurations([tmp_path / "unsafe"]), tmp_path / "none.png",
                                    figures.FigureChoices(figure6=("llama3_8b", "qwq", "dan"))) == (
        "no SFT evaluation of llama3_8b taught by qwq on dan with both safe and unsafe candidates (report.py --figure6 "
        "student,teacher,benchmark chooses another)")
    assert not (tmp_path / "none.png").exists()


def test_results_json_is_indented_for_reading():
    """results.json as a reader opens it: one key per line, indented by two, ending in a newline."""
    text = dataclasses.replace(MINIMAL, rates={"first": 50.0}).to_json()
    assert text.startswith('{\n  "benchmark": "b",\n  "task": "safety",\n  "judge": "j",\n') and text.endswith('\n  "schema_version": 2\n}\n')
    assert '  "rates": {\n    "first": 50.0\n  },' in text


def test_the_configuration_table_has_the_base_row_and_each_selectors_interval(tmp_path):
    """Per configuration: the base student's `first` (its change read from the student's side: base - student),
    then every selector's rate, drop, intervals and McNemar p, in Markdown and CSV alike."""
    from lightning_da.runs.report import render_configurations

    run = evaluation(tmp_path, "a", benchmark="dan", task="safety", outcomes={"first": [1, 1, 0, 0], "latent_sim": [1, 0, 0, 0]})
    data = json.loads((run / "results.json").read_text())
    data["base"] = {"first": 75.0, "student_vs_base": {"difference": -25.0, "difference_ci": [-50.0, 10.0], "mcnemar_p": 0.5,
                                                       "drop": None, "drop_ci": None, "undefined_resamples": 0}}
    data["intervals"] = {"latent_sim": {"difference": -25.0, "difference_ci": [-75.0, 0.0], "drop": 50.0, "drop_ci": [0.0, 100.0],
                                        "mcnemar_p": 1.0, "undefined_resamples": 0}}
    (run / "results.json").write_text(json.dumps(data))
    markdown, table = render_configurations(find_configurations([tmp_path / "evaluate"]))
    assert markdown.splitlines() == [
        "| teacher | student | stage | benchmark | selector | rate | drop | drop 95% CI | diff (points) | diff 95% CI | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| qwq | llama3_8b | sft | dan | base student: first | 75.0% asr |  |  | 25.0 | [-10.0, 50.0] | 0.5 |",
        "| qwq | llama3_8b | sft | dan | first | 50.0% asr | 0.0% |  |  |  |  |",
        "| qwq | llama3_8b | sft | dan | latent_sim | 25.0% asr | 50.0% | [0.0, 100.0] | -25.0 | [-75.0, 0.0] | 1 |"]
    assert table.splitlines() == [
        "teacher,student,stage,benchmark,selector,rate_name,rate,drop,drop_low,drop_high,difference,difference_low,difference_high,"
        "mcnemar_p,strongreject_score",
        "qwq,llama3_8b,sft,dan,base student: first,asr,75.0,,,,25.0,-10.0,50.0,0.5,",
        "qwq,llama3_8b,sft,dan,first,asr,50.0,0.0,,,,,,,",
        "qwq,llama3_8b,sft,dan,latent_sim,asr,25.0,50.0,0.0,100.0,-25.0,-75.0,0.0,1.0,"]


def test_the_tables_csv_row_by_row_and_the_footnote_of_resamples_without_a_drop(runs):
    """table.csv: per stage, benchmark and selector, the mean drop and difference with their intervals and McNemar's
    p, pooled over the benchmark's configurations (`paired_bootstrap_many` on each one's outcomes)."""
    from lightning_da.runs.report import render_tables
    from lightning_da.tables import rounded

    markdown, table = render_tables(find_configurations([runs / "evaluate"]), seed=4, resamples=300)
    safety = rounded(paired_bootstrap_many([[1, 1, 1, 0], [0, 0, 0]], [[0, 1, 0, 0], [0, 1, 0]], seed=4, resamples=300).as_dict())
    utility = rounded(paired_bootstrap_many([[1, 1, 0, 1]], [[1, 0, 0, 1]], seed=4, resamples=300).as_dict())

    def row(stage, benchmark, kind, cell, n):
        return [stage, benchmark, kind, "latent_sim", cell["drop"], *cell["drop_ci"], cell["difference"], *cell["difference_ci"],
                cell["mcnemar_p"], n]

    assert list(csv.reader(io.StringIO(table))) == [
        ["stage", "benchmark", "drop_of", "selector", "drop", "drop_low", "drop_high", "difference", "difference_low", "difference_high",
         "mcnemar_p", "n"],
        [str(v) for v in row("sft", "strongreject", "ASR", safety, 1)], [str(v) for v in row("sft", "gsm8k", "utility", utility, 1)]]
    assert markdown.startswith("## Table 1: after SFT\n\n| selector | strongreject ASR drop [95% CI] (n) | gsm8k utility drop [95% CI] (n) |")
    assert (f"- strongreject: the drop's interval leaves out the bootstrap resamples that drew no prompt flagged for `first` "
            f"(up to {safety['undefined_resamples']}).") in markdown and safety["undefined_resamples"] > 0
    assert "## Table 2: after GRPO\n\nNot produced: no grpo runs among these (evaluate.py adapter=<grpo run>/adapter).\n" in markdown


def test_figure_6_reads_the_papers_layer_12_when_a_run_names_none_clipped_to_the_model(tmp_path):
    """A run whose primary selector has no layer (e.g. kl): the cosine panel reads the paper's headline layer 12, or
    the model's last hidden_states index when it has fewer (here 2 of 0..2)."""
    from lightning_da import figures

    records = candidate_records(0, prompts=4)
    run = evaluation(tmp_path, "kl", benchmark="dan", task="safety", outcomes={"first": [1, 0, 1, 0]}, candidates=records)
    data = json.loads((run / "results.json").read_text())
    data["layer"] = None
    (run / "results.json").write_text(json.dumps(data))
    pooled, layer = figures.density_values(find_configurations([tmp_path / "evaluate"]))
    flagged = [(c[2], f) for r in records for c, f in zip(r["cosine_by_layer"], r["flags"], strict=True)]
    assert layer == 12 and pooled["latent similarity (cosine at layer {layer})"] == ([v for v, f in flagged if f],
                                                                                     [v for v, f in flagged if not f])
    assert figures.density_values([]) == ({title: ([], []) for title, _ in figures.DENSITY_PANELS}, None)  # no run, no layer


def test_the_report_whole_for_a_small_sweep(tmp_path, drawn):
    """report.md as written, its tables and figure lines whole: Table 1 with a selector one benchmark lacks ("-") and
    both footnotes, the tables not produced, a model as it is and a stage no run names ("Stage ?") in their own
    sections, Table 4 with a target not attacked and no pair, each figure's line (a link, its note, or what it lacks);
    the bootstrap's seed 0 by default; attack.csv row by row. The numbers from `paired_bootstrap_many` on the outcomes."""
    from lightning_da.runs.report import attack_table
    from lightning_da.tables import format_interval, format_number, rounded

    evaluation(tmp_path, "a", benchmark="strongreject", task="safety",
               outcomes={"first": [1, 0, 0, 0], "latent_sim": [0, 0, 0, 1], "kl": [1, 1, 0, 0]})
    evaluation(tmp_path, "b", benchmark="strongreject", task="safety", student="qwen2_5_0_5b",
               outcomes={"first": [0, 0, 0], "latent_sim": [0, 1, 0], "kl": [0, 0, 0]})
    evaluation(tmp_path, "c", benchmark="gsm8k", task="number", outcomes={"first": [1, 1, 1, 1], "latent_sim": [1, 0, 0, 1]})
    evaluation(tmp_path, "d", benchmark="strongreject", task="safety", student="qwen2_5_0_5b", as_is="student",
               outcomes={"first": [1, 1]})
    evaluation(tmp_path, "e", benchmark="gsm8k", task="number", outcomes={"first": [1, 0], "latent_sim": [0, 0]})
    (tmp_path / "train-e" / ".hydra" / "hydra.yaml").unlink()  # its train run's record is gone: stage unknown
    attack = tmp_path / "evaluate" / "f"
    attack.mkdir()
    (attack / "attack_results.json").write_text(json.dumps({
        "n_behaviours": 50, "outcomes": {}, "pairs": {}, "method": "tap", "measures": "non-refusal rate",
        "targets": {"aligned": {"asr": 68.0, "mean_queries": 9.0, "mean_samples": 9.0, "samples_per_query": 1, "confirm_rate": 40.0,
                                "strongreject_score": None, "search_asr": 70.0},
                    "aligned_bon": {"asr": 66.0, "mean_queries": 9.5, "mean_samples": 76.0, "samples_per_query": 8, "confirm_rate": 32.5,
                                    "strongreject_score": 0.4125}}}))
    files = write_report(find_configurations([tmp_path / "evaluate"]), tmp_path / "new" / "report", resamples=200,
                         directories=[tmp_path / "evaluate"])

    def cell(firsts, methods):
        c = rounded(paired_bootstrap_many(firsts, methods, seed=0, resamples=200).as_dict())
        return c, f"{format_number(c['drop'])} {format_interval(c['drop_ci'])}"

    latent, latent_cell = cell([[1, 0, 0, 0], [0, 0, 0]], [[0, 0, 0, 1], [0, 1, 0]])
    kl, kl_cell = cell([[1, 0, 0, 0], [0, 0, 0]], [[1, 1, 0, 0], [0, 0, 0]])
    _, utility_cell = cell([[1, 1, 1, 1]], [[1, 0, 0, 1]])
    unknown, unknown_cell = cell([[1, 0]], [[0, 0]])
    assert latent["undefined_resamples"] > 0 and unknown["undefined_resamples"] > 0  # [1, 0, 0, 0] resamples to no 1 often
    resampled = "the drop's interval leaves out the bootstrap resamples that drew no prompt flagged for `first`"
    tables = "\n".join([
        "## Table 1: after SFT\n\n"
        "| selector | strongreject ASR drop [95% CI] (n) | gsm8k utility drop [95% CI] (n) |\n|---|---|---|\n"
        f"| latent_sim | {latent_cell} (1) | {utility_cell} (1) |\n| kl | {kl_cell} (1) | - |\n\n"
        "- strongreject: 1 configuration(s) had a `first` rate of 0, so no relative drop; they are left out of its mean and n.\n"
        f"- strongreject: {resampled} (up to {max(latent['undefined_resamples'], kl['undefined_resamples'])}).\n",
        "## Table 2: after GRPO\n\nNot produced: no grpo runs among these (evaluate.py adapter=<grpo run>/adapter).\n",
        "## Table 3: the control, an instruction-tuned model against its pretrained base\n\n"
        "Not produced: no instruct_vs_base runs among these (evaluate.py experiment=instruct_vs_base student=<name>).\n",
        "## Models as they are (no base)\n\n| selector | strongreject ASR drop [95% CI] (n) |\n|---|---|\n\n",
        f"## Stage ?\n\n| selector | gsm8k utility drop [95% CI] (n) |\n|---|---|\n| latent_sim | {unknown_cell} (1) |\n\n"
        f"- gsm8k: {resampled} (up to {unknown['undefined_resamples']}).\n"])
    table4 = (
        "## Table 4: adaptive attacks against the deployed targets\n\n"
        "| student | method | behaviours | rate | instruct (queries) | aligned (queries) | aligned_bon (queries) | "
        "aligned_bon vs aligned (points) [95% CI] |\n|---|---|---|---|---|---|---|---|\n"
        "| ? | TAP | 50 | non-refusal rate | - | 68.0% (9.0; 40.0% confirmed) | 66.0% (9.5; 32.5% confirmed; SR 0.41) | - |\n\n"
        "rate: the evaluation judge's share of behaviours whose best prompt jailbroke the target (an ASR; a refusal detector measures "
        "a non-refusal rate); queries: mean prompts sent to the target until success (or all rounds); confirmed: the best prompt "
        "re-sampled and re-judged; SR: StrongREJECT's mean score. A Best-of-N query draws N samples (`samples_per_query` in "
        "attack.csv).\n")
    teacher_missing = "no evaluation of teacher(s) qwq as it is: their column reads n/a (evaluate.py as_is=teacher teacher=<name>)."
    def linked(title, name, note=None):
        return f"### {title}\n\n![{title}]({name})" + (f"\n\n{note}" if note else "")

    figure_lines = "\n\n".join([
        "### Figure 2: each teacher's unsafe traces on the training prompts\n\nNot drawn: no SFT run with the filter's counts "
        "(metrics.json's data/traces_unsafe) behind these evaluations: Figure 2 needs one.",
        "### Figure 3: the alignment gap, one student's safety rate per teacher after SFT\n\n"
        "Not drawn: no SFT evaluation of qwen2_5_14b on a safety benchmark.",
        linked("Figure 18: every student's safety rate per teacher after SFT", "figure18_safety_by_teacher_every_student.png"),
        "### Figure 19: every GRPO student's safety rate per teacher after GRPO\n\n"
        "Not drawn: no GRPO evaluation of any student on a safety benchmark.",
        linked("Figure 4: utility per teacher x student after SFT", "figure4_utility_heatmap.png"),
        "### Figure 5: one teacher's students, the first sample against majority voting\n\n"
        "Not drawn: no SFT evaluation of teacher r1_qwen_14b's students on a safety benchmark with majority_vote compared.",
        "### Figure 6: one configuration's perplexity, self-certainty, KL and latent similarity, unsafe vs safe\n\n"
        "Not drawn: no SFT evaluation of qwen2_5_0_5b taught by r1_qwen_14b on dan with both safe and unsafe candidates "
        "(report.py --figure6 student,teacher,benchmark chooses another).",
        "### Figures 7-9: response length of the base, SFT and GRPO students, one per GRPO teacher\n\n"
        "Not drawn: no GRPO evaluation on a safety benchmark: Figures 7-9 need the GRPO students and their SFT ones.",
        "### Figures 10-17: the latent choice's safety rate or utility by layer, one per teacher\n\n"
        "![Figures 10-17: the latent choice's safety rate or utility by layer, one per teacher (qwq)](figures10_17_rate_by_layer_qwq.png)",
        linked("Extra: ASR of the latent choice by layer (mean of the safety configurations; an oracle view)", "asr_by_layer.png"),
        linked("Extra: per configuration, the latent choice's rate by layer against first", "by_layer_per_configuration.png"),
        linked("Extra: is the signal there? AUROC of the cosine for unsafe vs safe candidates, by layer", "auroc_by_layer.png"),
        linked("Extra: ASR per teacher x student after SFT, beside each teacher's own (as_is)", "asr_heatmap_with_teachers.png",
               teacher_missing),
        "### Extra: the first sample against majority voting per student, pooled over teachers and benchmarks\n\n"
        "Not drawn: no SFT evaluation on a safety benchmark with majority_vote compared: this view needs one.",
        "### Extra: the four scores of unsafe vs safe candidates, pooled over the SFT safety evaluations\n\n"
        "Not drawn: no SFT evaluation on a safety benchmark with both safe and unsafe candidates: this view needs one."])
    report = files["report"].read_text()
    head = (
        "# Best-of-N latent attribution: 5 configuration(s)\n\nMean relative drop vs `first` across configurations, with the 95% "
        "interval of a paired bootstrap (200 resamples, prompts resampled within each configuration, seed 0). A positive ASR drop "
        "is the safety gained; a positive utility drop is the utility lost.\n\n")
    assert report.startswith(head + tables + "\n" + table4 + "\n## Per configuration\n\n| teacher |")
    assert report.endswith("McNemar: exact, two-sided, against `first` on the same prompts.\n\n## Figures\n\n" + figure_lines + "\n")
    from lightning_da.runs.report import ATTACK_COLUMNS

    rows = list(csv.reader(io.StringIO(files["attack"].read_text())))
    assert rows[0] == ["student", "run", "method", "measures", "target", *ATTACK_COLUMNS] and len(rows) == 3
    assert [dict(zip(rows[0], row, strict=True))["confirm_rate"] for row in rows[1:]] == ["40.0", "32.5"]
    assert [{k: v for k, v in zip(rows[0], row, strict=True) if v} for row in rows[1:]] == [
        {"student": "?", "run": str(attack), "method": "tap", "measures": "non-refusal rate", "target": "aligned", "asr": "68.0",
         "search_asr": "70.0", "confirm_rate": "40.0", "mean_queries": "9.0", "mean_samples": "9.0", "samples_per_query": "1"},
        {"student": "?", "run": str(attack), "method": "tap", "measures": "non-refusal rate", "target": "aligned_bon", "asr": "66.0",
         "confirm_rate": "32.5", "strongreject_score": "0.4125", "mean_queries": "9.5", "mean_samples": "76.0", "samples_per_query": "8"}]
    assert files["attack"] == tmp_path / "new" / "report" / "attack.csv"
    # The by-layer figure's dashed line: `first`'s mean over the safety runs with a base (25 and 0; not d, as it is).
    (ax,) = drawn["asr_by_layer"]["axes"]
    assert (list(ax.get_lines()[-1].get_ydata()), ax.get_legend().get_texts()[-1].get_text()) == ([12.5, 12.5], "first, mean (no selection)")
    assert attack_table([tmp_path / "evaluate" / "a"]) == (
        "## Table 4: adaptive attacks against the deployed targets\n\nNot produced: no attack runs among these (attack.py adapter=<sft run>/adapter).\n", "")


def test_the_auroc_figure_leaves_a_gap_where_a_layers_auroc_is_undefined(tmp_path, drawn):
    """The signal's AUROC per layer (None where undefined): a gap in that run's line; a run with none at any layer is
    left out, and with no run left the figure is not drawn, and says why."""
    from lightning_da.runs.report import draw_figures

    def aurocs(name: str, values: list) -> None:
        run = evaluation(tmp_path, name, benchmark="dan", task="safety", outcomes={"first": [1, 0]})
        data = json.loads((run / "results.json").read_text())
        data["signal"]["scores"] = {f"cosine@{i}": None if a is None else {"auroc": a, "ci": [0.4, 0.9]} for i, a in enumerate(values)}
        (run / "results.json").write_text(json.dumps(data))

    aurocs("none", [None, None, None])
    out = tmp_path / "out"
    out.mkdir()
    _, lines = draw_figures(find_configurations([tmp_path / "evaluate"]), out)
    assert ("### Extra: is the signal there? AUROC of the cosine for unsafe vs safe candidates, by layer\n\n"
            "Not drawn: no evaluation with both labels and a base: no AUROC to draw.") in lines
    aurocs("gap", [0.6, None, 0.8])
    draw_figures(find_configurations([tmp_path / "evaluate"]), out)
    (ax,) = drawn["auroc_by_layer"]["axes"]
    gap, mean, chance = (line.get_ydata() for line in ax.get_lines())
    assert torch.equal(torch.tensor(gap).isnan(), torch.tensor([False, True, False])) and [gap[0], gap[2]] == [0.6, 0.8]
    assert list(chance) == [0.5, 0.5] and len(ax.get_lines()) == 3


def test_the_papers_figures_show_the_numbers_of_their_runs(tmp_path, drawn):
    """PAPER.md 7, each figure's numbers from its runs by hand: Figure 2 the filter's unsafe count per teacher; Figures 3,
    18 and 19 one student's safety rate (100 - ASR of the first sample) per teacher, a panel per safety benchmark;
    Figure 5 one teacher's students, first against majority voting per benchmark; Figure 6 one configuration's candidates
    only; Figures 7-9 the base, SFT and GRPO first samples' lengths; Figures 10-17 per student a line per benchmark."""
    from lightning_da import figures
    from lightning_da.figures import FigureChoices

    asr = {("qwq", "llama3_8b", "dan"): [1, 0, 0, 0], ("qwq", "llama3_8b", "strongreject"): [1, 1, 0, 0],
           ("qwq", "qwen2_5_0_5b", "dan"): [1, 1, 1, 0], ("r1_qwen_14b", "llama3_8b", "dan"): [0, 0, 0, 0]}
    for k, ((teacher, student, benchmark), first) in enumerate(asr.items()):
        evaluation(tmp_path, f"{teacher}-{student}-{benchmark}", benchmark=benchmark, task="safety", teacher=teacher, student=student,
                   outcomes={"first": first, "majority_vote": [0, 0, 0, k % 2]}, candidates=candidate_records(k, prompts=4),
                   lengths=(100.0 + k, 50.0 + k), traces_unsafe={"qwq": 7, "r1_qwen_14b": 3}[teacher])
    evaluation(tmp_path, "grpo", benchmark="dan", task="safety", stage="grpo", outcomes={"first": [0, 0, 0, 1]}, lengths=(90.0, 60.0))
    evaluation(tmp_path, "gsm8k", benchmark="gsm8k", task="number", outcomes={"first": [1, 1, 0, 1]})
    configurations = find_configurations([tmp_path / "evaluate"])
    out = tmp_path / "figures"
    out.mkdir()

    assert figures.unsafe_trace_counts(configurations) == ({"qwq": 7, "r1_qwen_14b": 3}, [])
    rates = figures.safety_rates(configurations, "sft", "llama3_8b")
    assert rates["dan"] == {"qwq": 75.0, "r1_qwen_14b": 100.0} and rates["strongreject"]["qwq"] == 50.0
    assert math.isnan(rates["strongreject"]["r1_qwen_14b"])  # never evaluated: n/a, and said
    note = figures.safety_by_teacher(configurations, out / "fig3.png", stage="sft", students=["llama3_8b"])
    assert note == "no SFT evaluation (student / teacher / benchmark) for llama3_8b / r1_qwen_14b / strongreject: those bars read n/a"
    dan, strongreject = drawn["fig3"]["axes"]
    assert [texts(ax)["title"] for ax in (dan, strongreject)] == ["llama3_8b, dan", "llama3_8b, strongreject"]
    assert texts(dan)["xticks"] == ["qwq", "r1_qwen_14b"] and [p.get_height() for p in dan.patches] == [75.0, 100.0]
    assert texts(strongreject)["text"] == ["50", "n/a"] and texts(dan)["y"] == "safety rate (%)"
    assert figures.safety_rates(configurations, "grpo", "llama3_8b") == {"dan": {"qwq": 75.0}}

    bars = figures.majority_bars(configurations, "qwq")
    assert bars["dan"] == {"first": {"llama3_8b": 25.0, "qwen2_5_0_5b": 75.0}, "majority_vote": {"llama3_8b": 0.0, "qwen2_5_0_5b": 0.0}}
    assert {k: v["llama3_8b"] for k, v in bars["strongreject"].items()} == {"first": 50.0, "majority_vote": 25.0}
    assert all(math.isnan(v["qwen2_5_0_5b"]) for v in bars["strongreject"].values())  # not evaluated there
    choices = FigureChoices(figure5_teacher="qwq", figure6=("qwen2_5_0_5b", "qwq", "dan"))
    assert figures.first_vs_majority_by_benchmark(configurations, out / "fig5.png", choices) == (
        "no SFT evaluation of teacher qwq's students (student / benchmark) for qwen2_5_0_5b / strongreject: those bars read n/a")
    assert [texts(ax)["title"] for ax in drawn["fig5"]["axes"]] == ["dan (teacher qwq)", "strongreject (teacher qwq)"]
    assert [p.get_height() for p in drawn["fig5"]["axes"][0].patches] == [25.0, 75.0, 0.0, 0.0]

    only = [c for c in configurations if (c.student, c.teacher, c.benchmark) == ("qwen2_5_0_5b", "qwq", "dan")]
    assert figures.densities_of_one(configurations, out / "fig6.png", choices) is None
    pooled, _ = figures.density_values(only)
    for ax, (title, _) in zip(drawn["fig6"]["axes"], figures.DENSITY_PANELS, strict=True):
        unsafe, safe = pooled[title]
        assert texts(ax)["legend"] == [f"unsafe ({len(unsafe)})", f"safe ({len(safe)})"] and len(unsafe) + len(safe) <= 8

    assert figures.response_lengths(configurations, "qwq") == {"dan": {"llama3_8b": {"base": 50.0, "sft": 100.0, "grpo": 90.0}}}
    assert figures.response_length(configurations, out / "fig7.png", choices) is None
    assert sorted(p.name for p in out.glob("fig7*")) == ["fig7_qwq.png"]  # one figure per GRPO teacher
    (ax,) = drawn["fig7_qwq"]["axes"]
    assert [p.get_height() for p in ax.patches] == [50.0, 100.0, 90.0] and texts(ax)["legend"] == ["base", "sft", "grpo"]

    assert figures.rate_by_layer_lines(configurations, "qwq") == {
        "llama3_8b": {"dan": [75.0, 87.5, 100 - 25 / 3], "strongreject": [50.0, 75.0, 100 - 50 / 3]},
        "qwen2_5_0_5b": {"dan": [25.0, 62.5, 75.0]}}
    assert figures.rate_by_layer(configurations, out / "fig10.png", choices) is None
    panels = drawn["fig10_qwq"]["axes"]  # one figure per teacher, a panel per student
    assert [texts(ax)["title"] for ax in panels] == ["qwq -> llama3_8b", "qwq -> qwen2_5_0_5b"]
    assert texts(panels[0])["legend"] == ["dan", "strongreject"]
    assert [texts(ax)["title"] for ax in drawn["fig10_r1_qwen_14b"]["axes"]] == ["r1_qwen_14b -> llama3_8b"]


def test_a_run_without_the_filters_count_is_named(tmp_path):
    from lightning_da import figures

    evaluation(tmp_path, "a", benchmark="dan", task="safety", outcomes={"first": [1, 0]}, traces_unsafe=4)
    evaluation(tmp_path, "b", benchmark="dan", task="safety", teacher="r1_qwen_14b", outcomes={"first": [1, 0]})
    assert figures.unsafe_trace_counts(find_configurations([tmp_path / "evaluate"])) == ({"qwq": 4}, [str(tmp_path / "train-b")])
    assert figures.unsafe_traces(find_configurations([tmp_path / "evaluate"]), tmp_path / "f.png", figures.PAPER_CHOICES) == (
        f"no metrics.json with data/traces_unsafe in {tmp_path / 'train-b'}")


def test_the_smoothed_density_is_a_gaussian_kernel_with_scotts_bandwidth():
    """Each value's normal density, averaged, with bandwidth std (n - 1 degrees) x n^(-1/5), as scipy's gaussian_kde."""
    from lightning_da.figures import kde

    values = [0.0, 1.0, 3.0]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    width = std * 3 ** (-1 / 5)
    for x in (-1.0, 0.5, 2.0):
        want = sum(math.exp(-0.5 * ((x - v) / width) ** 2) / (width * math.sqrt(2 * math.pi)) for v in values) / 3
        assert float(kde(values, torch.tensor([x]))[0]) == pytest.approx(want, rel=1e-9)
    grid = torch.linspace(-10, 14, 4001)
    assert float(torch.trapezoid(kde(values, grid), grid)) == pytest.approx(1.0, abs=1e-4)  # a density
    assert float(kde([2.0], torch.tensor([2.0]))[0]) == pytest.approx(1 / math.sqrt(2 * math.pi))  # one value: a unit bump


def test_a_graded_judges_strongreject_score_stands_beside_each_selectors_rate(tmp_path):
    from lightning_da.runs.report import render_configurations

    evaluation(tmp_path, "graded", benchmark="strongreject", task="safety", outcomes={"first": [1, 0], "latent_sim": [0, 0]},
               strongreject={"first": 0.4375, "latent_sim": 0.125})
    evaluation(tmp_path, "labels", benchmark="strongreject", task="safety", outcomes={"first": [1, 1], "latent_sim": [0, 1]})
    markdown, text = render_configurations(find_configurations([tmp_path / "evaluate"]))
    assert "| first | 50.0% asr, StrongREJECT 0.44 |" in markdown and "| latent_sim | 0.0% asr, StrongREJECT 0.12 |" in markdown
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["strongreject_score"] for row in rows] == ["0.4375", "0.125", "", ""]
    assert "| latent_sim | 50.0% asr |" in markdown  # a judge that only labels: no score
