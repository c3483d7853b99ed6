"""GRPO's rollouts from a colocated vLLM engine (generation.backend=vllm) through the in-repo stand-in
(tests/stand_ins/vllm: vLLM's calls, checks and weight loading, sampling with Hugging Face on CPU), and
TRL's importance-sampling correction of the engine's log-probabilities."""

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from lightning_da.algorithms.grpo import check_settings
from lightning_da.errors import UserError
from lightning_da.formats import prefix_ids
from lightning_da.generation import SamplingConfig, VLLMSettings, sample_completions
from lightning_da.generation.colocated import PolicyEngine, policy_weights
from lightning_da.generation.vllm_engine import request_seed
from lightning_da.models import TinyRandomLlama
from lightning_da.models.lora import load_adapter, random_adapter
from tests.conftest import stand_in_cli
from tests.test_grpo import ROWS, fit, low_token_reward, make_module, trainable

GREEDY = SamplingConfig(do_sample=False, temperature=1.0, max_new_tokens=8)
TIED = TinyRandomLlama(seed=1, tie_word_embeddings=True)


def engine_factory(tmp_path, source=TIED, **settings):
    return partial(PolicyEngine, source, VLLMSettings(**settings), cache_dir=tmp_path / "cache", seed=0)


def tied_module(tokenizer, tmp_path, **overrides):
    """The paper's adapter (lm_head trained in full) on a student whose lm_head is tied to its embeddings."""
    adapter = random_adapter(tmp_path / "sft", TIED.load_model(), scale=0.05)
    module = make_module(tokenizer, adapter, **overrides)
    module.student = TIED
    return module


# -- the weights the engine gets ------------------------------------------------------------------


def test_policy_weights_are_peft_merged_weights_under_the_plain_names(tokenizer, tmp_path):
    """Independent of ours: peft's own merge_and_unload of the same adapter, the trained lm_head in place."""
    adapter = random_adapter(tmp_path / "a", TIED.load_model(), scale=0.05)
    policy = load_adapter(TIED.load_model(), adapter, trainable=True)
    ours = dict(policy_weights(policy))
    merged = load_adapter(TIED.load_model(), adapter).merge_and_unload()
    expected = dict(merged.named_parameters(remove_duplicate=False))
    expected["lm_head.weight"] = merged.lm_head.weight
    assert set(ours) == set(expected)
    assert max(float((ours[n] - expected[n]).abs().max()) for n in ours) < 1e-6
    assert not torch.equal(ours["lm_head.weight"], ours["model.embed_tokens.weight"])  # the trained head is its own


def test_the_engine_sleeps_between_rollouts_and_loads_only_a_new_policy(engine_log, tokenizer, tmp_path):
    policy = load_adapter(TIED.load_model(), random_adapter(tmp_path / "a", TIED.load_model()), trainable=True)
    prompts = [prefix_ids(tokenizer, r["prompt"]) for r in ROWS[:2]]
    for sleep_mode in (False, True):
        engine = PolicyEngine(TIED, VLLMSettings(sleep_mode=sleep_mode), policy=policy, cache_dir=tmp_path / "cache")
        for _ in range(2):  # the same policy version twice
            engine.sample(policy, 0, prompts, tokenizer, n=2, sampling=GREEDY, seed=0)
    events = [e["event"] + (f"{e.get('level', '')}{e.get('tags', '')}" if e["event"] in ("sleep", "wake_up") else "")
              for e in engine_log() if e["event"] != "request"]
    awake, asleep = events[: events.index("engine", 1)], events[events.index("engine", 1):]
    assert awake == ["engine", "load_weights", "reset_prefix_cache"]  # loaded once: the version did not change
    one_rollout = ["wake_up['weights']", "load_weights", "reset_prefix_cache", "wake_up['kv_cache']", "sleep2"]
    assert asleep == ["engine", "sleep2", *one_rollout, *one_rollout]  # level 2 frees the weights: loaded each time
    engines = [e for e in engine_log() if e["event"] == "engine"]
    assert all(e["logprobs_mode"] == "processed_logprobs" and e["backend"] == "external_launcher" for e in engines)
    assert all("untied" in e["model"] for e in engines)  # the tied student's engine can hold a trained lm_head


@pytest.mark.parametrize("sleep_mode", [True, False])
def test_after_an_optimizer_step_rollouts_come_from_the_updated_policy(engine_log, tokenizer, tmp_path, sleep_mode):
    """The check peers failed (rollouts kept coming from the base model): after a real optimizer step, the
    engine's greedy rollouts equal Hugging Face's from the updated policy token for token, and differ from
    the policy's before the step. Asleep between rollouts the engine reloads every time; awake, when the
    policy's version (its optimizer steps) moved on."""
    module = tied_module(tokenizer, tmp_path, lr=5e-2, rollout_engine=engine_factory(tmp_path, sleep_mode=sleep_mode),
                         num_generations=2)
    rows = ROWS[:4]
    prompts = [r["prompt"] for r in rows]
    module.configure_model()
    module.model.eval()
    before = sample_completions(module.model, tokenizer, prompts, n=1, sampling=GREEDY, progress=False)
    weights = trainable(module)
    fit(module, tokenizer, steps=1)
    assert module.global_step == 1
    assert any(not torch.equal(weights[n], p) for n, p in trainable(module).items() if "lm_head" in n)

    module.sampling = GREEDY
    engine = module.rollouts(rows, seed=0)
    module.model.eval()
    hf = sample_completions(module.model, tokenizer, prompts, n=2, sampling=GREEDY, progress=False)
    assert engine.completion_ids == [c.ids for row in hf for c in row]
    assert [row[0].ids for row in before] != engine.completion_ids[::2]
    loads = [e for e in engine_log() if e["event"] == "load_weights"]
    assert "lm_head.weight" in loads[-1]["names"] and len(loads[-1]["names"]) == len(dict(policy_weights(module.model)))


# -- training on the engine's rollouts ----------------------------------------------------------------


def test_training_on_engine_rollouts_logs_trls_sampling_metrics_and_seeds_each_request(engine_log, tokenizer, tmp_path):
    module = make_module(tokenizer, random_adapter(tmp_path / "a", TinyRandomLlama(seed=1).load_model(), scale=0.05),
                         rollout_engine=engine_factory(tmp_path, TinyRandomLlama(seed=1)), loss_type="dapo")
    trainer = fit(module, tokenizer, steps=2)
    metrics = trainer.callback_metrics
    for key in ("sampling_logp_difference/mean", "sampling_logp_difference/max", "importance_sampling_ratio/min",
                "importance_sampling_ratio/mean", "importance_sampling_ratio/max"):
        assert f"train/sampling/{key}" in metrics, sorted(metrics)
    # The stand-in samples the same float32 weights: the gap is rounding, every sequence kept.
    assert float(metrics["train/sampling/sampling_logp_difference/max"]) < 1e-4
    assert abs(float(metrics["train/sampling/importance_sampling_ratio/mean"]) - 1) < 1e-3
    requests = [e for e in engine_log() if e["event"] == "request"]
    step_seeds = [module.seed + 10_000 * step for step in (0, 1)]  # one rank; the seed per (seed, step, rank, round)
    assert [r["seed"] for r in requests] == [request_seed(s, i, 4) for s in step_seeds for i in range(2)]
    assert {r["n"] for r in requests} == {4} and {r["logprobs"] for r in requests} == {0}


@pytest.mark.parametrize(("backend", "dropout"), [("hf", 0.0), ("vllm", 0.0), ("vllm", 0.3)])
def test_a_resumed_run_on_either_backend_equals_an_uninterrupted_one(request, tokenizer, tmp_path, backend, dropout):
    """The engine gets the resumed policy's weights before its first rollout, and the same request seeds. With LoRA
    dropout the training's masks come from the global generator, which building an engine in this process reseeds
    (vLLM's and the stand-in's set_random_seed): restored after the build, the resumed run draws the same masks."""
    import contextlib

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_da.data.rl import RLPromptDataModule

    if backend == "vllm":
        request.getfixturevalue("engine_log")
    adapter = random_adapter(tmp_path / "a", TinyRandomLlama(seed=1).load_model(), scale=0.05)
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    (Path(adapter) / "adapter_config.json").write_text(json.dumps({**config, "lora_dropout": dropout}))

    class Crash(Exception):
        pass

    class CrashAt(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 2:
                raise Crash

    def run(directory, ckpt_path=None, crash=False):
        L.seed_everything(0)  # as train.py: each run's dropout masks from the same start
        engine = engine_factory(tmp_path, TinyRandomLlama(seed=1)) if backend == "vllm" else None
        module = make_module(tokenizer, adapter, lr=1e-2, rollout_engine=engine)
        callbacks = [ModelCheckpoint(dirpath=directory, save_last=True, every_n_train_steps=1), *([CrashAt()] if crash else [])]
        trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, callbacks=callbacks, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, max_epochs=2)
        with contextlib.suppress(Crash):
            trainer.fit(module, datamodule=RLPromptDataModule(ROWS, tokenizer, prompts_per_step=2), ckpt_path=ckpt_path,
                        weights_only=True)
        return trainable(module)

    whole = run(tmp_path / "whole")
    run(tmp_path / "first", crash=True)
    resumed = run(tmp_path / "second", ckpt_path=tmp_path / "first" / "last.ckpt")
    assert max(float((whole[n] - resumed[n]).abs().max()) for n in whole) < 1e-6


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ({"vllm_importance_sampling_mode": "token"}, "vllm_importance_sampling_mode=token; use one of token_truncate, token_mask"),
    ({"vllm_importance_sampling_clip_max": 0.0}, "clip_min=None, _clip_max=0.0: set 0 <= min < max"),
    ({"vllm_importance_sampling_clip_min": 2.0, "vllm_importance_sampling_clip_max": 1.5}, "set 0 <= min < max"),
    ({"vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": None}, "truncates to a bound"),
])
def test_bad_correction_settings_are_one_line(setting, message):
    base = {"rewards": {"r": {"fn": low_token_reward}}, "lora": {"r": 8}, "sampling": GREEDY}
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_settings({**base, **setting})


def test_vespo_with_a_sequence_correction_is_refused(tokenizer, tmp_path):
    with pytest.raises(UserError, match="loss_type=vespo weighs whole sequences itself; with vLLM set"):
        make_module(tokenizer, None, lora={"r": 8}, loss_type="vespo", rollout_engine=engine_factory(tmp_path))


def test_a_missing_vllm_is_one_line_before_the_policy_loads(compose_train, monkeypatch):
    from lightning_da.runs.train import rollout_engine

    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = compose_train("algorithm=grpo", "student=tiny_random", "generation.backend=vllm")
    with pytest.raises(UserError, match="generation.backend=vllm needs vLLM"):
        rollout_engine(cfg, TinyRandomLlama())


def test_the_colocated_engine_is_sized_as_trls(engine_log, compose_train, tokenizer, tmp_path):
    """max_num_seqs: the rollouts of a generation on the engine's tensor-parallel group (train.py: prompts_per_step x
    num_generations per rank); max_num_batched_tokens 4096 (TRL's: vLLM's profiler is misled by its default); either
    set by generation.vllm.*."""
    from lightning_da.runs.train import per_rank_batch, rollout_engine

    cfg = compose_train("algorithm=grpo", "student=tiny_random", "generation.backend=vllm")
    per_rank_batch(cfg)  # as run_train: the global batch as each rank's prompts per step
    assert rollout_engine(cfg, TinyRandomLlama()).keywords["rollouts"] == 32 * 8
    policy = load_adapter(TIED.load_model(), random_adapter(tmp_path / "a", TIED.load_model()), trainable=True)
    for settings, want in (({}, (24, 4096)), ({"max_num_seqs": 3, "max_num_batched_tokens": 2048}, (3, 2048))):
        PolicyEngine(TIED, VLLMSettings(**settings), policy=policy, cache_dir=tmp_path / "cache", rollouts=24)
        engine = [e for e in engine_log() if e["event"] == "engine"][-1]
        assert (engine["max_num_seqs"], engine["max_num_batched_tokens"]) == want
    with pytest.raises(UserError, match="generation.vllm.max_num_seqs"):
        VLLMSettings(max_num_seqs=0)


def test_a_tensor_parallel_group_meets_at_a_barrier_before_it_generates(engine_log, tokenizer, tmp_path, monkeypatch):
    """TRL's fix of its issue 3671 (PEFT and tensor parallelism hanging in generate): every rank of a group waits at a
    barrier on the default group before the engine's collectives; an engine of its own does not."""
    policy = load_adapter(TIED.load_model(), random_adapter(tmp_path / "a", TIED.load_model()), trainable=True)
    engine = PolicyEngine(TIED, VLLMSettings(sleep_mode=False), policy=policy, cache_dir=tmp_path / "cache")
    events = []
    monkeypatch.setattr(torch.distributed, "barrier", lambda **kwargs: events.append(("barrier", kwargs)))
    monkeypatch.setattr(engine.generator, "generate_ids", lambda *args, **kwargs: events.append(("generate", {})) or [])
    for group in (None, object()):
        engine.generator.tp_group = group
        engine.sample(policy, 0, [[1, 2]], tokenizer, n=1, sampling=GREEDY, seed=0)
    assert events == [("generate", {}), ("barrier", {}), ("generate", {})]  # no device_ids without CUDA


def test_an_fsdp_shard_offloaded_to_the_cpu_goes_to_the_gpu_before_its_gather(monkeypatch):
    """NCCL cannot gather CPU tensors: under FSDP's cpu_offload each shard moves to this rank's GPU first (TRL's
    `param.to(device)` before `full_tensor()`); a shard already on the GPU, or a run without one, gathers as it is."""
    from lightning_da.generation.colocated import _full

    calls = []

    class Shard:
        def __init__(self, where):
            self.is_cpu, self.where = where == "cpu", where

        def to(self, device):
            calls.append(("to", device))
            return Shard(f"cuda:{device}")

        def full_tensor(self):
            calls.append(("gather", self.where))
            return self.where

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert _full(Shard("cpu")) == "cuda:1" and calls == [("to", 1), ("gather", "cuda:1")]
    calls.clear()
    assert _full(Shard("cuda:1")) == "cuda:1" and calls == [("gather", "cuda:1")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls.clear()
    assert _full(Shard("cpu")) == "cpu" and calls == [("gather", "cpu")]  # gloo gathers CPU tensors


class OffsetEngine(PolicyEngine):
    """An engine whose log-probabilities sit `offset` below the trainer's on every token (a large mismatch)."""

    offset = 2.0

    def sample(self, *args, **kwargs):
        rows = super().sample(*args, **kwargs)
        for c in (c for row in rows for c in row):
            c.logprobs = [lp - self.offset for lp in c.logprobs]
        return rows


def test_a_sequence_far_off_the_engines_distribution_is_masked_out_of_the_step(engine_log, tokenizer, tmp_path):
    """sequence_mask (TRL's default): exp(2 x tokens) > 3 on every rollout, so every sequence weighs 0, the step
    has no gradient, and the policy stays; the metrics say why. Without the correction the same step moves it."""
    source = TinyRandomLlama(seed=1)
    adapter = random_adapter(tmp_path / "a", source.load_model(), scale=0.05)
    factory = partial(OffsetEngine, source, VLLMSettings(), cache_dir=tmp_path / "cache", seed=0)
    moved = {}
    for correction in (True, False):
        module = make_module(tokenizer, adapter, loss_type="dapo", rollout_engine=factory,
                             vllm_importance_sampling_correction=correction)
        module.configure_model()
        before = trainable(module)
        trainer = fit(module, tokenizer, steps=1)
        moved[correction] = max(float((before[n] - p).abs().max()) for n, p in trainable(module).items())
    assert moved[True] == 0.0 and moved[False] > 1e-4
    metrics = trainer.callback_metrics  # of the uncorrected run: no correction, no sampling metrics
    assert "train/sampling/importance_sampling_ratio/max" not in metrics


def test_off_policy_masking_compares_with_the_engines_log_probs(engine_log, tokenizer, tmp_path):
    """TRL's off-policy mask reads the engine's log-probabilities where there are any (with the correction off too):
    an engine 2 nats above the trainer on every token puts every rollout's mean KL at 2, above the threshold, so every
    rollout with A < 0 is dropped and the step differs from the unmasked one."""
    source = TinyRandomLlama(seed=1)
    adapter = random_adapter(tmp_path / "a", source.load_model(), scale=0.05)
    seen, moved = [], {}
    for threshold in (None, 0.5):
        factory = partial(type("Above", (OffsetEngine,), {"offset": -2.0}), source, VLLMSettings(), cache_dir=tmp_path / "cache", seed=0)
        module = make_module(tokenizer, adapter, rollout_engine=factory, vllm_importance_sampling_correction=False,
                             off_policy_mask_threshold=threshold)
        class Spy:
            def __init__(self, loss):
                self.loss = loss

            def __getattr__(self, name):
                return getattr(self.loss, name)

            def __call__(self, logp, old, *args, **kwargs):
                seen.append((kwargs["sampling_logp"] - logp.detach())[kwargs["sampling_logp"] != 0])
                return self.loss(logp, old, *args, **kwargs)

        module.loss = Spy(module.loss)
        module.configure_model()
        before = trainable(module)
        fit(module, tokenizer, steps=1)
        moved[threshold] = trainable(module)
        assert any(not torch.equal(before[n], p) for n, p in moved[threshold].items())
    assert all(torch.allclose(gap, torch.full_like(gap, 2.0), atol=1e-4) for gap in seen)
    assert any(not torch.equal(moved[None][n], moved[0.5][n]) for n in moved[None])


def loads_by_rank(events) -> dict[str, list[str]]:
    """Each rank's loads, as digests of the bytes its engine holds after each."""
    digests = {}
    for e in events:
        if e["event"] == "load_weights":
            digests.setdefault(e["rank"], []).append(e["digest"])
    return digests


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_every_rank_has_its_own_engine_with_the_same_weights(tmp_path, trainer):
    """2 gloo ranks through the real CLI: each rank's engine under vLLM's external launcher on its LOCAL_RANK;
    every load gives both engines the same weights (under FSDP gathered from the shards); with
    tensor_parallel_size=2 (ddp) the two ranks share one engine, both sending the group's prompts."""
    from tests.test_fsdp import GRPO

    tp = 2 if trainer == "ddp" else 1
    # TRL computes the old log-probabilities in training mode, where LoRA's dropout (0.05) moves them off the engine's;
    # disable_dropout keeps the ratio a check of the weights alone.
    events = stand_in_cli("train.py", tmp_path / "run", *GRPO, f"trainer={trainer}", "generation.backend=vllm",
                          f"generation.vllm.tensor_parallel_size={tp}", "algorithm.module.disable_dropout=true")
    engines = sorted((e for e in events if e["event"] == "engine"), key=lambda e: e["rank"])
    assert [(e["rank"], e["local_rank"], e["backend"], e["seed"]) for e in engines] == [
        (0, 0, "external_launcher", 0), (1, 1, "external_launcher", 1 // tp)]
    digests = loads_by_rank(events)
    assert len(digests["0"]) == 3 and digests["0"] == digests["1"]  # sleep mode: a full load each of 3 steps, bit for bit
    assert len(set(digests["0"])) == 3  # each step's policy differs from the last
    requests = [e for e in events if e["event"] == "request"]
    if tp == 2:  # each request twice: once from each rank of the group, the same prompts and seeds
        assert len(requests) == 2 * 2 * 2 * 3 and len({json.dumps({**r, "rank": None}, sort_keys=True) for r in requests}) == len(requests) // 2
    else:
        assert len(requests) == 2 * 2 * 3 and len({r["seed"] for r in requests}) == len(requests)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/sampling/importance_sampling_ratio/min"] > 0.99
