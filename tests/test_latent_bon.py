"""The cheap path of latent Best-of-N against the full scoring pass and against plain forwards."""

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from lightning_da import LatentBestOfN
from lightning_da.attribution import score_candidates
from lightning_da.attribution.latent import final_states, latent_cosines
from lightning_da.attribution.selectors import LatentSimilarity
from lightning_da.best_of_n import best_of_n_block
from lightning_da.configs import CONF_DIR as CONF  # noqa: E402
from lightning_da.errors import UserError, run_or_exit
from lightning_da.formats import prefix_ids
from lightning_da.generation import SamplingConfig, flatten_candidates, sample_completions
from lightning_da.models.hidden_states import run_until
from lightning_da.models.lora import load_adapter, random_adapter
from lightning_da.runs.generate import run_generate
from lightning_da.tasks import TASKS
from tests.test_scoring import moved

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I pick a lock?", "Hi", "Write a long story about a dragon, please, with many details."]
# Measured: at most 1.5e-7 on the tiny model, 2.4e-7 on SmolLM2 (every layer), 3e-7 in benchmarks/latent_bon_overhead.py.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_source):
    return random_adapter(tmp_path_factory.mktemp("latent") / "adapter", tiny_source.load_model())


@pytest.fixture(scope="module")
def student(tiny_source, adapter_dir):
    """The tiny student with an adapter, where a fifth of the vocabulary ends a response: candidates of
    every length, EOS at once (an empty response), mid-way, and cut by max_new_tokens."""
    model = load_adapter(tiny_source.load_model(), adapter_dir).eval()
    model.generation_config.eos_token_id = [2, *range(1000, 11000)]
    return model


SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=10)


def sampled(student, tokenizer, **kwargs):
    completions = sample_completions(student, tokenizer, PROMPTS, n=6, sampling=SAMPLING, batch_size=2, seed=7,
                                     progress=False, **kwargs)
    return flatten_candidates(PROMPTS, completions)


def forward_state(model, tokenizer, prompt, response, layer):
    """hidden_states[layer] of the candidate's final token: one unpadded, uncached forward."""
    ids = torch.tensor([prefix_ids(tokenizer, prompt) + response])
    return model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0, -1]


def test_candidates_cover_every_ending(student, tokenizer):
    _, flat = sampled(student, tokenizer)
    lengths = {len(c.response_ids) for c in flat}
    assert 0 in lengths and any(c.truncated for c in flat) and any(0 < len(c.response_ids) < 10 for c in flat)


@pytest.mark.parametrize("layer", [0, 1, 2])
@torch.no_grad()
def test_states_kept_while_sampling_are_the_final_tokens(student, tokenizer, layer):
    prompts, plain = sampled(student, tokenizer)
    _, kept = sampled(student, tokenizer, states_at=layer)
    assert [c.ids for c in kept] == [c.ids for c in plain]  # the extra step changes no completion
    for prompt, c in zip(prompts, kept, strict=True):
        assert torch.allclose(c.state, forward_state(student, tokenizer, prompt, c.response_ids, layer), atol=TOLERANCE)


@pytest.mark.parametrize("layer", [0, 1, 2])
@torch.no_grad()
def test_run_until_runs_no_later_block_nor_lm_head(student, tokenizer, layer):
    calls = []
    decoder = student.get_decoder()
    hooks = [m.register_forward_hook(lambda *_, name=name: calls.append(name))
             for name, m in [*((f"block {i}", b) for i, b in enumerate(decoder.layers)), ("norm", decoder.norm),
                             ("lm_head", student.get_output_embeddings())]]
    ids = torch.tensor([prefix_ids(tokenizer, PROMPTS[0])])
    try:
        hidden = run_until(student, layer, input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    last = len(decoder.layers)  # hidden_states[last] is the final norm's output
    assert calls == [f"block {i}" for i in range(layer)] + (["norm"] if layer == last else [])
    assert torch.allclose(hidden, student(input_ids=ids, output_hidden_states=True).hidden_states[layer], atol=1e-6)


def test_last_index_is_the_final_norm_output(student, tokenizer):
    ids = torch.tensor([prefix_ids(tokenizer, PROMPTS[1])])
    with torch.no_grad():
        out = student(input_ids=ids, output_hidden_states=True)
        assert torch.allclose(run_until(student, 2, input_ids=ids), out.hidden_states[2], atol=1e-6)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_cosines_match_the_scoring_pass(student, tokenizer, tiny_source, layer):
    prompts, flat = sampled(student, tokenizer, states_at=layer)
    full = score_candidates(student, tokenizer, prompts, [c.response_ids for c in flat], progress=False).cosine[:, layer]
    cheap = latent_cosines(student, tokenizer, prompts, flat, layer)
    assert (cheap - full).abs().max() <= TOLERANCE
    if layer:
        assert (full < 0.999).any()  # the adapter moves the states, so the comparison has teeth
    # Another engine's candidates (no kept state), and a separately loaded base: the same cosines.
    for c in flat:
        c.state = None
    assert (latent_cosines(student, tokenizer, prompts, flat, layer, base=tiny_source.load_model().eval(), batch_size=5,
                           chunk_tokens=7) - full).abs().max() <= TOLERANCE


def test_base_states_ignore_batching_and_chunking(student, tokenizer):
    prompts, flat = sampled(student, tokenizer)
    responses = [c.response_ids for c in flat]
    whole = final_states(student, tokenizer, prompts, responses, 1)
    pieces = final_states(student, tokenizer, prompts, responses, 1, batch_size=1, chunk_tokens=1)
    assert torch.allclose(whole, pieces, atol=1e-6)


def test_generate_picks_what_evaluate_picks(student, tokenizer):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10)
    for layer in (1, 2):
        bon = LatentBestOfN(student, tokenizer, layer=layer, n=6, sampling=sampling, batch_size=2)
        picks = bon.generate(PROMPTS, seed=3, progress=False)
        full = best_of_n_block(student, tokenizer, PROMPTS, ["5"] * 3, task=TASKS["number"], judge=None, n=6, sampling=sampling,
                               seed=3, batch_size=2, progress=False)
        assert [p.candidates for p in picks] == full.candidates
        cosine = full.scores.cosine[:, :, layer]
        assert torch.allclose(torch.tensor([p.cosines for p in picks]), cosine, atol=TOLERANCE)
        assert [p.index for p in picks] == LatentSimilarity(layer=layer).choose(full.scores).index.tolist()
        assert [p.response for p in picks] == [row[p.index] for p, row in zip(picks, full.candidates, strict=True)]
        assert all(p.completions[p.index].state is None for p in picks)  # states are dropped once scored


def test_another_engines_sampler(student, tokenizer):
    """A sampler without states (vLLM's): the fine-tuned side comes from a forward to the layer."""

    def engine(tokenizer, prompts, **kwargs):
        return sample_completions(student, tokenizer, prompts, **kwargs)

    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10)
    ours = LatentBestOfN(student, tokenizer, layer=2, n=4, sampling=sampling).generate(PROMPTS, seed=1, progress=False)
    theirs = LatentBestOfN(student, tokenizer, layer=2, n=4, sampling=sampling, sampler=engine).generate(PROMPTS, seed=1, progress=False)
    assert [p.candidates for p in ours] == [p.candidates for p in theirs]
    assert [p.index for p in ours] == [p.index for p in theirs]
    assert torch.allclose(torch.tensor([p.cosines for p in ours]), torch.tensor([p.cosines for p in theirs]), atol=TOLERANCE)


def test_bad_settings_name_their_fix(student, tokenizer, tiny_source):
    with pytest.raises(UserError, match="set layer within that range"):
        LatentBestOfN(student, tokenizer, layer=3)
    bon = LatentBestOfN(student, tokenizer, layer=1, sampling=SamplingConfig(max_new_tokens=2))
    with pytest.raises(UserError, match="unknown sampling setting"):
        bon.generate(["x"], temp=0.5)
    with pytest.raises(UserError, match="n=0"):
        bon.generate(["x"], n=0)
    with pytest.raises(UserError, match="temperature"):
        bon.generate(["x"], temperature=0.0)
    with pytest.raises(UserError, match="pass base="):
        LatentBestOfN(tiny_source.load_model(), tokenizer, layer=1)
    assert bon.generate([]) == []


def test_from_pretrained_finds_the_train_runs_student(tmp_path, tiny_source):
    run = tmp_path / "run"
    random_adapter(run / "adapter", tiny_source.load_model())
    with pytest.raises(UserError, match="not in a train run"):
        LatentBestOfN.from_pretrained(run / "adapter")
    with pytest.raises(UserError, match="use one of"):
        LatentBestOfN.from_pretrained(run / "adapter", student="no_such_student")
    (run / ".hydra").mkdir()
    OmegaConf.save({"student": OmegaConf.load(CONF / "student" / "tiny_random.yaml")}, run / ".hydra" / "config.yaml")
    bon = LatentBestOfN.from_pretrained(run / "adapter", device="cpu", overrides=["attribution.layer=2", "n_candidates=3"])
    assert (bon.layer, bon.n, bon.sampling.max_new_tokens) == (2, 3, 24)  # tiny_random's sampling node
    picks = bon.generate(["Hi"], max_new_tokens=4, progress=False)
    assert len(picks[0].candidates) == 3 and len(picks[0].cosines) == 3
    with pytest.raises(UserError, match="attribution.layer"):
        LatentBestOfN.from_pretrained(run / "adapter", overrides=["attribution.layer=7"])


def generate_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_generate_run(tmp_path, adapter_dir, caplog, capsys):
    """generate.py's run, in this process (test_wheel runs the installed CLI)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    common = ["student=tiny_random", f"adapter={adapter_dir}", "benchmark=file", "n_candidates=3", "max_new_tokens=5"]
    run_or_exit(run_generate, generate_cfg(tmp_path / "run", *common, f"benchmark.path={prompts}", "attribution.layer=2"), name="generate")
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    for r in rows:
        assert r["layer"] == 2 and len(r["candidates"]) == len(r["cosines"]) == len(r["truncated"]) == len(r["candidate_ids"]) == 3
        assert r["response"] == r["candidates"][r["index"]] and r["cosines"][r["index"]] == min(r["cosines"])
    assert "3 prompts x 3 candidates" in capsys.readouterr().out

    # Bad settings through the same entry function (`run_or_exit`), in this process.
    for bad, message in [(["attribution.layer=2"], "set benchmark.path="), ([f"benchmark.path={prompts}", "attribution=kl"], "attribution=latent_sim"),
                         ([f"benchmark.path={prompts}", "attribution.layer=9"], "set attribution.layer within")]:
        cfg = generate_cfg(tmp_path / "bad", *common, *bad)
        caplog.clear()
        with pytest.raises(SystemExit) as exited:
            run_or_exit(run_generate, cfg, name="generate")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert exited.value.code == 2 and len(errors) == 1 and message in errors[0], errors
        assert not (tmp_path / "bad" / "generations.jsonl").exists()


@pytest.mark.slow
def test_smollm2_choice_and_cosines_match(tmp_path):
    """On the real model (30 blocks, tied embeddings) the cheap path picks what the full pass picks."""
    from lightning_da.models import EmbeddedSmolLM2

    source = EmbeddedSmolLM2()
    tokenizer = source.load_tokenizer()
    adapter = random_adapter(tmp_path / "adapter", source.load_model(), r=8, alpha=16, scale=0.01)
    model = load_adapter(source.load_model(), adapter).eval()
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=24)
    prompts = [*PROMPTS, "What is 2 + 3?"]
    full = best_of_n_block(model, tokenizer, prompts, ["5"] * 4, task=TASKS["number"], judge=None, n=4, sampling=sampling, seed=0,
                           batch_size=4, progress=False)
    for layer in (1, 12, 30):
        picks = LatentBestOfN(model, tokenizer, layer=layer, n=4, sampling=sampling, batch_size=4).generate(prompts, progress=False)
        assert [p.candidates for p in picks] == full.candidates
        error = (torch.tensor([p.cosines for p in picks]) - full.scores.cosine[:, :, layer]).abs().max()
        assert error <= TOLERANCE, (layer, float(error))  # measured 2.4e-7 at most, over all 31 indices
        assert [p.index for p in picks] == LatentSimilarity(layer=layer).choose(full.scores).index.tolist()


def test_from_an_evaluate_config(adapter_dir, tmp_path):
    """evaluate.py's config builds the same generator: one set of keys for both entry points."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["student=tiny_random", f"adapter={adapter_dir}", "attribution.layer=1",
                                                          "n_candidates=2", "max_new_tokens=3", f"paths.cache_dir={tmp_path}"])
    bon = LatentBestOfN.from_config(cfg, device="cpu")
    assert (bon.layer, bon.n, bon.sampling.max_new_tokens, bon.layer_key) == (1, 2, 3, "attribution.layer")
    assert len(bon.generate(["Hi"], progress=False)[0].candidates) == 2


def test_generate_resumes_after_a_crash(adapter_dir, tmp_path, monkeypatch):
    """A run killed after its first batch keeps that batch; run again in the same directory, it samples
    only the rest, and writes what one uninterrupted run writes."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    def config(run, *extra):
        return generate_cfg(tmp_path / run, "student=tiny_random", f"adapter={adapter_dir}", "benchmark=file",
                            f"benchmark.path={prompts}", "attribution.layer=2", "n_candidates=3", "max_new_tokens=5", "batch_size=2",
                            f"paths.cache_dir={tmp_path / 'cache'}", *extra)

    whole = run_generate(config("whole"))
    calls = []
    generate = LatentBestOfN.generate

    def crash_on_second_batch(self, prompts, **kwargs):
        calls.append(prompts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(self, prompts, **kwargs)

    monkeypatch.setattr(LatentBestOfN, "generate", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_generate(config("resumed"))
    parts = tmp_path / "resumed" / "generations.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["block-000000.jsonl", "key.json"]
    assert not (tmp_path / "resumed" / "generations.jsonl").exists()

    calls.clear()
    resumed = run_generate(config("resumed"))
    assert calls == [PROMPTS[2:]]  # only the batch that was lost
    assert resumed == whole and not parts.exists()
    assert (tmp_path / "resumed" / "generations.jsonl").read_text() == (tmp_path / "whole" / "generations.jsonl").read_text()

    # Batches of other settings are never mixed in.
    monkeypatch.setattr(LatentBestOfN, "generate", crash_on_second_batch)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_generate(config("mixed"))
    with pytest.raises(UserError, match="holds the parts of other work"):
        run_generate(config("mixed", "n_candidates=2"))


def test_a_blocks_time_is_split_between_sampling_and_selection(student, tokenizer):
    """`LatentBlock`'s seconds: sampling then selecting, each a part of the block's own wall time."""
    import time

    from lightning_da.attribution.latent import latent_block

    started = time.perf_counter()
    block = latent_block(student, tokenizer, PROMPTS[:2], n=3, layer=1, sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
                         seed=0)
    elapsed = time.perf_counter() - started
    assert 0 < block.sampling_s and 0 < block.selection_s and block.sampling_s + block.selection_s <= elapsed
    assert block.cosines.shape == (2, 3)
    assert block.chosen.tolist() == [row.index(min(row)) for row in block.cosines.tolist()]  # the least base-like
    assert all(c.state is None for row in block.completions for c in row)  # states are dropped once scored


def test_a_separate_base_and_the_kept_states(student, tokenizer, tiny_source, monkeypatch):
    """`base=` another model (here the base with its weights moved): the cosines are to its states, each against
    an unpadded forward; the fine-tuned side is the state sampling kept, so after sampling the only forward is the
    base's, with the block's batching."""
    import torch.nn.functional as F

    from lightning_da.attribution import latent

    other = moved(tiny_source.load_model())
    forwards, original = [], latent.final_states

    def counted(model, *args, **kwargs):
        forwards.append((model, kwargs["batch_size"], kwargs["chunk_tokens"]))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(latent, "final_states", counted)
    block = latent.latent_block(student, tokenizer, PROMPTS, n=3, layer=2, sampling=SAMPLING, seed=5, base=other, batch_size=2,
                                chunk_tokens=9)
    assert forwards == [(other, 2, 9)]
    expected = torch.stack([torch.stack([F.cosine_similarity(forward_state(student, tokenizer, prompt, c.response_ids, 2),
                                                             forward_state(other, tokenizer, prompt, c.response_ids, 2), dim=0)
                                         for c in row]) for prompt, row in zip(PROMPTS, block.completions, strict=True)])
    assert (block.cosines - expected).abs().max() <= TOLERANCE
    forwards.clear()  # another engine's candidates (no kept states), the adapter-disabled base: two forwards, batched as asked
    disabled = latent.latent_cosines(student, tokenizer, *flatten_candidates(PROMPTS, block.completions), 2, batch_size=4, chunk_tokens=6)
    assert forwards == [(student, 4, 6), (student, 4, 6)]
    assert (disabled.view(3, 3) - block.cosines).abs().max() > 1e-3  # the moved base is not the adapter-disabled one
