import torch

from lightning_da.attribution import encode_candidate
from lightning_da.generation import SamplingConfig, candidate_prefix, sample_candidates

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

    def generate(input_ids, attention_mask, num_return_sequences, **kwargs):
        seen["ids"], seen["mask"] = input_ids, attention_mask
        reply = torch.tensor(tokenizer("Sure</think>ok", add_special_tokens=False)["input_ids"])
        grown = torch.cat([input_ids, reply.expand(input_ids.size(0), -1)], dim=1)
        return grown.repeat_interleave(num_return_sequences, dim=0)

    monkeypatch.setattr(model, "generate", generate)
    out = sample_candidates(model, tokenizer, PROMPTS, n=2, sampling=SamplingConfig(), batch_size=2, progress=False)
    assert out == [["Sure</think>ok"] * 2] * 2
    for row, prompt in enumerate(PROMPTS):
        prefix = candidate_prefix(tokenizer, prompt)
        kept = seen["ids"][row][seen["mask"][row].bool()].tolist()
        assert kept == prefix  # left padding, then exactly the prefix
        assert encode_candidate(tokenizer, prompt, "x")[0][: len(prefix)] == prefix
    assert tokenizer.decode(prefix).endswith("<think>")
