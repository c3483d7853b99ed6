import torch

from lightning_da.formats import encode_candidate, prefix_ids
from lightning_da.generation import SamplingConfig, sample_candidates
from lightning_da.models.versions import CACHE_KEYWORD

PROMPTS = ["Hi", "Tell me a long story about a dragon and a knight, please."]


def test_n_candidates_per_prompt_reproducible(tiny_source, tokenizer):
    model = tiny_source.load_model().eval()
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6)
    first = sample_candidates(model, tokenizer, PROMPTS, n=3, sampling=sampling, batch_size=1, seed=5, progress=False)
    again = sample_candidates(model, tokenizer, PROMPTS, n=3, sampling=sampling, batch_size=1, seed=5, progress=False)
    assert [len(c) for c in first] == [3, 3] and first == again
    assert len(set(first[1])) > 1  # sampled, not copies


def test_generation_starts_from_the_scoring_prefix(tiny_source, tokenizer, monkeypatch):
    model = tiny_source.load_model().eval()
    seen = {}

    def generate(input_ids, attention_mask, **kwargs):
        seen["ids"], seen["mask"] = input_ids, attention_mask
        past_key_values = kwargs[CACHE_KEYWORD]
        # the shared prefill: every prompt token but the last is cached, once per sample
        assert past_key_values.get_seq_length() == input_ids.size(1) - 1
        assert past_key_values.layers[0].keys.size(0) == input_ids.size(0)
        reply = torch.tensor(tokenizer("Sure</think>ok", add_special_tokens=False)["input_ids"])
        return torch.cat([input_ids, reply.expand(input_ids.size(0), -1)], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    out = sample_candidates(model, tokenizer, PROMPTS, n=2, sampling=SamplingConfig(), batch_size=2, progress=False)
    assert out == [["Sure</think>ok"] * 2] * 2
    assert seen["ids"].size(0) == 4  # 2 prompts x 2 samples, grouped by prompt
    for row, prompt in enumerate(PROMPTS):
        prefix = prefix_ids(tokenizer, prompt)
        kept = seen["ids"][2 * row][seen["mask"][2 * row].bool()].tolist()
        assert kept == prefix  # left padding, then exactly the prefix
        assert encode_candidate(tokenizer, prompt, "x")[0][: len(prefix)] == prefix
    assert tokenizer.decode(prefix).endswith("<think>")
