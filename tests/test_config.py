"""Every config composes, instantiates (without loading weights) and says what it should."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_da.configs import CONF_DIR as CONF  # noqa: E402
from lightning_da.generation import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = sorted(p.stem for p in (CONF / "teacher").glob("*.yaml"))
STUDENTS = sorted(p.stem for p in (CONF / "student").glob("*.yaml"))


def test_every_paper_model_has_a_config():
    assert {"r1_qwen_1_5b", "r1_qwen_7b", "r1_qwen_14b", "r1_qwen_32b", "r1_llama_8b", "r1_llama_70b", "qwq"} <= set(TEACHERS)
    assert {"qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b", "qwen2_5_14b", "llama3_2_1b", "gemma3_1b", "llama3_8b"} <= set(STUDENTS)


@pytest.mark.parametrize("teacher", TEACHERS)
def test_teacher_composes(compose_train, teacher):
    cfg = compose_train(f"teacher={teacher}")
    source = instantiate(cfg.teacher.model)
    sampling = instantiate(cfg.teacher.sampling)
    assert isinstance(sampling, SamplingConfig)
    assert cfg.teacher.batch_size > 0
    assert getattr(source, "trust_remote_code", False) is False
    assert source.config_key == "teacher.model"
    if teacher == "qwq":
        assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.6, 0.95, 30)
    elif teacher.startswith("r1_"):
        assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.7, 1.0, None)
        assert sampling.max_new_tokens == 2048


@pytest.mark.parametrize("student", STUDENTS)
def test_student_composes(compose_train, student):
    cfg = compose_train(f"student={student}")
    source = instantiate(cfg.student.model)
    assert source.config_key == "student.model"
    assert getattr(source, "trust_remote_code", False) is False
    module = instantiate(cfg.algorithm.module, student=source)  # no weights loaded until configure_model
    assert module.model is None and module.lora["r"] == 32


def test_paper_pipeline_prints_its_config():
    out = subprocess.run(
        [sys.executable, "train.py", "teacher=qwq", "student=llama3_8b", "--cfg", "job"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert "name: Qwen/QwQ-32B" in out
    assert "name: meta-llama/Meta-Llama-3-8B-Instruct" in out
    assert "lr: 1.41e-05" in out


def test_paper_settings_are_the_defaults(compose_train):
    cfg = compose_train()
    lora = cfg.algorithm.module.lora
    assert (lora.r, lora.alpha, lora.dropout, list(lora.modules_to_save)) == (32, 64, 0.05, ["lm_head"])
    assert cfg.algorithm.module.optimizer.lr == pytest.approx(1.41e-5)
    assert cfg.trainer.max_epochs == 3
    assert cfg.algorithm.global_batch_size == 16 and cfg.trainer.accumulate_grad_batches is None  # derived: test_global_batch.py
    # TRL's SFTConfig defaults, as the reference runs them: linear decay, no warmup, nothing held out
    assert cfg.algorithm.module.scheduler._target_ == "transformers.get_linear_schedule_with_warmup"
    assert cfg.algorithm.module.warmup_ratio == 0.0 and cfg.algorithm.datamodule.val_fraction == 0.0
    assert cfg.callbacks.model_checkpoint.monitor is None


def test_unknown_config_name_fails_clearly(compose_train):
    with pytest.raises(MissingConfigException, match="teacher"):
        compose_train("teacher=gpt5")
    result = subprocess.run(
        [sys.executable, "train.py", "student=nope", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0  # one line, before Hydra composes
    assert "unknown student=nope; choose from" in result.stderr and "qwen2_5_0_5b" in result.stderr


def test_sft_grid_experiment_is_the_papers_grid(compose_train):
    cfg = compose_train("experiment=sft_grid")
    assert cfg.data.name == "UCSC-VLAA/STAR-41K" and cfg.judge.model.name == "meta-llama/Llama-Guard-3-8B"
    assert cfg.trainer.precision == "bf16-mixed"
    grid = OmegaConf.load(CONF / "experiment" / "sft_grid.yaml").hydra.sweeper.params
    teachers, students = grid.teacher.split(","), grid.student.split(",")
    assert len(teachers) * len(students) == 42 and set(teachers) <= set(TEACHERS) and set(students) <= set(STUDENTS)


@pytest.mark.parametrize("judge", sorted(p.stem for p in (CONF / "judge").glob("*.yaml")))
def test_judge_configs_instantiate_without_loading(compose_train, judge):
    instance = instantiate(compose_train(f"judge={judge}").judge)
    assert instance.identity()["judge"] in {"refusal_prefix", "llama_guard3", "wildguard", "strongreject_rubric"}
    if judge != "refusal_prefix":
        assert instance.model.config_key == "judge.model" and instance.model.trust_remote_code is False
        assert instance._loaded is None


def test_trainer_keys_users_reach_for_need_no_plus(compose_train):
    cfg = compose_train("trainer.max_steps=10", "trainer.max_time=00:00:10:00", "trainer.val_check_interval=0.5",
                        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.accelerator=cpu")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert (trainer.max_steps, trainer.val_check_interval, trainer.limit_train_batches, trainer.limit_val_batches) == (10, 0.5, 3, 1)
    assert trainer.fit_loop.max_steps == 10
    defaults = instantiate(compose_train("trainer.accelerator=cpu").trainer, logger=False, enable_checkpointing=False)
    assert (defaults.max_steps, defaults.limit_train_batches, defaults.max_epochs) == (-1, 1.0, 3)  # Lightning's own defaults


def test_grpo_grid_experiment_is_the_papers_grid_and_starts_from_the_sft_grid(compose_train):
    cfg = compose_train("experiment=grpo_grid")
    assert cfg.algorithm.name == "grpo" and cfg.data.prompts.name == "UCSC-VLAA/STAR-41K"
    assert cfg.judge.model.name == "meta-llama/Llama-Guard-3-8B" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.prompts == compose_train("experiment=sft_grid").data  # the SFT run's prompts: its trace cache serves both
    grid = OmegaConf.load(CONF / "experiment" / "grpo_grid.yaml").hydra.sweeper.params
    teachers, students = grid.teacher.split(","), grid.student.split(",")
    assert len(teachers) * len(students) == 12 and set(teachers) <= set(TEACHERS) and set(students) <= set(STUDENTS)
    out = subprocess.run([sys.executable, "train.py", "experiment=grpo_grid", "teacher=r1_llama_8b", "student=gemma3_1b", "--cfg", "job",
                          "--resolve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "    init_adapter: outputs/sft_grid/r1_llama_8b__gemma3_1b/adapter" in out
    sft = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / "sft_grid.yaml").hydra.sweep)
    assert (sft["dir"], sft["subdir"]) == ("outputs/sft_grid", "${hydra:runtime.choices.teacher}__${hydra:runtime.choices.student}")


@pytest.mark.parametrize(("argv", "message"), [
    (["attacker=nope"], "unknown attacker=nope; choose from qwen2_5_7b, smollm2_135m, student, teacher, tiny_random"),
    (["-m", "student=tiny_random,nope"], "unknown student=nope; choose from"),
    (["data@data.harmful=nope"], "unknown data=nope; choose from rl_mixture, star_41k, strongreject, teacher_filtered"),
    (["+benchmark=xyz"], "unknown benchmark=xyz; choose from advbench"),
])
def test_an_unknown_config_name_is_one_line_naming_the_choices(argv, message, capsys):
    from lightning_da.cli import check_choices

    with pytest.raises(SystemExit) as exited:
        check_choices(argv)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and err.count("\n") == 0 and message in err


def test_known_names_values_and_hydra_groups_pass_the_choice_check():
    from lightning_da.cli import check_choices

    check_choices(["student=tiny_random", "teacher=qwq,r1_qwen_14b", "benchmark.limit=3", "hydra/launcher=joblib", "seed=1",
                   "+judge.refusals=[e]", "~logger", "experiment=paper", "trainer=null"])

