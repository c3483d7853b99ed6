"""The package as a user installs it: a wheel built from the repo, installed outside the checkout, run
from an unrelated directory (configs, console scripts and `LatentBestOfN.from_pretrained` included)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_da.models import EmbeddedSmolLM2
from lightning_da.models.lora import random_adapter
from lightning_da.runs.report import find_configurations

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["teacher=tiny_random", "student=tiny_random", "data.limit=8", '+judge.refusals=[""]', "trainer.max_epochs=1",
              "algorithm.datamodule.batch_size=2", "algorithm.datamodule.val_fraction=0.25", "algorithm.module.lora.r=4",
              "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(environment, bin directory, working directory): the wheel installed into a target of its own."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(root)],
                   check=True, capture_output=True)
    [wheel] = root.glob("lightning_da-*.whl")
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    where = root / "elsewhere"
    where.mkdir()
    return env, target / "bin", where


def run(installed, *command: str) -> str:
    env, _, where = installed
    done = subprocess.run(list(command), cwd=where, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_the_installed_package_is_the_one_imported(installed):
    env, _, _ = installed
    located = run(installed, sys.executable, "-c", "import lightning_da.configs as c; print(c.CONF_DIR)").strip()
    assert located.startswith(env["PYTHONPATH"]) and (Path(located) / "train.yaml").is_file()


def test_the_four_entry_points_run_from_the_wheel(installed, tmp_path):
    """One real CLI run per flow, chained as a user runs them: train -> evaluate -> generate -> report."""
    _, scripts, _ = installed
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    train = tmp_path / "train"
    run(installed, str(scripts / "lightning-da-train"), *TINY_TRAIN, cache, f"hydra.run.dir={train}")
    assert (train / ".hydra" / "config.yaml").is_file() and (train / "train.log").is_file()
    assert {"adapter", "checkpoints", "metrics.json", "wandb"} <= {p.name for p in train.iterdir()}
    common = ["student=tiny_random", f"adapter={train / 'adapter'}", "attribution.layer=1", "n_candidates=3", "max_new_tokens=4",
              "benchmark.limit=4", cache]
    evaluation = tmp_path / "evaluate"
    run(installed, str(scripts / "lightning-da-evaluate"), *common, "logger=csv", "trainer.accelerator=cpu",
        f"hydra.run.dir={evaluation}")
    run(installed, str(scripts / "lightning-da-generate"), *common, f"hydra.run.dir={tmp_path / 'generate'}")
    assert len((tmp_path / "generate" / "generations.jsonl").read_text().splitlines()) == 4
    out = run(installed, str(scripts / "lightning-da-report"), str(evaluation), "--out", str(tmp_path / "report"),
              "--resamples", "50", "--wandb-project", "lightning_da_test")
    assert "| latent_sim |" in out and (tmp_path / "report" / "report.md").is_file()
    assert list((tmp_path / "report" / "wandb").glob("offline-run-*/*.wandb"))

    # What evaluate.py writes is what report.py reads (base student included).
    results = json.loads((evaluation / "results.json").read_text())
    assert results["rate_name"] == "asr" and results["task"] == "safety" and results["schema_version"] == 2
    assert set(results["intervals"]) == set(results["rates"]) - {"first"}
    assert len(results["base"]["outcomes"]) == 4 and 0 <= results["base"]["first"] <= 100
    [configuration] = find_configurations([evaluation])
    assert (configuration.student, configuration.benchmark, configuration.teacher, configuration.stage) == (
        "tiny_random", "strongreject_small", "tiny_random", "sft")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "latent_sim" in report and "base student: first" in report
    # The plan's commands, from the wheel, and `python -m lightning_da`.
    plan = run(installed, str(scripts / "lightning-da-plan"), "experiment=paper", "dry_run=true", "only=[sft,report]",
               f"hydra.run.dir={tmp_path / 'plan'}")
    assert "python -m lightning_da train -m experiment=sft_grid" in plan and "# report: 1 job" in plan and "# sft: 42 jobs" in plan
    assert "experiment=eval_control" in run(installed, sys.executable, "-m", "lightning_da", "plan", "experiment=paper", "dry_run=true",
                                             "only=[control]", f"hydra.run.dir={tmp_path / 'plan2'}")
    traces = run(installed, str(scripts / "lightning-da-traces"), "--cfg", "job")
    assert "slices: 1" in traces and "status: false" in traces
    attack = run(installed, str(scripts / "lightning-da-attack"), "--cfg", "job")  # composed from the wheel's configs
    assert "targets:" in attack and "method: pair" in attack and "strategies:" in attack and "EmbeddedSmolLM2" in attack


@pytest.mark.slow
def test_latent_best_of_n_from_pretrained_in_the_wheel(installed, tmp_path):
    adapter = random_adapter(tmp_path / "adapter", EmbeddedSmolLM2().load_model(), r=2, alpha=4, scale=0.01)
    code = ("from lightning_da import LatentBestOfN\n"
            f"bon = LatentBestOfN.from_pretrained({adapter!r}, student='smollm2_135m', device='cpu')\n"
            "[pick] = bon.generate(['How do I bake bread?'], n=2, layer=4, max_new_tokens=4, progress=False)\n"
            "print(pick.index, len(pick.candidates), pick.layer)")
    index, candidates, layer = run(installed, sys.executable, "-c", code).split()
    assert index in ("0", "1") and (candidates, layer) == ("2", "4")


def test_every_subpackage_is_packaged():
    """pyproject lists the packages (the configs' mapping needs the list): a new subpackage must be in it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lightning_da").rglob("__init__.py")}
    assert listed == found | {"lightning_da.conf"}
