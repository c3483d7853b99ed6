import json
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
# Under pytest-xdist each worker (and the processes it starts) gets its share of the cores, so workers do
# not oversubscribe them. A run's numbers compare only with the same run's, so the share changes no assertion.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from lightning_da.configs import CONF_DIR  # noqa: E402
from lightning_da.models import TinyRandomLlama  # noqa: E402

CONF = CONF_DIR


@pytest.fixture(scope="session")
def tiny_source():
    return TinyRandomLlama()


@pytest.fixture(scope="session")
def tokenizer(tiny_source):
    return tiny_source.load_tokenizer()


@pytest.fixture
def compose_train(tmp_path):
    """Compose conf/train.yaml with overrides, outputs and caches under tmp_path."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    return _compose


@pytest.fixture(autouse=True)
def no_wandb_run_left_open():
    """A test that stops a run midway (a simulated crash) leaves its W&B run open in this process, and the
    next WandbLogger here would log into it instead of its own directory: finish it after every test."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


STAND_IN = Path(__file__).parent / "stand_ins"


@pytest.fixture
def engine_log(monkeypatch, tmp_path):
    """The stand-in importable as `vllm`; returns a reader of what it was asked."""
    monkeypatch.syspath_prepend(str(STAND_IN))
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("VLLM_STAND_IN_LOG", str(log))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # what an engine's placement sets goes again afterwards (Lightning reads them)
        monkeypatch.delenv(key)
    yield lambda: [json.loads(line) for line in log.read_text().splitlines()]
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def stand_in_cli(script: str, run: Path, *overrides: str) -> list[dict]:
    """`script` (train.py, evaluate.py) through the real CLI with the vLLM stand-in importable as `vllm`, its
    processes and their ranks too; returns what the engines were asked."""
    import subprocess

    log = run.parent / f"{run.name}.vllm.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STAND_IN), os.environ.get("PYTHONPATH", "")]),
           "VLLM_STAND_IN_LOG": str(log)}
    done = subprocess.run([sys.executable, script, *overrides, f"hydra.run.dir={run}", f"paths.cache_dir={run.parent / 'cache'}"],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


REFERENCE_POLICIES = {key: f"## {key}\n\nA policy written by the tests for {key}." for key in
                      ("harassment", "sexual", "violence", "self_harm", "illicit", "misinformation", "privacy",
                       "intellectual_property", "benign")}
REFERENCE_TEMPLATE = ("\n<|im_start|>system\nA system line of the tests.<|im_end|>\n<|im_start|>user\nRequest: {prompt}\n\n"
                      "{spec}\n\nCategories: {category}.<|im_end|>\n<|im_start|>assistant\n<think>\n")


@pytest.fixture
def reference_checkout(tmp_path) -> Path:
    """A directory in the shape of the authors' repository (PAPER.md 9): a trace-generation script that assigns
    `SAFETY_POLICIES` and `COT_PROMPT_TEMPLATE` among other code, with texts the tests wrote."""
    root = tmp_path / "reference"
    root.mkdir()
    (root / "create_safety_reasoning_deepseek.py").write_text(
        "import argparse\nparser = argparse.ArgumentParser()\n"
        f"SAFETY_POLICIES = {REFERENCE_POLICIES!r}\n\n# COT Prompt Template\nCOT_PROMPT_TEMPLATE = {REFERENCE_TEMPLATE!r}\n\n"
        "def get_policies_for_categories(categories):\n    return ''\n")
    return root
