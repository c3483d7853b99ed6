"""plan.py: the paper's whole study as one plan; its offline miniature end to end through report.py."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightning_da.configs import CONF_DIR
from lightning_da.errors import UserError, run_or_exit
from lightning_da.runs.plan import run_plan, stage_commands

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"figure2_unsafe_traces", "figure3_safety_by_teacher", "figure18_safety_by_teacher_every_student",
           "figure19_safety_by_teacher_after_grpo", "figure4_utility_heatmap", "figure5_first_vs_majority", "figure6_densities",
           "figures7_9_response_length_tiny_random", "figures10_17_rate_by_layer_tiny_random", "asr_by_layer", "by_layer_per_configuration", "auroc_by_layer",
           "first_vs_majority_pooled", "densities_pooled"}


def plan_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="plan", overrides=list(overrides))


def test_the_paper_plan_runs_each_stage_as_its_own_experiment():
    commands = stage_commands(plan_cfg("experiment=paper", "reference=/checkouts/rda"))
    assert list(commands) == ["traces", "sft", "grpo", "evaluate_sft", "evaluate_grpo", "control", "attack_llama3_2_1b",
                              "attack_qwen2_5_7b", "report"]
    assert [c[3:] for c in commands.values()][:6] == [
        ["traces", "-m", "experiment=traces_grid", "spec.source=/checkouts/rda"],
        ["train", "-m", "experiment=sft_grid", "spec.source=/checkouts/rda"], ["train", "-m", "experiment=grpo_grid", "spec.source=/checkouts/rda"],
        ["evaluate", "-m", "experiment=eval_sft_grid"],
        ["evaluate", "-m", "experiment=eval_grpo_grid"], ["evaluate", "-m", "experiment=eval_control"]]
    # Table 4's two rows (PAPER.md 7): PAIR at depth 8 on AdvBench against each student its teacher distilled into
    for name, student, teacher in (("attack_llama3_2_1b", "llama3_2_1b", "r1_llama_8b"), ("attack_qwen2_5_7b", "qwen2_5_7b", "r1_llama_70b")):
        assert commands[name][3:] == [
            "attack", f"student={student}", f"adapter=outputs/sft_grid/{teacher}__{student}/adapter", "benchmark=advbench",
            "benchmark.subset=pair50", "attacker=qwen2_5_7b", "judge=llama_guard3", "attack.depth=8", "prompt_format=reference",
            f"hydra.run.dir=outputs/paper/evaluate/attack/{student}"]
    assert commands["report"][3:] == ["report", "outputs/paper/evaluate", "--out", "outputs/paper/report"]
    # Each stage's experiment composes with its entry point, the teachers' as_is and the control's base included.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert compose(config_name="evaluate", overrides=["experiment=eval_teachers"]).as_is == "teacher"
        control = compose(config_name="evaluate", overrides=["experiment=eval_control", "student=qwen2_5_0_5b"])
        assert (control.base.name, control.task_name) == ("Qwen/Qwen2.5-0.5B", "instruct_vs_base")


def test_bad_plans_are_one_line_errors(tmp_path, caplog):
    with pytest.raises(UserError, match=r"only=\['eval'\]: not stages of this plan"):
        stage_commands(plan_cfg("experiment=paper", "only=[eval]"))
    with pytest.raises(UserError, match=r"^this plan reads the authors' spec and prompt from their code \(spec=reference\): set "
                                        r"reference=<a checkout of pankayaraj/Robust_Deliberative_Alignment>$"):
        stage_commands(plan_cfg("experiment=paper", "only=[grpo,report]"))
    assert "report" in stage_commands(plan_cfg("experiment=paper", "only=[report]"))  # a stage that does not read it runs
    shown = stage_commands(plan_cfg("experiment=paper", "dry_run=true"))["traces"]
    assert shown[-1] == "spec.source=/path/to/Robust_Deliberative_Alignment"  # a dry run shows where it goes
    failing = plan_cfg("experiment=paper", "only=[sft,report]", "stages.sft.args=['student=no_such_student']")
    with pytest.raises(UserError, match=r"stage sft failed .* resume with only=\[sft,report\]"):
        run_plan(failing)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        misused = compose(config_name="train", overrides=["experiment=paper"])
    with pytest.raises(SystemExit) as exited:
        run_or_exit(lambda cfg: None, misused, name="train")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert exited.value.code == 2 and "run it with plan.py" in errors[-1]


def test_the_miniature_runs_every_stage_into_every_table_and_figure(tmp_path, reference_checkout):
    """experiment=paper_miniature through the real CLI: SFT (the authors' spec, from a checkout in their repository's
    shape), GRPO, the evaluation grids (the control included) and PAIR on tiny random models, then report.py: Tables
    1-4 and every figure, none missing."""
    subprocess.run([sys.executable, "plan.py", "experiment=paper_miniature", f"root={tmp_path}", f"reference={reference_checkout}",
                    f"hydra.run.dir={tmp_path / 'plan'}"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    report = tmp_path / "report"
    markdown = (report / "report.md").read_text()
    for heading in ("## Table 1: after SFT", "## Table 2: after GRPO", "## Table 3: the control", "## Table 4: adaptive attacks"):
        assert heading in markdown
    assert "| tiny_random | PAIR | 2 | non-refusal rate |" in markdown and "Not produced" not in markdown
    assert "Not drawn" not in markdown and "## Stage ?" not in markdown and "## Teachers as they are" not in markdown
    for name in FIGURES:
        assert (report / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name}.png)" in markdown


def test_a_dry_run_prints_each_stages_jobs_and_most_tokens(capsys):
    """PAPER.md 4 and 9 give the sizes: 7 teachers answer ~41K STAR prompts once with 2,048 new tokens (six students share
    each teacher's traces); Table 3's five students sample 8 candidates and the base's one with 2,048 tokens on DAN
    (1,405), WildJailbreak (2,000) and StrongREJECT (313); report.py samples nothing."""
    from lightning_da.runs.plan import print_costs

    commands = stage_commands(plan_cfg("experiment=paper", "dry_run=true", "only=[sft,control,report]"))
    print_costs(commands)
    out = capsys.readouterr().out.splitlines()
    sft, control = 7 * 41_000 * 2048, 5 * (1405 + 2000 + 313) * (8 + 1) * 2048
    assert out[0] == f"# sft: 42 jobs, at most {sft:,} new tokens"
    assert out[1].startswith("python -m lightning_da train -m experiment=sft_grid")
    assert out[2] == f"# control: 15 jobs, at most {control:,} new tokens"
    assert out[4:] == ["# report: 1 job, at most 0 new tokens", "python -m lightning_da report outputs/paper/evaluate --out outputs/paper/report",
                       f"# total: 58 jobs, at most {sft + control:,} new tokens (prompts x samples x max new tokens; a stage whose "
                       "outputs exist resumes and samples less)"]


def test_the_teacher_stage_fills_the_caches_the_sft_grid_reads(capsys):
    """traces_grid's jobs compose the trace cache's inputs (teacher, prompts, spec, sampling, seed, backend), the judge and
    the cache directory exactly as sft_grid's jobs of the same teacher do; so the dry run counts the traces once, in the
    first stage, and a teacher spread over slices once in all."""
    from lightning_da.runs.cost import stage_cost

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        grid = compose(config_name="traces", overrides=["experiment=traces_grid"], return_hydra_config=True)
        teachers = str(grid.hydra.sweeper.params.teacher).split(",")
        assert teachers == str(compose(config_name="train", overrides=["experiment=sft_grid"], return_hydra_config=True)
                               .hydra.sweeper.params.teacher).split(",")
        for teacher in teachers:
            job = compose(config_name="traces", overrides=["experiment=traces_grid", f"teacher={teacher}", "spec.source=/r"])
            sft = compose(config_name="train", overrides=["experiment=sft_grid", f"teacher={teacher}", "student=llama3_2_1b",
                                                          "spec.source=/r"])
            for key in ("teacher", "data", "spec", "seed", "generation", "judge", "paths.cache_dir"):
                assert OmegaConf.select(job, key) == OmegaConf.select(sft, key), (teacher, key)
    print_costs = __import__("lightning_da.runs.plan", fromlist=["print_costs"]).print_costs
    print_costs(stage_commands(plan_cfg("experiment=paper", "dry_run=true", "only=[traces,sft]")))
    out = capsys.readouterr().out.splitlines()
    assert (out[0], out[2]) == (f"# traces: 7 jobs, at most {7 * 41_000 * 2048:,} new tokens", "# sft: 42 jobs, at most 0 new tokens")
    sliced = [stage_cost("traces", ["-m", "experiment=traces_grid", "teacher=qwq", f"slice={s}", "slices=3", "spec.source=/r"])
              for s in range(3)]
    assert [c.tokens for c in sliced] == [n * 2048 for n in (1709 * 8, 1708 * 8, 1708 * 8)]  # QwQ: 5,125 batches of 8
    assert sum(c.tokens for c in sliced) == 41_000 * 2048


def test_the_miniatures_costs_follow_its_arguments():
    """Each miniature stage's tokens from its own arguments: SFT 8 prompts x 1 trace; GRPO's teacher-filtered prompts
    (at most the same 8) x G 2 x 6 tokens, one step of 2 prompts; evaluation 6 StrongREJECT prompts x (4 candidates + the
    base's 1) x 6 tokens; PAIR 2 behaviours x (per target: 1 stream x depth 2 x 5 attacker tries, and the answers: the 1 + 1
    + 2 samples of 1 stream x depth 2 in the search and of 5 confirmations and 2 transfer replays of the best prompt)."""
    from lightning_da.runs.cost import stage_cost

    commands = stage_commands(plan_cfg("experiment=paper_miniature", "reference=/checkouts/rda"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        teacher = compose(config_name="train", overrides=["teacher=tiny_random"]).teacher.sampling.max_new_tokens
        attacker = compose(config_name="attack", overrides=["attacker=tiny_random"]).attacker.sampling.max_new_tokens
    cost = {name: stage_cost(argv[3], argv[4:]) for name, argv in commands.items()}
    assert (cost["traces"].jobs, cost["traces"].tokens) == (1, 8 * teacher)
    assert (cost["sft"].jobs, cost["sft"].tokens) == (1, 8 * teacher)  # alone; after the traces stage, 0
    assert (cost["grpo"].jobs, cost["grpo"].tokens) == (1, min(8, 1 * 2) * 2 * 6)
    assert (cost["evaluate_sft"].jobs, cost["evaluate_sft"].tokens) == (1, 6 * (4 + 1) * 6)
    assert cost["evaluate_sft_utility"].tokens == 4 * (3 + 1) * 6
    assert cost["attack"].tokens == 2 * (3 * 1 * 2 * 5 * attacker + (1 + 1 + 2) * (1 * 2 + 5 + 2) * 6)


def test_an_attacks_cost_counts_taps_tree_the_raters_and_the_measurements():
    """TAP, 3 levels from 1 root, branching 2, width 3, 2 tries of 8 attacker tokens: asks 1 x 2 + 2 x 3 x 2 = 14 (each with
    the evaluator's 10 tokens), sent min(3, 2) + 2 x 3 = 8 answers of 4 tokens (search budget) on each of 2 targets
    (aligned: 1 sample; Best-of-3: 3), each rated with PAIR's 16; then per target the full-length re-run, 2 confirmations
    and 1 transfer replay of 12 tokens."""
    from lightning_da.runs.cost import attack_tokens

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="attack", overrides=[
            "attack.method=tap", "attack.depth=3", "attack.branching_factor=2", "attack.width=3", "attack.max_attempts=2",
            "attacker.sampling.max_new_tokens=8", "targets=[aligned,aligned_bon]", "n_candidates=3", "scorer=rating",
            "attack.target_max_new_tokens=4", "attack.confirm_samples=2"])
    want = sum(14 * (2 * 8 + 10) + 8 * (q * 4 + 16) + (1 + 2 + 1) * q * 12 for q in (1, 3))
    assert attack_tokens(cfg, 12) == want


@pytest.mark.parametrize(("reuse", "generation_batches"), [([], 4), (["algorithm.module.num_iterations=2"], 2),
                                                           (["algorithm.module.num_iterations=2", "algorithm.module.steps_per_generation=2"], 1)])
def test_grpos_cost_counts_generation_batches_not_optimizer_steps(reuse, generation_batches):
    """trainer.max_steps counts optimizer steps; a generation batch makes num_iterations x steps_per_generation of them:
    4 steps of 2 prompts x G 2 x 6 tokens sample 4, 2 or 1 batches."""
    from lightning_da.runs.cost import stage_cost

    cost = stage_cost("train", ["algorithm=grpo", "student=tiny_random", "data=rl_mixture", "rewards=mixture", "data.harmful.limit=8",
                                "data.benign.n=8", "trainer.max_steps=4", "algorithm.global_batch_size=null", "algorithm.datamodule.prompts_per_step=2",
                                "algorithm.module.num_generations=2", "algorithm.module.sampling.max_new_tokens=6", *reuse])
    assert cost.tokens == generation_batches * 2 * 2 * 6
