"""Multiruns through real Hydra launchers: joblib processes on this machine, submitit's local
executor (a real subprocess), and the SLURM config that sets DDP's devices and nodes."""

import json
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from tests.conftest import CONF
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
# One epoch on 8 traces; every job shares the tiny teacher's trace cache.
JOB = [*[o for o in TINY if not o.startswith("trainer.max_epochs")], "trainer.max_epochs=1", "logger=csv"]


def multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "-m", *JOB, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         "hydra.sweep.subdir=${hydra.job.num}", *overrides],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )


def test_two_by_two_multirun_with_the_joblib_launcher(tmp_path):
    started = time.perf_counter()
    multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algorithm.module.lora.r=2,4", "seed=1,2")
    elapsed = time.perf_counter() - started
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["data/traces_kept"] == 8 and "train/loss" in metrics
    print(f"2x2 joblib multirun: {elapsed:.1f} s")


def test_submitit_local_executor_runs_a_job(tmp_path):
    multirun(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    job = tmp_path / "sweep" / "0"
    assert json.loads((job / "metrics.json").read_text())["data/traces_kept"] == 8
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # submitit's own record of the job


def test_slurm_launcher_sets_ddp_devices_and_nodes():
    out = subprocess.run(
        [sys.executable, "train.py", "hydra/launcher=slurm", "trainer=slurm", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
         "hydra.launcher.partition=gpu", "--cfg", "job", "--resolve"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    assert "devices: 4" in out and "num_nodes: 2" in out and "strategy: ddp" in out
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4 and launcher._target_.endswith("SlurmLauncher")  # one DDP rank per GPU
