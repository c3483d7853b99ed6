"""`plan.py experiment=paper` against the authors' recipe: every stage composed as the plan runs it, each setting
checked against its value in PAPER.md section 9 (the paper's, or the reference scripts' where the paper is silent).
The expected values are written here from that table, never read from our configs."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightning_da.configs import CONF_DIR
from lightning_da.global_batch import grpo_prompts_per_step, sft_accumulation
from lightning_da.runs.plan import stage_commands

TEACHERS = ["r1_qwen_1_5b", "r1_qwen_7b", "r1_qwen_14b", "r1_qwen_32b", "r1_llama_8b", "r1_llama_70b", "qwq"]
STUDENTS = ["qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b", "qwen2_5_14b", "llama3_2_1b", "gemma3_1b"]


def stages() -> dict:
    """Each stage of experiment=paper run by train.py or evaluate.py, composed with its own arguments (and the sweep's
    first value of each swept choice, so that interpolations resolve), with its sweep's parameters."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plan = compose(config_name="plan", overrides=["experiment=paper", "reference=/checkouts/rda"])
        composed = {}
        for name, stage in plan.stages.items():
            if stage.command not in ("train", "evaluate"):
                continue
            args = [a for a in stage.args if a != "-m"]
            swept = compose(config_name=stage.command, overrides=args, return_hydra_config=True).hydra.sweeper.params or {}
            params = {k: str(v).split(",") for k, v in swept.items()}
            cfg = compose(config_name=stage.command, overrides=args + [f"{k}={v[0]}" for k, v in params.items()])
            composed[name] = (cfg, params)
    assert set(composed) >= {"sft", "grpo", "evaluate_sft", "evaluate_grpo", "control"} and stage_commands(plan)
    return composed


STAGES = stages()

# (stage, setting as a dotted key or a function of the config, value in PAPER.md 9, where it says so)
RECIPE = [
    ("sft", "hydra:teacher", TEACHERS, "7 teachers (PAPER.md 3)"),
    ("sft", "hydra:student", STUDENTS, "6 students (PAPER.md 3)"),
    ("sft", "spec._target_", "lightning_da.spec.ReferenceSpec", "spec and prompt: Appendix B.1/B.2, the trace scripts"),
    ("sft", "spec.source", "/checkouts/rda", "... read from the authors' repository"),
    ("sft", "spec.script", "create_safety_reasoning_deepseek.py", "one template for all R1 distills"),
    ("grpo", "spec._target_", "lightning_da.spec.ReferenceSpec", "the same filtered set: the same spec"),
    ("sft", "student.model.prompt_format", "reference", "student prompt: the reference's per-family template, its system line"),
    ("sft", "algorithm.think_tokens", "auto", "<think>, </think> added when a DeepSeek teacher trains a non-DeepSeek student"),
    ("grpo", "student.model.prompt_format", "reference", "GRPO prompts in the SFT template"),
    ("evaluate_sft", "student.model.prompt_format", "reference", "evaluation: the SFT template"),
    ("evaluate_grpo", "student.model.prompt_format", "reference", "evaluation: the SFT template"),
    ("control", "student.model.prompt_format", "reference", "evaluation: the SFT template"),
    ("sft", "algorithm.module.lora.r", 32, "SFT LoRA: r 32"),
    ("sft", "algorithm.module.lora.alpha", 64, "alpha 64"),
    ("sft", "algorithm.module.lora.dropout", 0.05, "dropout 0.05"),
    ("sft", "algorithm.module.lora.target_modules", None, "no target_modules: PEFT's default per architecture"),
    ("sft", "algorithm.module.lora.modules_to_save", ["lm_head"], "lm_head in modules_to_save"),
    ("sft", "algorithm.module.optimizer._target_", "torch.optim.AdamW", "AdamW"),
    ("sft", "algorithm.module.optimizer.lr", 1.41e-5, "lr 1.41e-5"),
    ("sft", "algorithm.module.optimizer.weight_decay", 0.0, "weight decay 0"),
    ("sft", "algorithm.module.scheduler._target_", "transformers.get_linear_schedule_with_warmup", "linear schedule"),
    ("sft", "algorithm.module.warmup_ratio", 0.0, "no warmup"),
    ("sft", "algorithm.datamodule.val_fraction", 0.0, "validation: none"),
    ("sft", "algorithm.datamodule.max_length", 2048, "max length 2048"),
    ("sft", "trainer.max_epochs", 3, "epochs 3"),
    ("sft", "algorithm.global_batch_size", 16, "batch 16"),
    ("sft", lambda c: c.algorithm.datamodule.batch_size * sft_accumulation(c, 1), 16, "batch 16 (on one GPU)"),
    ("sft", "trainer.precision", "bf16-mixed", "bf16"),
    ("grpo", "algorithm.module.optimizer.lr", 1.41e-5, "GRPO lr 1.41e-5"),
    ("grpo", "algorithm.module.beta", 0.0, "beta 0"),
    ("grpo", "algorithm.module.scheduler._target_", "transformers.get_linear_schedule_with_warmup", "TRL's default: linear"),
    ("grpo", "algorithm.module.warmup_ratio", 0.0, "TRL's default: no warmup"),
    ("grpo", "algorithm.module.num_generations", 8, "TRL 0.16's default G 8"),
    ("grpo", "algorithm.module.sampling.temperature", 0.9, "TRL 0.16's default T 0.9"),
    ("grpo", "algorithm.module.epsilon", 0.2, "TRL 0.16's default epsilon 0.2"),
    ("grpo", "algorithm.module.sampling.max_new_tokens", 2048, "max completion 2048"),
    ("grpo", lambda c: sorted(c.algorithm.module.rewards), ["judge_safety"], "reward: the judge's verdict, nothing else"),
    ("grpo", "judge.model.name", "meta-llama/Llama-Guard-3-8B", "Llama-Guard-3-8B as the reward model"),
    ("grpo", "data._target_", "lightning_da.data.rl.TeacherFiltered", "data: the filtered set's train split"),
    ("grpo", "data.prompts.name", "UCSC-VLAA/STAR-41K", "... of STAR-41K, the SFT stage's prompts"),
    ("grpo", "algorithm.global_batch_size", 256, "batch 256 completions per step"),
    ("grpo", lambda c: grpo_prompts_per_step(c, 1) * c.algorithm.module.num_generations, 256, "batch 256 (on one GPU)"),
    ("evaluate_sft", "n_candidates", 8, "N 8"),
    ("evaluate_sft", "student.sampling.temperature", 0.7, "T 0.7"),
    ("evaluate_sft", "student.sampling.top_p", 1.0, "top-p 1.0"),
    ("evaluate_sft", "student.sampling.max_new_tokens", 2048, "2048 new tokens"),
    ("evaluate_sft", "hydra:teacher", TEACHERS, "every SFT adapter"),
    ("evaluate_sft", "hydra:student", STUDENTS, "every SFT adapter"),
    ("evaluate_sft", "hydra:benchmark", ["dan", "wildjailbreak", "strongreject", "gsm8k_reference", "mmlu_reference"],
     "the five benchmarks, GSM8K and MMLU prompted and graded as the reference"),
    ("evaluate_grpo", "hydra:benchmark", ["dan", "wildjailbreak", "strongreject", "gsm8k_reference", "mmlu_reference"],
     "the five benchmarks, GSM8K and MMLU prompted and graded as the reference"),
    ("control", "hydra:benchmark", ["dan", "wildjailbreak", "strongreject"], "Table 3: the safety benchmarks"),
    ("control", "hydra:student", ["qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b", "qwen2_5_14b", "llama3_2_1b"],
     "Table 3: five students (Table 10 has no Gemma)"),
]


@pytest.mark.parametrize(("stage", "setting", "expected", "source"), RECIPE,
                         ids=[f"{s}-{k if isinstance(k, str) else source.split(':')[0]}" for s, k, _, source in RECIPE])
def test_the_paper_plan_runs_the_papers_recipe(stage, setting, expected, source):
    cfg, params = STAGES[stage]
    if callable(setting):
        value = setting(cfg)
    elif setting.startswith("hydra:"):
        value = params[setting.removeprefix("hydra:")]
    else:
        value = OmegaConf.select(cfg, setting)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    assert value == expected, f"{stage}: {setting} is {value!r}, PAPER.md 9 says {expected!r} ({source})"


def test_the_grids_strongreject_is_all_313_prompts():
    """PAPER.md 9: StrongREJECT is all 313 in every evaluation; `strongreject` is that set, named so in results."""
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["experiment=eval_sft_grid", "benchmark=strongreject", "teacher=qwq",
                                                         "student=qwen2_5_0_5b"])
    benchmark = instantiate(cfg.benchmark)
    assert (benchmark.name, len(benchmark.load())) == ("strongreject", 313)


@pytest.mark.parametrize(("benchmark", "name", "task", "opening", "size"), [
    ("gsm8k_reference", "gsm8k", "number_reference", "A: Let's think step by step.", None),  # PAPER.md 9: GSM8K
    ("mmlu_reference", "mmlu", "choice_reference", "Answer:", 8),                            # MMLU, 8 subjects
])
def test_the_grids_utility_benchmarks_are_the_references(benchmark, name, task, opening, size):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["experiment=eval_sft_grid", f"benchmark={benchmark}", "teacher=qwq",
                                                         "student=qwen2_5_0_5b"])
    from hydra.utils import instantiate

    built = instantiate(cfg.benchmark)
    assert (built.name, built.task, built.opening) == (name, task, opening)
    if size is None:
        assert (built.template, built.split) == ("Q: {question}", "test")
    else:
        assert (len(built.subjects), built.prompting) == (size, "reference")
