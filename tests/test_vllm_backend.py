"""generation.backend=vllm against the in-repo stand-in (tests/stand_ins/vllm: vLLM's call signature
and behaviour, sampling with Hugging Face on CPU). The real vLLM is not exercised here (README)."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from lightning_da.errors import UserError
from lightning_da.formats import prefix_ids
from lightning_da.generation import SamplingConfig, VLLMGenerator, VLLMSettings, sample_completions
from lightning_da.models import TinyRandomLlama
from lightning_da.models.lora import load_adapter, random_adapter
from lightning_da.runs.evaluate import run_evaluate
from lightning_da.runs.train import run_train
from tests.conftest import CONF
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I bake bread?", "Write a haiku about rain.", "What is 2 + 2?"]
GREEDY = SamplingConfig(do_sample=False, max_new_tokens=8)
TIED = TinyRandomLlama(seed=1, tie_word_embeddings=True)


def ids(completions):
    return [[(c.ids, c.truncated) for c in row] for row in completions]


@pytest.mark.parametrize(("modules_to_save", "how"), [(("lm_head",), "merge"), (None, "request")])
def test_candidates_equal_hf_with_the_adapter(engine_log, tiny_source, tokenizer, tmp_path, modules_to_save, how):
    """The paper's adapter (lm_head trained in full) is merged, a plain LoRA one goes as a LoRA
    request; either way greedy candidates are the `hf` backend's, token for token."""
    adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model(), modules_to_save=modules_to_save)
    generator = VLLMGenerator(tiny_source, VLLMSettings(), adapter=adapter, cache_dir=tmp_path / "cache")
    ours = generator.sample_completions(tokenizer, PROMPTS, n=2, sampling=GREEDY, seed=3, progress=False)
    model = load_adapter(tiny_source.load_model(), adapter)
    hf = sample_completions(model, tokenizer, PROMPTS, n=2, sampling=GREEDY, batch_size=1, progress=False)
    assert ids(ours) == ids(hf)

    engine, *requests = engine_log()
    assert engine["enable_lora"] == (how == "request")
    assert (Path(engine["model"]).parent.name == "merged") == (how == "merge")
    assert [r["lora_path"] for r in requests] == [adapter if how == "request" else None] * len(PROMPTS)
    assert [r["prompt_token_ids"] for r in requests] == [prefix_ids(tokenizer, p) for p in PROMPTS]


def test_settings_reach_the_engine_and_no_two_samples_share_a_seed(engine_log, tiny_source, tokenizer, tmp_path):
    settings = VLLMSettings(tensor_parallel_size=2, gpu_memory_utilization=0.3, max_model_len=512)
    generator = VLLMGenerator(tiny_source, settings, cache_dir=tmp_path / "cache")
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, top_k=None, max_new_tokens=6)
    whole = generator.sample_completions(tokenizer, PROMPTS, n=3, sampling=sampling, seed=10, progress=False)
    rest = generator.sample_completions(tokenizer, PROMPTS[1:], n=3, sampling=sampling, seed=11, progress=False)
    assert ids(rest) == ids(whole)[1:]  # what a prompt samples does not depend on the others in the call

    engine, *requests = engine_log()
    assert {k: engine[k] for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "backend")} == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.3, "max_model_len": 512, "backend": None}
    # vLLM seeds a request's sample j `seed + j`: prompt i's request goes as (seed + i) n, so the nine
    # samples of the first call have nine streams (with seed + i, prompt 1's sample 0 would be prompt 0's sample 1).
    assert [r["seed"] for r in requests] == [30, 33, 36, 33, 36]
    streams = [r["seed"] + j for r in requests[:3] for j in range(r["n"])]
    assert len(set(streams)) == 9
    assert {(r["n"], r["temperature"], r["top_p"], r["top_k"], r["max_tokens"]) for r in requests} == {(3, 0.9, 0.95, -1, 6)}
    assert tokenizer.eos_token_id in requests[0]["stop_token_ids"]
    assert all(len(row) == 3 for row in whole)
    assert len({tuple(c.ids) for c in whole[0]}) > 1  # three streams, not one copied


def test_greedy_sends_one_sample_a_request_and_copies_it(engine_log, tiny_source, tokenizer, tmp_path):
    """vLLM refuses n > 1 with greedy sampling ("n must be 1 when using greedy sampling"), as the stand-in does."""
    import vllm

    with pytest.raises(ValueError, match="n must be 1 when using greedy sampling"):
        vllm.SamplingParams(n=2, temperature=0.0)
    generator = VLLMGenerator(tiny_source, VLLMSettings(), cache_dir=tmp_path / "cache")
    out = generator.sample_completions(tokenizer, PROMPTS, n=3, sampling=GREEDY, seed=0, progress=False)
    assert [len(row) for row in out] == [3, 3, 3] and all(c.ids == row[0].ids for row in out for c in row)
    assert {r["n"] for r in engine_log() if r["event"] == "request"} == {1}


def test_the_stand_in_refuses_what_vllm_refuses(engine_log, tiny_source, tokenizer, tmp_path):
    import vllm

    with pytest.raises(TypeError, match="unexpected keyword argument 'max_num_tokens'"):
        vllm.LLM(str(tiny_source.local_dir()), max_num_tokens=8)
    for bad, message in (({"temperature": 2.5}, "temperature must be in"), ({"top_p": 0.0}, "top_p must be in"),
                         ({"top_k": -2}, "top_k must be"), ({"max_tokens": 0}, "max_tokens must be")):
        with pytest.raises(ValueError, match=message):
            vllm.SamplingParams(**bad)
    generator = VLLMGenerator(tiny_source, VLLMSettings(max_model_len=8), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="longer than the maximum model length of 8"):
        generator.sample_completions(tokenizer, PROMPTS[:1], n=1, sampling=GREEDY, progress=False)
    hot = SamplingConfig(temperature=2.5, max_new_tokens=4)
    with pytest.raises(UserError, match="sampling temperature 2.5: vLLM samples at temperatures up to 2.0"):
        generator.sample_completions(tokenizer, PROMPTS[:1], n=1, sampling=hot, progress=False)


def test_max_model_len_defaults_to_what_fits(engine_log, tiny_source, tmp_path):
    """-1 (the default): vLLM's own choice, the model's context as far as memory allows."""
    VLLMGenerator(tiny_source, VLLMSettings(), cache_dir=tmp_path / "cache")
    assert engine_log()[0]["max_model_len"] == -1


def test_teacher_chats_are_decoded_as_the_hf_backend_does(engine_log, tiny_source, tokenizer, tmp_path):
    from lightning_da.generation import sample_chats

    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    generator = VLLMGenerator(tiny_source, VLLMSettings(), cache_dir=tmp_path / "cache")
    ours = generator.sample_chats(tokenizer, chats, GREEDY, seed=0)
    assert ours == sample_chats(tiny_source.load_model(), tokenizer, chats, GREEDY)


@pytest.mark.parametrize(("setting", "message"), [
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5: set a fraction in (0, 1]"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size=0: set it to an integer of at least 1"),
    ({"lora": "fuse"}, "generation.vllm.lora=fuse: use one of auto, request, merge"),
    ({"max_lora_rank": 48}, "generation.vllm.max_lora_rank=48: vLLM takes one of 1, 8, 16, 32, 64, 128, 256, 320, 512"),
    ({"max_model_len": 0}, "generation.vllm.max_model_len=0: set the longest sequence in tokens, or -1"),
    ({"max_model_len": None}, "generation.vllm.max_model_len=None: set the longest sequence in tokens, or -1"),
])
def test_bad_engine_settings_name_the_key(setting, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        VLLMSettings(**setting)


def test_evaluate_and_teacher_traces_on_the_vllm_backend(engine_log, compose_train, tmp_path, tiny_source):
    """evaluate.py's and train.py's runs with generation.backend=vllm, the stand-in importable as vLLM."""
    adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            "student=tiny_random", f"adapter={adapter}", "attribution.layer=1", "n_candidates=2", "max_new_tokens=4",
            "benchmark.limit=3", "logger=csv", "trainer.accelerator=cpu", "generation.backend=vllm",
            "generation.vllm.gpu_memory_utilization=0.4", f"paths.cache_dir={tmp_path / 'cache'}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "evaluate")
    run_evaluate(cfg)
    records = [json.loads(line) for line in (tmp_path / "evaluate" / "candidates.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["candidates"]) == 2 for r in records)
    metrics = run_train(compose_train(*TINY, "trainer.max_epochs=1", "logger=csv", "generation.backend=vllm"))
    events = engine_log()
    engines = [e for e in events if e["event"] == "engine"]
    assert len(engines) == 2 and engines[0]["gpu_memory_utilization"] == 0.4
    assert sum(e["event"] == "request" for e in events) == 3 + 8  # 3 benchmark prompts, 8 teacher prompts
    assert metrics["data/traces_kept"] == 8


@pytest.mark.slow
def test_merged_student_keeps_a_trained_lm_head_apart_from_tied_embeddings(tmp_path):
    """SmolLM2 ties lm_head to the input embeddings; the adapter's lm_head copy must survive the merge."""
    import torch
    from transformers import AutoModelForCausalLM

    from lightning_da.generation.vllm_engine import merged_student
    from lightning_da.models import EmbeddedSmolLM2

    source = EmbeddedSmolLM2()
    adapter = random_adapter(tmp_path / "adapter", source.load_model(), scale=0.02)
    merged = AutoModelForCausalLM.from_pretrained(merged_student(source, adapter, tmp_path / "cache"))
    peft_model = load_adapter(source.load_model(), adapter)
    inputs = torch.tensor([prefix_ids(source.load_tokenizer(), PROMPTS[0])])
    with torch.no_grad():
        expected, got = peft_model(input_ids=inputs).logits, merged(input_ids=inputs).logits
    assert float((expected - got).abs().max()) < 1e-3 * float(expected.abs().max())
    assert not torch.equal(merged.lm_head.weight, merged.model.embed_tokens.weight)


def test_an_adapter_rank_above_max_lora_rank_names_the_setting(engine_log, tiny_source, tmp_path):
    adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model(), r=16, modules_to_save=None)
    with pytest.raises(UserError, match="rank 16 exceeds generation.vllm.max_lora_rank=8; raise it"):
        VLLMGenerator(tiny_source, VLLMSettings(max_lora_rank=8), adapter=adapter, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(("change", "reason"), [({"use_dora": True}, "DoRA"), ({"bias": "all"}, "a LoRA bias"),
                                                ({"init_lora_weights": "pissa"}, "init_lora_weights=pissa")])
def test_an_adapter_vllm_cannot_load_is_merged_or_named(engine_log, tiny_source, tmp_path, change, reason):
    """vLLM refuses DoRA, a bias and base-modifying inits as LoRA requests: `auto` merges such an adapter (the
    stand-in would refuse the request), `request` names why before the engine starts."""
    adapter = Path(random_adapter(tmp_path / "adapter", tiny_source.load_model(), modules_to_save=None))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=f"vLLM cannot load .* as LoRA \\({reason}\\); set generation.vllm.lora=auto"):
        VLLMGenerator(tiny_source, VLLMSettings(lora="request"), adapter=adapter, cache_dir=tmp_path / "cache")
    from lightning_da.generation.vllm_engine import _adapter_mode

    assert _adapter_mode(adapter, VLLMSettings()) == "merge"


@pytest.mark.slow
def test_evaluate_under_ddp_each_rank_has_its_engine_and_equals_one_process(tmp_path, tiny_source):
    """trainer=ddp on 2 gloo ranks: each rank's engine under vLLM's external launcher on its own LOCAL_RANK (not
    all on the first GPU), each sampling its whole batches; the candidates are one process's, prompt for prompt."""
    from tests.conftest import stand_in_cli

    adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model())
    common = ["student=tiny_random", f"adapter={adapter}", "attribution.layer=1", "n_candidates=3", "max_new_tokens=6",
              "benchmark.limit=7", "batch_size=2", "logger=csv", "trainer.accelerator=cpu", "generation.backend=vllm"]
    alone = stand_in_cli("evaluate.py", tmp_path / "one", *common)
    ranks = stand_in_cli("evaluate.py", tmp_path / "ddp", *common, "trainer=ddp", "trainer.devices=2")
    assert [(e["backend"], e.get("local_rank")) for e in alone if e["event"] == "engine"] == [(None, None)]
    engines = sorted((e for e in ranks if e["event"] == "engine"), key=lambda e: e["rank"])
    assert [(e["rank"], e["local_rank"], e["backend"]) for e in engines] == [(0, 0, "external_launcher"), (1, 1, "external_launcher")]
    candidates = [[json.loads(line)["candidates"] for line in (tmp_path / run / "candidates.jsonl").read_text().splitlines()]
                  for run in ("one", "ddp")]
    assert candidates[0] == candidates[1] and len(candidates[0]) == 7


@pytest.mark.parametrize(("given", "want_port"), [({"MASTER_PORT": "29555"}, "29555"), ({}, None)])
def test_an_engine_in_this_process_finds_a_rendezvous_address(monkeypatch, given, want_port):
    """A port given alone (some launchers set only MASTER_PORT) gets this machine's address beside it, the port kept;
    nothing given: this machine and a free port (vLLM's external launcher rendezvouses through both)."""
    import os

    from lightning_da.generation.vllm_engine import placement

    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", "")  # restored afterwards: placement writes the rank's variables
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "")
    group, engine = placement(1, launcher=True)
    assert group is None and engine == {"distributed_executor_backend": "external_launcher", "seed": 0}
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and (want_port is None or os.environ["MASTER_PORT"] == want_port)
    assert int(os.environ["MASTER_PORT"]) > 0
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("MASTER_PORT")


def test_the_stand_in_is_as_strict_as_vllm_on_every_call_we_make(engine_log, tiny_source, tokenizer, tmp_path):
    """vLLM's literals for the engine's logprobs_mode, dtype and executor backend; SamplingParams' integer top_k and
    stop_token_ids, repetition_penalty > 0, min_p in [0, 1], no unknown keyword; an empty prompt; a weight whose shape
    is not its parameter's; loading while the weights sleep."""
    import vllm

    model = str(tiny_source.local_dir())
    for bad, message in (({"logprobs_mode": "processed"}, "Invalid logprobs_mode"), ({"dtype": "fp16"}, "Invalid dtype"),
                         ({"distributed_executor_backend": "threads"}, "Invalid distributed_executor_backend")):
        with pytest.raises(ValueError, match=message):
            vllm.LLM(model, **bad)
    for bad, error, message in (({"top_k": 5.0}, TypeError, "top_k must be an integer"),
                                ({"stop_token_ids": [2.0]}, TypeError, "stop_token_ids must be a list of integers"),
                                ({"repetition_penalty": 0.0}, ValueError, "repetition_penalty must be greater than zero"),
                                ({"min_p": 1.5}, ValueError, "min_p must be in"),
                                ({"suppress_tokens": [1]}, TypeError, "unexpected keyword argument")):
        with pytest.raises(error, match=message):
            vllm.SamplingParams(**bad)
    generator = VLLMGenerator(tiny_source, VLLMSettings(), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="The decoder prompt cannot be empty"):
        generator.generate_ids([[]], tokenizer, n=1, sampling=GREEDY, seed=0, progress=False)


def test_the_stand_in_refuses_bad_weight_loads_and_reseeds_like_vllm(engine_log, tiny_source, tokenizer, tmp_path):
    import random

    import numpy as np
    import torch

    from lightning_da.generation.colocated import PolicyEngine

    policy = load_adapter(tiny_source.load_model(), random_adapter(tmp_path / "a", tiny_source.load_model()), trainable=True)
    engine = PolicyEngine(tiny_source, VLLMSettings(sleep_mode=True), policy=policy, cache_dir=tmp_path / "cache", seed=7)
    loader = engine.llm.llm_engine.model_executor.driver_worker.model_runner.model
    with pytest.raises(RuntimeError, match=r"wake_up\(tags=\['weights'\]\) first"):
        engine.load(policy)  # asleep at level 2 after the build, as GRPO's engine starts
    engine.llm.wake_up(tags=["weights"])
    name, weight = next(iter(engine.llm.model.named_parameters()))
    with pytest.raises(AssertionError, match="Attempted to load weight"):
        loader.load_weights([(name, weight.detach()[:1])])
    engine.load(policy)  # awake: the whole policy loads
    tied = PolicyEngine(TIED, VLLMSettings(sleep_mode=False), policy=load_adapter(TIED.load_model(), random_adapter(
        tmp_path / "t", TIED.load_model(), modules_to_save=None), trainable=True), cache_dir=tmp_path / "cache")
    tied_loader = tied.llm.llm_engine.model_executor.driver_worker.model_runner.model
    embeddings = tied.llm.model.get_input_embeddings().weight.detach().clone()
    with pytest.raises(ValueError, match="tied to the input embeddings"):
        tied_loader.load_weights([("lm_head.weight", embeddings)])
    assert tied_loader.load_weights([("model.embed_tokens.weight", embeddings), ("lm_head.weight", embeddings)]) == {
        "model.embed_tokens.weight"}  # after the embeddings it aliases, skipped
    # Built in this process, the engine seeds the global generators with its seed, as vLLM's worker does ...
    import vllm

    vllm.LLM(str(tiny_source.local_dir()), distributed_executor_backend="external_launcher", seed=7)
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert drawn == (random.random(), float(np.random.rand()), float(torch.rand(())))
    # ... and sampling leaves them alone (vLLM's per-request generators).
    state = torch.get_rng_state()
    engine.llm.wake_up(tags=["kv_cache"])
    engine.generator.generate_ids([prefix_ids(tokenizer, "Hi")], tokenizer, n=2, sampling=SamplingConfig(max_new_tokens=4),
                                  seed=3, progress=False)
    assert torch.equal(state, torch.get_rng_state())


def test_trls_sampling_options_reach_both_backends(engine_log, tiny_source, tokenizer, tmp_path):
    """repetition_penalty, min_p and generation_kwargs (winning over the others, as TRL's) in Hugging Face's generate
    arguments and vLLM's SamplingParams; greedy under a penalty, both backends give the same tokens."""
    options = SamplingConfig(temperature=0.9, max_new_tokens=6, repetition_penalty=1.3, min_p=0.1, generation_kwargs={"top_k": 7})
    kwargs = options.generate_kwargs()
    assert (kwargs["repetition_penalty"], kwargs["min_p"], kwargs["top_k"]) == (1.3, 0.1, 7)
    generator = VLLMGenerator(tiny_source, VLLMSettings(), cache_dir=tmp_path / "cache")
    generator.generate_ids([prefix_ids(tokenizer, PROMPTS[0])], tokenizer, n=2, sampling=options, seed=0, progress=False)
    (request,) = [r for r in engine_log() if r["event"] == "request"]
    assert (request["repetition_penalty"], request["min_p"], request["top_k"]) == (1.3, 0.1, 7)
    penalised = SamplingConfig(do_sample=False, max_new_tokens=12, repetition_penalty=3.0)
    model = tiny_source.load_model()
    hf = sample_completions(model, tokenizer, PROMPTS, n=1, sampling=penalised, batch_size=1, progress=False)
    assert ids(generator.sample_completions(tokenizer, PROMPTS, n=1, sampling=penalised, progress=False)) == ids(hf)
    assert SamplingConfig().as_dict() == {k: v for k, v in SamplingConfig(repetition_penalty=1.0).as_dict().items()}
    assert "min_p" not in SamplingConfig().as_dict() and SamplingConfig(min_p=0.1).as_dict()["min_p"] == 0.1  # old keys hold
    for bad, message in (({"repetition_penalty": 0.0}, "repetition_penalty=0.0: set it above 0"),
                         ({"min_p": 2.0}, "min_p=2.0: set it from 0 to 1"), ({"generation_kwargs": [1]}, "give a mapping")):
        with pytest.raises(UserError, match=message):
            SamplingConfig(**bad)
