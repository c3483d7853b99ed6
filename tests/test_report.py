"""report.py: evaluate.py runs -> the paper's table, per-configuration table, figure, W&B artifacts."""

import csv
import io
import logging
from pathlib import Path

import pytest
import yaml

from lightning_da.errors import UserError
from lightning_da.runs.report import find_configurations, main, paper_table, write_report
from lightning_da.stats import paired_bootstrap_many
from lightning_da.tasks import EvaluationResults

ROOT = Path(__file__).resolve().parents[1]


def choices(run: Path, **chosen) -> None:
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": chosen}}}))


def evaluation(root: Path, name: str, *, benchmark: str, task: str, outcomes: dict, teacher="qwq", student="llama3_8b",
               stage="sft") -> Path:
    """An evaluate.py run directory as evaluate.py writes it, and the train run its adapter came from."""
    train = root / f"train-{name}"
    choices(train, teacher=teacher, student=student, algorithm=stage)
    run = root / "evaluate" / name
    choices(run, student=student, benchmark=benchmark)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"adapter": str(train / "adapter")}))
    rates = {s: 100 * sum(o for o in v if o is not None) / sum(o is not None for o in v) for s, v in outcomes.items()}
    first = rates["first"]
    drops = {s: (first - r) / first * 100 if first else None for s, r in rates.items()}
    results = EvaluationResults(benchmark=benchmark, task=task, judge="refusal_prefix", n_prompts=len(outcomes["first"]),
                                n_candidates=2, layer=1, rates=rates, drops=drops, intervals={}, outcomes=outcomes, chosen_layers={},
                                by_layer=[first, first / 2, first / 3] if task == "safety" else [])
    (run / "results.json").write_text(results.to_json())
    return run


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


def test_report_files_have_no_nan_and_footnote_the_undefined_drop(runs):
    files = write_report(find_configurations([runs / "evaluate"]), runs / "report", resamples=200)
    markdown = files["report"].read_text()
    assert "nan" not in markdown.lower() and "strongreject: 1 configuration(s) had a `first` rate of 0" in markdown
    table = read_csv(files["table"])
    assert [row["selector"] for row in table] == ["latent_sim"]
    assert float(table[0]["strongreject_drop"]) == pytest.approx(66.6667) and table[0]["strongreject_n"] == "1"
    assert len(read_csv(files["configurations"])) == 6  # 3 configurations x 2 selectors
    assert files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_writes_the_report_and_a_wandb_artifact(runs, capsys):
    """report.py's main in this process (test_wheel runs the installed CLI)."""
    main([str(runs / "evaluate"), "--out", str(runs / "out"), "--resamples", "200", "--wandb-project", "lightning_da_test"])
    assert "| latent_sim |" in capsys.readouterr().out
    assert {p.name for p in (runs / "out").iterdir()} >= {"report.md", "table.csv", "configurations.csv", "asr_by_layer.png"}
    assert list((runs / "out" / "wandb").glob("offline-run-*/*.wandb"))


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root.mkdir(), "no results.json under"),
    (lambda root: (root / "x").mkdir(parents=True) or (root / "x" / "results.json").write_text("{"), "is not valid JSON"),
    (lambda root: (root / "x").mkdir(parents=True) or (root / "x" / "results.json").write_text("{}"), "of schema version 1,"),
    (lambda root: (root / "x").mkdir(parents=True) or (root / "x" / "results.json").write_text('{"schema_version": 3}'),
     "of schema version 3, this lightning_da reads version 2"),
    (lambda root: (root / "x").mkdir(parents=True) or (root / "x" / "results.json").write_text('{"schema_version": 2, "task": "safety"}'),
     "lacks ['benchmark',"),
])
def test_bad_directories_are_one_line_and_exit_2(tmp_path, caplog, make, message):
    """report.py's own main, in this process (its real CLI runs above and in test_wheel)."""
    make(tmp_path / "runs")
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "runs")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert exited.value.code == 2 and len(errors) == 1 and message in errors[0], errors
    with pytest.raises(UserError):
        find_configurations([tmp_path / "runs"])
