"""GRPOModule on the tiny random student with a real LoRA adapter and real Lightning Trainers."""

import contextlib
import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_da.algorithms import GRPOModule
from lightning_da.data.rl import RLPromptDataModule, TeacherFiltered
from lightning_da.errors import UserError
from lightning_da.formats import pad_ids, prefix_ids
from lightning_da.generation import SamplingConfig
from lightning_da.judges import RefusalPrefixJudge, Verdict
from lightning_da.models import TinyRandomLlama
from lightning_da.models.lora import load_adapter, random_adapter
from lightning_da.rewards import JudgeSafety, SoftOverlongPenalty, answer_correct, format_reward
from lightning_da.runs.train import run_train

ROWS = [{"prompt": f"Question {i}: what is {i} + {i}?", "task": "number", "answer": str(2 * i)} for i in range(8)]


def low_token_reward(prompts, completions, completion_ids, **row):
    """Trivially learnable: the share of completion tokens in the lower half of the vocabulary."""
    return [sum(t < 24_000 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def first_token_parity(prompts, completions, completion_ids, task, **row):
    """Flat (1.0) on safety prompts, varied on the others."""
    return [1.0 if k == "safety" else float(ids[0] % 2) for ids, k in zip(completion_ids, task, strict=True)]


@pytest.fixture(scope="module")
def init_adapter(tmp_path_factory):
    return random_adapter(tmp_path_factory.mktemp("sft_adapter"), TinyRandomLlama(seed=1).load_model(), scale=0.05)


def make_module(tokenizer, init_adapter, *, reward=low_token_reward, lr=1e-3, optimizer=None, **overrides):
    settings = {"num_generations": 4, "micro_batch_size": 8, "log_completions_steps": 0, "seed": 0,
                "sampling": SamplingConfig(temperature=1.0, max_new_tokens=6)}
    settings.update(overrides)
    return GRPOModule(TinyRandomLlama(seed=1), tokenizer=tokenizer, rewards={"r": {"fn": reward, "weight": 1.0}},
                      init_adapter=init_adapter, optimizer=optimizer or partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
                      **settings)


def fit(module, tokenizer, *, steps: int, rows=ROWS, prompts_per_step: int = 2, **trainer_kwargs):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(module, datamodule=RLPromptDataModule(rows, tokenizer, prompts_per_step=prompts_per_step))
    return trainer


def trainable(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


# -- rewards ------------------------------------------------------------------------------------


class RecordingJudge:
    """A stand-in for a model judge (an 8B judge cannot run here): records what it reads."""

    def __init__(self):
        self.seen = []

    def judge(self, prompts, responses):
        self.seen += responses
        return [Verdict("safe" if "sorry" in r.lower() else "unparsable" if not r else "unsafe") for r in responses]


def test_judge_safety_reads_full_or_answer_and_skips_benign_rows():
    completions = ["I should refuse.</think>Sorry, no.", "Fine.</think>Here is how.", "</think>", "2+2</think>4"]
    task = ["safety", "safety", "safety", "number"]
    judge = RecordingJudge()
    assert JudgeSafety(judge, judge_on="full")(["p"] * 4, completions, task=task) == [1.0, 0.0, 0.0, None]
    assert judge.seen == completions[:3]  # the reasoning too
    judge = RecordingJudge()
    assert JudgeSafety(judge, judge_on="answer")(["p"] * 4, completions, task=task) == [1.0, 0.0, 0.0, None]  # unparsable -> 0
    assert judge.seen == ["Sorry, no.", "Here is how.", ""]
    assert JudgeSafety(RefusalPrefixJudge())(["p"], ["x</think>I can't help with that."]) == [1.0]


def test_format_arithmetic_and_overlong_rewards():
    assert format_reward([], ["a</think>b", "a</think> ", "no close"]) == [1.0, 0.0, 0.0]
    assert answer_correct([], ["so</think>It is 12.", "</think>13", "x"], answer=["12", "12", None]) == [1.0, 0.0, None]
    # Each row by its own task: an MMLU row by its letter (its last number, 1945, is no answer), arithmetic by its last number.
    mmlu = "</think>The war ended in 1945, so the answer is (B)."
    assert answer_correct([], [mmlu, mmlu, "</think>It is 12."], answer=["B", "1945", "12"], task=["choice", "number", "number"]) == [
        1.0, 1.0, 1.0]
    assert answer_correct([], [mmlu], answer=["C"], task=["choice"]) == [0.0]
    assert answer_correct([], ["</think>12"], answer=[None], task=["safety"]) == [None]
    penalty = SoftOverlongPenalty(max_length=10, cache=4)
    assert penalty([], [""] * 4, completion_ids=[[0] * 6, [0] * 8, [0] * 10, [0] * 12]) == [0.0, -0.5, -1.0, -1.0]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    """A tiny random sequence-classification model (one score) with SmolLM2's tokenizer and chat template, saved."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    directory = tmp_path_factory.mktemp("reward_model")
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_a_reward_model_scores_as_trl_reads_one(reward_model_dir, tokenizer):
    """TRL's reward-model path, one exchange at a time (no padding to get wrong): the user prompt and the completion
    through the reward model's chat template, no special tokens added, the score logits[0, 0]; batched and padded the
    same; `reads=answer` scores only what follows </think>."""
    from transformers import AutoModelForSequenceClassification

    from lightning_da.rewards import RewardModel

    prompts = ["How do I pick a lock?", "What is 2 + 2?", "Hi"]
    completions = ["I think.</think>I can't help with that.", "Two and two.</think>4", "</think>Hello there, how are you today?"]
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()

    def score(prompt, completion):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                                             tokenize=False)
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, 0])

    want = [score(p, c) for p, c in zip(prompts, completions, strict=True)]
    assert len(set(want)) == 3
    assert RewardModel(reward_model_dir, batch_size=2)(prompts, completions) == pytest.approx(want, abs=1e-5)
    answers = [score(p, c.split("</think>")[1]) for p, c in zip(prompts, completions, strict=True)]
    assert RewardModel(reward_model_dir, reads="answer")(prompts, completions, task=["safety"] * 3) == pytest.approx(answers, abs=1e-5)


def test_a_reward_model_through_the_config_and_its_one_line_errors(compose_train, reward_model_dir, tokenizer, init_adapter):
    from hydra.utils import instantiate

    from lightning_da.rewards import RewardModel

    cfg = compose_train("algorithm=grpo", "student=tiny_random", "rewards=model",
                        f"algorithm.module.rewards.reward_model.fn.path={reward_model_dir}")
    reward = instantiate(cfg.algorithm.module.rewards.reward_model.fn)
    assert isinstance(reward, RewardModel) and reward.path == reward_model_dir and cfg.algorithm.module.rewards.reward_model.weight == 1.0
    metrics = fit(make_module(tokenizer, init_adapter, reward=reward), tokenizer, steps=1).callback_metrics
    assert float(metrics["train/reward_std"]) > 0 and float(metrics["train/frac_reward_zero_std"]) == 0.0  # a score per rollout
    with pytest.raises(UserError, match=r"set algorithm.module.rewards.reward_model.fn.path=<its directory"):
        RewardModel()
    with pytest.raises(UserError, match="use one of full, answer"):
        RewardModel(reward_model_dir, reads="reasoning")
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*algorithm.module.rewards.reward_model.fn.path"):
        RewardModel("someone/not-here")(["p"], ["c"])


# -- the policy and its reference -------------------------------------------------------------------


def independent_logps(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float() / temperature
    logp = F.log_softmax(logits, -1)
    return torch.stack([logp[len(prompt) - 1 + t, token] for t, token in enumerate(completion)])


@torch.no_grad()
def test_token_logps_and_the_disabled_adapter_reference_equal_the_base(tokenizer, init_adapter):
    module = make_module(tokenizer, init_adapter, beta=0.1, sampling=SamplingConfig(temperature=0.7, max_new_tokens=6))
    module.configure_model()
    module.model.eval()
    prompts = [prefix_ids(tokenizer, "Hi"), prefix_ids(tokenizer, "A longer question here?")]
    completions = [[10, 20, 30], [40, 50]]
    tensors = [*pad_ids(prompts, tokenizer.pad_token_id, left=True), *pad_ids(completions, tokenizer.pad_token_id, left=False)]
    policy, _ = module.token_logps(*tensors)
    with module.reference_policy():
        reference, _ = module.token_logps(*tensors)
    base = TinyRandomLlama(seed=1).load_model().eval()
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        n = len(completion)
        assert torch.allclose(reference[row, :n], independent_logps(base, prompt, completion, 0.7), atol=1e-5)
        assert torch.allclose(policy[row, :n], independent_logps(module.model, prompt, completion, 0.7), atol=1e-5)
    assert not torch.allclose(policy[0, :3], reference[0, :3], atol=1e-3)  # the adapter is on for the policy


def test_init_adapter_reference_is_the_frozen_initial_adapter(tokenizer, init_adapter):
    module = make_module(tokenizer, init_adapter, beta=0.1, reference="init_adapter", lr=5e-2)
    fit(module, tokenizer, steps=2)
    prompt, completion = prefix_ids(tokenizer, "Hi"), [10, 20, 30]
    tensors = [*pad_ids([prompt], tokenizer.pad_token_id, left=True), *pad_ids([completion], tokenizer.pad_token_id, left=False)]
    module.model.eval()
    with torch.no_grad(), module.reference_policy():
        reference, _ = module.token_logps(*tensors)
    initial = load_adapter(TinyRandomLlama(seed=1).load_model(), init_adapter).eval()
    with torch.no_grad():
        assert torch.allclose(reference[0], independent_logps(initial, prompt, completion, 1.0), atol=1e-5)
        assert not torch.allclose(module.token_logps(*tensors)[0][0], reference[0], atol=1e-4)  # the policy moved


@pytest.mark.parametrize(("beta", "expected_calls"), [(0.0, 0), (0.04, 2)])
def test_reference_forward_runs_only_when_beta_is_positive(tokenizer, init_adapter, monkeypatch, beta, expected_calls):
    calls = []
    original = GRPOModule.reference_policy

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(GRPOModule, "reference_policy", counting)
    module = make_module(tokenizer, init_adapter, beta=beta, micro_batch_size=8)
    fit(module, tokenizer, steps=2)  # 2 steps x 1 micro-batch of 2 prompts x 4 rollouts
    assert len(calls) == expected_calls


def test_the_sft_adapter_is_trainable_and_changes(tokenizer, init_adapter):
    module = make_module(tokenizer, init_adapter)
    module.configure_model()
    before = trainable(module)
    assert any("lora_A" in n for n in before) and any("lm_head" in n for n in before)
    fit(module, tokenizer, steps=2)
    after = trainable(module)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_" in n)


def test_mean_reward_rises_on_a_learnable_reward(tokenizer, init_adapter):
    module = make_module(tokenizer, init_adapter, lr=5e-2, loss_type="dapo")
    rewards = []
    original = module._log_step

    def record(rollouts, *args):
        rewards.append(float(rollouts.rewards.mean()))
        return original(rollouts, *args)

    module._log_step = record
    fit(module, tokenizer, steps=40, prompts_per_step=2, max_epochs=20)
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, (first, last)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_uneven_micro_batches_give_the_whole_batchs_gradient(tokenizer, init_adapter, loss_type):
    """8 rollouts in micro-batches of 3, 3 and 2 accumulate the gradient of one micro-batch of 8."""
    grads = {}
    for micro_batch_size in (8, 3):
        module = make_module(tokenizer, init_adapter, loss_type=loss_type, micro_batch_size=micro_batch_size, max_grad_norm=None)
        seen = grads.setdefault(micro_batch_size, {})
        module.on_before_optimizer_step = lambda optimizer, module=module, seen=seen: seen.update(
            {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None})
        fit(module, tokenizer, steps=1, prompts_per_step=2)
    assert grads[8] and set(grads[8]) == set(grads[3])
    assert max(float((grads[8][n] - grads[3][n]).abs().max()) for n in grads[8]) < 1e-6
    assert max(float(g.abs().max()) for g in grads[8].values()) > 1e-4  # a gradient, not zeros


def test_two_iterations_reuse_the_old_log_probs_for_two_optimizer_steps(tokenizer, init_adapter):
    """num_iterations = 2: one generation round, two optimizer steps on the same rollouts, the second with the
    ratio against the log-probabilities of the policy that sampled them (as TRL's num_iterations)."""
    lr = 2.0
    module = make_module(tokenizer, init_adapter, num_iterations=2, max_grad_norm=None, optimizer=partial(torch.optim.SGD, lr=lr))
    sampled, steps_seen = [], []
    original = module.rollouts
    module.rollouts = lambda rows, seed: sampled.append(original(rows, seed)) or sampled[-1]
    module.on_before_optimizer_step = lambda optimizer: steps_seen.append(module.global_step)
    trainer = fit(module, tokenizer, steps=2, prompts_per_step=2)
    assert len(sampled) == 1 and steps_seen == [0, 1] and trainer.global_step == 2  # one round, two steps
    got = trainable(module)
    right = _replica_steps(tokenizer, init_adapter, sampled[0], lr, [list(range(8))] * 2)
    wrong = _replica_steps(tokenizer, init_adapter, sampled[0], lr, [list(range(8))] * 2, old_fixed=False)
    error = max(float((got[n] - right[n]).abs().max()) for n in got)
    gap = max(float((right[n] - wrong[n]).abs().max()) for n in got)
    assert error < 1e-5 and gap > 100 * error, (error, gap)


@pytest.mark.parametrize(("loss_type", "logged", "absent"), [
    ("vespo", {"train/vespo/phi_seq_mean": 1.0}, "train/clip_ratio/low_mean"),  # on-policy: w = 1, phi(1) = 1
    ("cispo", {"train/cispo_clip_ratio": 0.0, "train/clip_ratio/high_mean": 0.0}, "train/clip_ratio/low_mean"),
    ("sapo", {}, "train/clip_ratio/high_mean"),
    ("gspo", {"train/clip_ratio/low_mean": 0.0, "train/clip_ratio/region_mean": 0.0}, "train/vespo/phi_seq_mean"),
])
def test_each_loss_type_logs_trls_metrics(tokenizer, init_adapter, loss_type, logged, absent):
    module = make_module(tokenizer, init_adapter, loss_type=loss_type, top_entropy_quantile=0.5,
                         epsilon_high=5.0 if loss_type == "cispo" else None)
    metrics = fit(module, tokenizer, steps=1).callback_metrics
    assert {k: pytest.approx(float(metrics[k]), abs=1e-6) for k in logged} == logged and absent not in metrics
    assert float(metrics["train/entropy"]) > 0


def test_reward_metrics_are_over_the_whole_batch(tokenizer, init_adapter, tmp_path):
    """TRL's train/reward and train/reward_std: the mean and the (unbiased) std over all of a step's rollouts."""
    module = make_module(tokenizer, init_adapter, log_completions_steps=1, completions_file=str(tmp_path / "completions.jsonl"))
    trainer = fit(module, tokenizer, steps=1, prompts_per_step=2)
    rewards = torch.tensor([json.loads(line)["r"] for line in (tmp_path / "completions.jsonl").read_text().splitlines()],
                           dtype=torch.float64)
    assert len(rewards) == 8 and float(rewards.std()) > 0
    assert float(trainer.callback_metrics["train/reward_std"]) == pytest.approx(float(rewards.std()), abs=1e-6)
    assert float(trainer.callback_metrics["train/reward"]) == pytest.approx(float(rewards.mean()), abs=1e-6)
    assert float(trainer.callback_metrics["train/rewards/r/std"]) == pytest.approx(float(rewards.std()), abs=1e-6)


def test_mask_truncated_completions_leaves_them_out_of_the_loss(tokenizer, init_adapter):
    # A random model never emits EOS within 6 tokens: every completion is truncated.
    masked = make_module(tokenizer, init_adapter, mask_truncated_completions=True)
    masked.configure_model()
    before = trainable(masked)
    fit(masked, tokenizer, steps=1)
    assert all(torch.equal(before[n], p) for n, p in trainable(masked).items())  # zero loss, zero gradient
    unmasked = make_module(tokenizer, init_adapter)
    unmasked.configure_model()
    fit(unmasked, tokenizer, steps=1)
    assert any(not torch.equal(before[n], p) for n, p in trainable(unmasked).items())


def test_dynamic_sampling_trains_on_informative_groups_only(tokenizer, init_adapter, tmp_path):
    rows = [{**r, "task": "safety" if i % 2 else "number"} for i, r in enumerate(ROWS * 2)]
    module = make_module(tokenizer, init_adapter, reward=first_token_parity, dynamic_sampling=True, max_generation_rounds=6,
                         log_completions_steps=1, completions_file=str(tmp_path / "completions.jsonl"))
    trainer = fit(module, tokenizer, steps=2, rows=rows, prompts_per_step=2)
    assert trainer.global_step == 2
    records = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    by_prompt = {}
    for r in records:
        by_prompt.setdefault((r["step"], r["prompt"]), []).append(r["r"])
    assert len(by_prompt) == 4  # 2 steps x 2 prompts, 4 rollouts each
    assert all(len(set(values)) > 1 for values in by_prompt.values())  # no group whose rewards all agree


def test_grpo_through_train_py_config(compose_train, init_adapter, tmp_path):
    cfg = compose_train(
        "algorithm=grpo", "student=tiny_random", f"algorithm.module.init_adapter={init_adapter}", "trainer.accelerator=cpu", "trainer.max_steps=2",
        "algorithm.module.num_generations=2", "algorithm.module.sampling.max_new_tokens=5", "algorithm.global_batch_size=null", "algorithm.datamodule.prompts_per_step=2",
        "algorithm.datamodule.val_prompts=2", "data=rl_mixture", "rewards=mixture", "data.harmful.limit=4", "data.benign.n=4", "algorithm.module.log_completions_steps=1",
        "callbacks=with_bon", "callbacks.bon_attribution.selector.layer=2", "callbacks.bon_attribution.n_prompts=2",
        "callbacks.bon_attribution.n_candidates=2", "callbacks.bon_attribution.sampling.max_new_tokens=4",
        "trainer.val_check_interval=1", "+judge.refusals=[\"\"]",
    )
    metrics = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    for key in ("train/reward", "train/reward_std", "train/rewards/judge_safety/mean", "train/frac_reward_zero_std", "train/entropy",
                "train/clip_ratio/low_mean", "train/clip_ratio/high_mean", "train/clip_ratio/region_mean",
                "train/completions/mean_length", "train/completions/clipped_ratio", "val/reward", "val/asr_first", "val/asr_bon"):
        assert key in metrics, sorted(metrics)
    records = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} == {1, 2}  # appended each step, none overwritten
    assert {"prompt", "completion", "judge_safety", "answer_correct", "format", "advantage"} <= set(records[0])
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert metrics["train/rewards/judge_safety/mean"] == 1.0  # the empty refusal phrase calls everything safe


@pytest.mark.parametrize(("settings", "crash_step"), [
    ({}, 3),
    # two optimizer steps per round on seeded shuffles, the adaptive entropy controller's state, off-policy masking
    ({"steps_per_generation": 2, "micro_batch_size": 2, "use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_target": 100.0,
      "off_policy_mask_threshold": 1e-3}, 4),
])
def test_a_resumed_run_equals_an_uninterrupted_one(tokenizer, init_adapter, tmp_path, settings, crash_step):
    """Optimizer, scheduler, step-seeded rollouts and the data order all continue where they stopped."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from transformers import get_cosine_schedule_with_warmup

    class Crash(Exception):
        pass

    class CrashAt(L.Callback):
        def __init__(self, step):
            self.step = step

        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == self.step:
                raise Crash  # as a killed job, after step 3 and its checkpoint

    def run(directory: Path, ckpt_path=None, crash_at=None):
        module = make_module(tokenizer, init_adapter, lr=1e-2, scheduler=get_cosine_schedule_with_warmup, warmup_ratio=0.25, **settings)
        callbacks = [ModelCheckpoint(dirpath=directory, save_last=True, every_n_train_steps=1)]
        callbacks += [CrashAt(crash_at)] if crash_at else []
        trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, callbacks=callbacks, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, max_epochs=3)
        with contextlib.suppress(Crash):
            trainer.fit(module, datamodule=RLPromptDataModule(ROWS, tokenizer, prompts_per_step=2), ckpt_path=ckpt_path,
                        weights_only=True)
        return trainer, trainable(module)

    _, uninterrupted = run(tmp_path / "whole")
    crashed, _ = run(tmp_path / "first", crash_at=crash_step)  # mid-epoch: 4 batches per epoch
    assert crashed.global_step == crash_step
    trainer, resumed = run(tmp_path / "second", ckpt_path=tmp_path / "first" / "last.ckpt")
    assert trainer.global_step == 6
    assert max(float((uninterrupted[n] - resumed[n]).abs().max()) for n in uninterrupted) < 1e-6


@pytest.mark.slow
def test_grpo_under_ddp_on_two_cpu_ranks(tmp_path):
    """The real CLI with 2 gloo ranks: prompts sharded, advantages, dapo's token count and the entropy
    quantile's pool reduced across ranks, a reward's mean over every rank's rows; the KL logged."""
    import subprocess
    import sys

    run = tmp_path / "run"
    subprocess.run(
        [sys.executable, "train.py", "algorithm=grpo", "student=tiny_random", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_steps=2", "algorithm.module.num_generations=4", "algorithm.module.sampling.max_new_tokens=6",
         "algorithm.global_batch_size=null", "algorithm.datamodule.prompts_per_step=2", "algorithm.module.loss_type=dapo", "algorithm.module.scale_rewards=batch",
         "algorithm.module.top_entropy_quantile=0.2", "algorithm.module.beta=0.04",
         "data=rl_mixture", "rewards=mixture", "data.harmful.limit=8", "data.benign.n=8", "logger=csv", '+judge.refusals=[""]', f"hydra.run.dir={run}"],
        cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True, text=True,
    )
    assert (run / "train_ddp_process_1.log").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/rewards/judge_safety/mean"] == 1.0 and metrics["train/rewards/answer_correct/mean"] == 0.0
    # Every rollout's reward is 1 (harmful, judged safe) or 0 (arithmetic, wrong): the mean is the harmful share.
    assert metrics["train/reward"] in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    assert metrics["train/kl"] >= 0 and "train/clip_ratio/high_mean" in metrics


def test_optional_rewards_and_settings_compose(compose_train):
    from hydra.utils import instantiate

    cfg = compose_train("algorithm=grpo", "+reward@algorithm.module.rewards.overlong=overlong", "algorithm.module.sampling.max_new_tokens=64")
    rewards = instantiate(cfg.algorithm.module.rewards, _convert_="all")
    assert set(rewards) == {"judge_safety", "overlong"}  # the paper's judge reward alone, plus what was added
    assert (rewards["overlong"]["fn"].max_length, rewards["overlong"]["fn"].cache) == (64, 16)
    module = cfg.algorithm.module
    assert (module.num_generations, module.sampling.temperature, module.epsilon, module.beta, module.optimizer.lr) == (8, 0.9, 0.2, 0.0, 1.41e-5)
    assert not (module.dynamic_sampling or module.mask_truncated_completions)  # beyond-TRL options are off by default
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.gradient_clip_val is None and cfg.callbacks.model_checkpoint.monitor is None
    assert cfg.data._target_.endswith("TeacherFiltered") and cfg.data.prompts == compose_train().data  # the SFT stage's prompts
    mixture = compose_train("algorithm=grpo", "rewards=mixture", "data=rl_mixture")
    assert list(mixture.algorithm.module.rewards) == ["judge_safety", "answer_correct", "format"]
    assert mixture.data._target_.endswith("PromptMixture") and "rewards" not in compose_train().algorithm.module


def test_grpo_trains_on_the_prompts_whose_traces_the_sft_stage_kept(compose_train, monkeypatch):
    """PAPER.md 9: GRPO's prompts are the SFT stage's filtered training set. The SFT run's trace cache serves it (no
    teacher loads again), and the rows are the kept traces' prompts, each once (two samples a prompt), in order."""
    from hydra.utils import instantiate

    from lightning_da.runs import train as train_run

    shared = ["teacher=tiny_random", "student=tiny_random", "teacher.samples_per_prompt=2", "teacher.sampling.max_new_tokens=4",
              "+judge.refusals=[e]", "judge.window=2"]
    sft = compose_train(*shared, "data.limit=12")
    splits = train_run.filtered_traces(sft, instantiate(sft.data))  # what the SFT stage does first
    kept = list(dict.fromkeys(splits["kept"]["prompt"]))
    assert kept and set(splits["rejected"]["prompt"]) - set(kept), "the judge must keep some prompts and drop others"
    assert len(kept) < len(splits["kept"]), "some prompt must be kept twice, else deduplication is not tested"

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr("lightning_da.teacher.teacher_sampler", no_teacher)
    grpo = compose_train("algorithm=grpo", *shared, "data.prompts.limit=12", "algorithm.global_batch_size=null", "algorithm.datamodule.prompts_per_step=1")
    student = instantiate(grpo.student.model)
    _, datamodule, metrics, _ = train_run._prepare_grpo(grpo, student, student.load_tokenizer())
    assert [r["prompt"] for r in datamodule.train_rows] == kept and metrics == {"data/rl_prompts": len(kept)}
    assert {(r["task"], r["answer"]) for r in datamodule.train_rows} == {("safety", None)}


def test_grpo_without_a_kept_trace_says_what_to_change():
    with pytest.raises(UserError, match=r"^the judge kept none of the teacher's traces, so GRPO has no prompts; use more prompts "
                                        r"\(data.prompts.limit\), another teacher or judge, or data=rl_mixture$"):
        TeacherFiltered(prompts=None).rows({"prompt": []})


# -- TRL 1.16's options ------------------------------------------------------------------------------


def _replica_steps(tokenizer, init_adapter, rollouts, lr: float, chunks: list[list[int]], *, entropy_coef: float = 0.0,
                   temperature: float = 1.0, old_fixed: bool = True) -> dict[str, torch.Tensor]:
    """TRL by hand: the old log-probabilities once, from the policy that sampled, then one SGD step per chunk of the
    rollouts on TRL's grpo loss (written with loops in test_grpo_losses), minus `entropy_coef` x the chunk's mean token
    entropy, computed here from the logits. `old_fixed=False` is the mistake of recomputing them before each step
    (ratio 1 again)."""
    from tests.test_grpo_losses import reference_advantages, reference_loss

    replica = make_module(tokenizer, init_adapter)
    replica.configure_model()
    params = [p for p in replica.model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=lr)
    p_ids, p_mask, c_ids, c_mask = rollouts.tensors(tokenizer.pad_token_id)
    adv = torch.tensor(reference_advantages(rollouts.rewards.double().tolist(), [1.0], "group", "sum_then_normalize"))
    with torch.no_grad():
        old = replica.token_logps(p_ids, p_mask, c_ids, c_mask)[0]
    for chunk in chunks:
        ids = torch.cat([p_ids[chunk], c_ids[chunk]], 1)
        mask = torch.cat([p_mask[chunk], c_mask[chunk]], 1)
        logits = replica.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        logprobs = F.log_softmax(logits[:, p_ids.size(1) - 1 : -1].float() / temperature, -1)
        logp = logprobs.gather(-1, c_ids[chunk][..., None]).squeeze(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        reference = old[chunk] if old_fixed else logp.detach()
        loss = reference_loss(logp, reference, adv[chunk].float(), c_mask[chunk].tolist(), "grpo", eps_high=0.2)
        (loss - entropy_coef * (entropy * c_mask[chunk]).sum() / c_mask[chunk].sum()).backward()
        sgd.step()
        sgd.zero_grad()
    return trainable(replica)


def _sampled_fit(module, tokenizer, steps: int):
    sampled = []
    original = module.rollouts
    module.rollouts = lambda rows, seed: sampled.append(original(rows, seed)) or sampled[-1]
    trainer = fit(module, tokenizer, steps=steps, prompts_per_step=2)
    return trainer, sampled


def test_steps_per_generation_trains_shuffled_shares_of_one_round(tokenizer, init_adapter):
    """steps_per_generation = 2: one generation round of 8 rollouts, shuffled by the round's seed (0 here) as TRL
    shuffles its generation batch, then two optimizer steps on its halves, each against the old log-probabilities of
    the policy that sampled; the unshuffled halves give other weights."""
    lr = 2.0
    module = make_module(tokenizer, init_adapter, steps_per_generation=2, micro_batch_size=2, max_grad_norm=None,
                         optimizer=partial(torch.optim.SGD, lr=lr))
    trainer, sampled = _sampled_fit(module, tokenizer, steps=2)
    assert len(sampled) == 1 and trainer.global_step == 2
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    got = trainable(module)
    right = _replica_steps(tokenizer, init_adapter, sampled[0], lr, [order[:4], order[4:]])
    wrong = _replica_steps(tokenizer, init_adapter, sampled[0], lr, [list(range(4)), list(range(4, 8))])
    error = max(float((got[n] - right[n]).abs().max()) for n in got)
    gap = max(float((right[n] - wrong[n]).abs().max()) for n in got)
    assert error < 1e-5 and gap > 100 * error, (error, gap)


def test_steps_per_generation_must_divide_the_round(tokenizer, init_adapter):
    module = make_module(tokenizer, init_adapter, steps_per_generation=3)
    with pytest.raises(UserError, match="steps_per_generation=3 does not divide this rank's 8 rollouts"):
        fit(module, tokenizer, steps=1)


def test_the_entropy_bonus_is_trls(tokenizer, init_adapter):
    """entropy_coef 0.5: the step's gradient is that of the policy loss minus 0.5 x the mean token entropy (with its
    gradient), whatever the loss normalises by; the metrics TRL logs with it."""
    lr = 2.0
    module = make_module(tokenizer, init_adapter, entropy_coef=0.5, max_grad_norm=None, optimizer=partial(torch.optim.SGD, lr=lr))
    trainer, sampled = _sampled_fit(module, tokenizer, steps=1)
    got = trainable(module)
    right = _replica_steps(tokenizer, init_adapter, sampled[0], lr, [list(range(8))], entropy_coef=0.5)
    plain = _replica_steps(tokenizer, init_adapter, sampled[0], lr, [list(range(8))])
    error = max(float((got[n] - right[n]).abs().max()) for n in got)
    gap = max(float((right[n] - plain[n]).abs().max()) for n in got)
    assert error < 1e-5 and gap > 100 * error, (error, gap)
    metrics = trainer.callback_metrics
    assert float(metrics["train/entropy_coef"]) == 0.5
    assert float(metrics["train/loss"]) == pytest.approx(float(metrics["train/policy_loss"]) - 0.5 * float(metrics["train/entropy"]),
                                                         abs=1e-5)


@pytest.mark.parametrize(("target", "coefs"), [(100.0, [0.15, 0.2]), (0.0, [0.05, 0.05])])
def test_adaptive_entropy_control_steps_the_coefficient(tokenizer, init_adapter, target, coefs):
    """Skywork-OR1's control as TRL runs it: after each optimizer step the coefficient rises by delta while the step's
    entropy is at or below the target (a random model's ~10 nats are below 100), else falls to the floor (0.05); the
    first step applies none (no entropy measured yet: TRL's last entropy starts at infinity), so it equals a plain step."""
    lr = 2.0
    seen = []
    module = make_module(tokenizer, init_adapter, use_adaptive_entropy=True, entropy_coef=0.1, entropy_coef_delta=0.05,
                         entropy_coef_min=0.05, entropy_target=target, max_grad_norm=None, optimizer=partial(torch.optim.SGD, lr=lr))
    module.on_train_batch_end = lambda *args: seen.append(module.entropy_coef)
    trainer, sampled = _sampled_fit(module, tokenizer, steps=2)
    assert seen == pytest.approx(coefs)
    first = make_module(tokenizer, init_adapter, use_adaptive_entropy=True, entropy_coef=0.1, entropy_target=target, max_grad_norm=None,
                        optimizer=partial(torch.optim.SGD, lr=lr))
    _, one = _sampled_fit(first, tokenizer, steps=1)
    plain = _replica_steps(tokenizer, init_adapter, one[0], lr, [list(range(8))])
    assert max(float((trainable(first)[n] - plain[n]).abs().max()) for n in plain) < 1e-5
    # The controller's state travels with a checkpoint (the weights and RNG's part, AdapterModule's, left out here).
    from lightning_da.algorithms.adapter import AdapterModule

    state = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AdapterModule, "on_save_checkpoint", lambda self, checkpoint: None)
        patch.setattr(AdapterModule, "on_load_checkpoint", lambda self, checkpoint: None)
        module.on_save_checkpoint(state)
        fresh = make_module(tokenizer, init_adapter, use_adaptive_entropy=True, entropy_coef=0.1)
        fresh.on_load_checkpoint(state)
    assert (fresh.entropy_coef, fresh._last_world_entropy, fresh.num_tokens) == (
        module.entropy_coef, module._last_world_entropy, module.num_tokens)


def test_old_log_probs_in_training_mode_and_disable_dropout(tokenizer, init_adapter):
    """TRL computes the old log-probabilities in training mode (LoRA dropout active), the reference in eval mode;
    disable_dropout sets every dropout layer, LoRA's too, to p = 0."""
    module = make_module(tokenizer, init_adapter, num_iterations=2, beta=0.1)
    modes, in_reference = [], []
    original, reference = module.token_logps, module.reference_policy

    def spy(*args, **kwargs):
        if not torch.is_grad_enabled():
            modes.append(("reference" if in_reference else "old", module.model.training))
        return original(*args, **kwargs)

    @contextlib.contextmanager
    def marked():
        with reference():
            in_reference.append(True)
            yield
            in_reference.clear()

    module.token_logps, module.reference_policy = spy, marked
    fit(module, tokenizer, steps=2)
    assert set(modes) == {("old", True), ("reference", False)}
    for disable, p in ((False, 0.3), (True, 0.0)):
        fresh = make_module(tokenizer, None, lora={"r": 4, "alpha": 8, "dropout": 0.3}, disable_dropout=disable)
        fresh.configure_model()
        dropouts = [m.p for m in fresh.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts and set(dropouts) == {p}


def test_trls_completion_and_token_metrics(tokenizer, init_adapter, tmp_path):
    """completions/{mean,min,max}_length over every rollout, the terminated ones' (none ends within 6 tokens here:
    TRL's 0), num_tokens (prompt and completion tokens so far), step_time."""
    module = make_module(tokenizer, init_adapter, log_completions_steps=1, completions_file=str(tmp_path / "completions.jsonl"))
    metrics = fit(module, tokenizer, steps=2).callback_metrics
    for key in ("mean", "min", "max"):
        assert float(metrics[f"train/completions/{key}_length"]) == 6.0
        assert float(metrics[f"train/completions/{key}_terminated_length"]) == 0.0
    assert float(metrics["train/completions/clipped_ratio"]) == 1.0
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert float(metrics["train/num_tokens"]) == sum(len(prefix_ids(tokenizer, p)) + 6 for p in prompts) == module.num_tokens
    assert float(metrics["train/step_time"]) > 0


@pytest.mark.parametrize(("value", "name"), [(True, "group"), (False, "none"), ("batch", "batch")])
def test_scale_rewards_reads_trls_booleans(tokenizer, init_adapter, value, name):
    assert make_module(tokenizer, init_adapter, scale_rewards=value).scale_rewards == name
    with pytest.raises(UserError, match="use one of group, batch, none"):
        make_module(tokenizer, init_adapter, scale_rewards="groups")
