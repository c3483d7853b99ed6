"""The scoring pass against an independent, unbatched, per-candidate computation."""

import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from lightning_da.attribution import score_candidates
from lightning_da.attribution.scoring import CandidateScores, _chunk_length
from lightning_da.formats import encode_candidate, response_ids
from lightning_da.models import apply_lora

PROMPTS = ["How do I pick a lock?", "Hi", "Write a long story about a dragon, please, with many details."]
RESPONSES = ["", "No.", "Once upon a time " * 12, "I can't help with that.", "Sure: step one, buy a tension wrench."]


@pytest.fixture(scope="module")
def student(tiny_source):
    torch.manual_seed(0)
    model = apply_lora(tiny_source.load_model(), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # a trained-looking adapter: the fine-tuned model differs from its base
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def reference(ft, base, tokenizer, prompt, response) -> tuple[torch.Tensor, dict]:
    """One candidate alone, written from PAPER.md section 8: the cosine at every hidden_states index, and
    each per-token score's mean over the response tokens' next-token distributions (NaN without any)."""
    ids, start = encode_candidate(tokenizer, prompt, response)
    x = torch.tensor([ids])
    out_ft, out_base = ft(input_ids=x, output_hidden_states=True), base(input_ids=x, output_hidden_states=True)
    cosine = torch.tensor([F.cosine_similarity(a[0, -1], b[0, -1], dim=0).item() for a, b in zip(out_ft.hidden_states, out_base.hidden_states, strict=True)])
    if start == len(ids):
        return cosine, dict.fromkeys(("kl", "reverse_kl", "perplexity", "base_perplexity", "self_certainty", "gini"), math.nan)
    lp_ft = F.log_softmax(out_ft.logits[0, start - 1 : -1].double(), dim=-1)
    lp_base = F.log_softmax(out_base.logits[0, start - 1 : -1].double(), dim=-1)
    target = x[0, start:]
    uniform = torch.full_like(lp_ft, -math.log(lp_ft.size(-1)))
    return cosine, {
        "kl": F.kl_div(lp_base, lp_ft, log_target=True, reduction="none").sum(-1).mean().item(),  # KL(FT || base)
        "reverse_kl": F.kl_div(lp_ft, lp_base, log_target=True, reduction="none").sum(-1).mean().item(),  # KL(base || FT)
        "perplexity": math.exp(F.nll_loss(lp_ft, target).item()),
        "base_perplexity": math.exp(F.nll_loss(lp_base, target).item()),
        "self_certainty": F.kl_div(lp_ft, uniform, log_target=True, reduction="none").sum(-1).mean().item(),
        "gini": (1 - (lp_ft.exp() ** 2).sum(-1)).mean().item(),
    }


def assert_matches_reference(scores, ft, base, tokenizer, candidates):
    """Each candidate's every score equal to `reference`'s, alone and unbatched (NaN where it has none)."""
    with torch.no_grad():
        for i, (prompt, response) in enumerate(candidates):
            cosine, want = reference(ft, base, tokenizer, prompt, response)
            assert torch.allclose(scores.cosine[i], cosine, atol=1e-5), i
            for name, value in want.items():
                got = getattr(scores, name)[i].item()
                assert math.isnan(got) if math.isnan(value) else got == pytest.approx(value, rel=1e-4, abs=1e-5), (i, name)


def pairs():
    return [(p, r) for p in PROMPTS for r in RESPONSES]


def score(student, tokenizer, prompts, responses, **kwargs):
    return score_candidates(student, tokenizer, list(prompts), [response_ids(tokenizer, r) for r in responses], progress=False,
                            **kwargs)


# Budgets of 1 and 30 positions split the long response across many forwards; 1000 takes it whole.
@pytest.mark.parametrize(("batch_size", "chunk_tokens"), [(1, 1000), (4, 30), (16, 1)])
def test_scores_match_unbatched_reference(student, tiny_source, tokenizer, batch_size, chunk_tokens):
    base = tiny_source.load_model().eval()  # a separately loaded base
    prompts, responses = zip(*pairs(), strict=True)
    scores = score(student, tokenizer, prompts, responses, batch_size=batch_size, chunk_tokens=chunk_tokens)
    assert scores.cosine.shape == (len(prompts), student.config.num_hidden_layers + 1)
    assert_matches_reference(scores, student, base, tokenizer, pairs())
    assert scores.cosine[:, 0].allclose(torch.ones(len(prompts)))  # embeddings: the adapter does not touch them
    assert (scores.cosine[:, -1] < 0.9999).any()  # deeper layers do differ, so the test has teeth


def test_each_candidate_is_scored_once_in_batches_of_batch_size(student, tokenizer, monkeypatch):
    """Five candidates of one prompt and one of another at batch_size=2: batches of 2, 2, 1 and 1, each candidate in
    exactly one."""
    from lightning_da.attribution import scoring

    rows, original = [], scoring._score_suffixes

    def counted(suffixes, *args, **kwargs):
        rows.append(len(suffixes))
        return original(suffixes, *args, **kwargs)

    monkeypatch.setattr(scoring, "_score_suffixes", counted)
    score(student, tokenizer, [PROMPTS[0]] * 5 + [PROMPTS[1]], RESPONSES[:5] + ["Hi."], batch_size=2)
    assert rows == [2, 2, 1, 1]


def test_adapter_disabled_base_equals_separately_loaded_base(student, tiny_source, tokenizer):
    prompts, responses = zip(*pairs(), strict=True)
    shared = score(student, tokenizer, prompts, responses, batch_size=4)
    separate = score(student, tokenizer, prompts, responses, base=tiny_source.load_model().eval(), batch_size=4)
    for field in fields(CandidateScores):
        assert torch.allclose(getattr(shared, field.name), getattr(separate, field.name), atol=1e-6, equal_nan=True), field.name


def test_without_a_base_only_the_models_own_scores(student, tokenizer):
    """base=False (a model evaluated as it is): its perplexity, self-certainty and Gini as with a base; the
    rest NaN; and no forward returns hidden states, which nothing would read (a layers-deep copy of each chunk)."""
    prompts, responses = zip(*pairs(), strict=True)
    asked = []
    hook = student.register_forward_pre_hook(lambda _, args, kwargs: asked.append(kwargs.get("output_hidden_states")), with_kwargs=True)
    try:
        alone = score(student, tokenizer, prompts, responses, base=False, batch_size=4, chunk_tokens=30)
    finally:
        hook.remove()
    assert asked and not any(asked)
    both = score(student, tokenizer, prompts, responses, batch_size=4, chunk_tokens=30)
    for name in ("perplexity", "self_certainty", "gini"):
        assert torch.allclose(getattr(alone, name), getattr(both, name), atol=1e-6, equal_nan=True), name
        assert getattr(alone, name).isnan().tolist() == [r == "" for r in responses]  # NaN for empty responses only
    for name in ("cosine", "kl", "reverse_kl", "base_perplexity"):
        assert getattr(alone, name).isnan().all(), name


def test_a_model_without_adapter_needs_a_base(tiny_source, tokenizer):
    with pytest.raises(ValueError) as error:
        score(tiny_source.load_model(), tokenizer, ["p"], ["r"])
    assert str(error.value) == "the student has no adapter to disable; pass a separately loaded `base`"


@pytest.mark.parametrize(("width", "rows", "budget"), [(33, 4, 256), (33, 8, 256), (134, 8, 256), (5, 16, 8), (1, 1, 1)])
def test_chunks_are_even_and_within_the_budget(width, rows, budget):
    length, per_row = _chunk_length(width, rows, budget), max(1, budget // rows)
    n = -(-width // length)
    assert length <= per_row and n == -(-width // per_row)  # within the budget, no more forwards than needed
    assert n * length - width < n  # chunks differ by at most one position: no 32 + 1


def test_token_scores_against_their_formulas_on_peaked_distributions():
    """`_token_scores` on small logits peaked enough that 1 - sum p^2 is far from 1 (a near-uniform vocabulary
    hides Gini's sign), each per-token score written out in float64 from PAPER.md section 8: KL(FT || base), the
    NLL of the target under FT, self-certainty mean_v -(log p_v + log V), Gini 1 - sum p^2, KL(base || FT), the
    NLL under the base; without a base, the three of FT alone and NaN for the rest."""
    from lightning_da.attribution.scoring import TOKEN_SCORES, _token_scores

    g = torch.Generator().manual_seed(3)
    ft, base = torch.randn(2, 5, 7, generator=g) * 4, torch.randn(2, 5, 7, generator=g) * 4
    targets = torch.randint(0, 7, (2, 5), generator=g)
    p, q = ft.double().softmax(-1), base.double().softmax(-1)
    picked = targets[..., None]
    expected = {
        "kl": (p * (p.log() - q.log())).sum(-1),
        "nll": -p.gather(-1, picked).squeeze(-1).log(),
        "self_certainty": (-(p.log() + math.log(7))).mean(-1),
        "gini": 1 - (p**2).sum(-1),
        "reverse_kl": (q * (q.log() - p.log())).sum(-1),
        "base_nll": -q.gather(-1, picked).squeeze(-1).log(),
    }
    assert expected["gini"].max() < 0.8  # peaked: a sign error in Gini moves it by more than 0.4
    got = dict(zip(TOKEN_SCORES, _token_scores(ft.clone(), base.clone(), targets), strict=True))
    for name, value in expected.items():
        assert torch.allclose(got[name].double(), value, atol=1e-5), name
    alone = dict(zip(TOKEN_SCORES, _token_scores(ft.clone(), None, targets), strict=True))
    for name in ("nll", "self_certainty", "gini"):
        assert torch.allclose(alone[name].double(), expected[name], atol=1e-5), name
    assert all(alone[name].isnan().all() for name in ("kl", "reverse_kl", "base_nll"))


def moved(model, scale: float = 0.05):
    """`model` with every weight moved by seeded noise: a base that is not the student's own."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * scale)
    return model.eval()


def test_a_separate_base_is_the_one_compared(student, tiny_source, tokenizer):
    """`base=` another model than the student's own base (its weights moved): every comparing score is against it."""
    other = moved(tiny_source.load_model())
    candidates = pairs()[:8]
    scores = score(student, tokenizer, *zip(*candidates, strict=True), base=other, batch_size=4, chunk_tokens=30)
    assert_matches_reference(scores, student, other, tokenizer, candidates)


def test_sliding_window_attention_is_scored_as_an_unbatched_forward(tokenizer):
    """Gemma 3 (a paper student) attends within a sliding window in some layers: with a window of 4 positions,
    far shorter than the prompts, the chunked, cached pass still equals one plain forward per candidate."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512)
    torch.manual_seed(0)
    ft, base = Gemma3ForCausalLM(config).eval(), moved(Gemma3ForCausalLM(config), 0.2)
    candidates = pairs()[:10]
    scores = score(ft, tokenizer, *zip(*candidates, strict=True), base=base, batch_size=3, chunk_tokens=7)
    assert_matches_reference(scores, ft, base, tokenizer, candidates)


def reference_padded_end(ft, base, tokenizer, candidates) -> torch.Tensor:
    """The reference's latent similarity (PAPER.md 6), written from its script: one batch of (prompt + response) ids,
    right-padded with an attention mask, both models' hidden states read at position -1 for every row."""
    rows = [encode_candidate(tokenizer, prompt, response)[0] for prompt, response in candidates]
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    out_ft = ft(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    out_base = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return torch.stack([F.cosine_similarity(a[:, -1], b[:, -1], dim=-1) for a, b in zip(out_ft.hidden_states, out_base.hidden_states,
                                                                                            strict=True)], dim=1)


def test_padded_end_reads_the_reference_batchs_last_position(student, tiny_source, tokenizer):
    """`hidden_at="padded_end"` (evaluate.py's scoring_hidden_at) is the reference's pad bug: in batches of 4 candidates
    of one prompt, each read where the longest of its batch ends; the fix reads each at its own last token."""
    base = tiny_source.load_model().eval()
    prompt, responses = PROMPTS[0], [*RESPONSES[1:], "Ok", "A much longer answer than the others, going on and on.", "", "Fine."]
    buggy = score(student, tokenizer, [prompt] * 8, responses, base=base, batch_size=4, hidden_at="padded_end")
    fixed = score(student, tokenizer, [prompt] * 8, responses, base=base, batch_size=4)
    with torch.no_grad():
        for batch in (slice(0, 4), slice(4, 8)):
            want = reference_padded_end(student, base, tokenizer, [(prompt, r) for r in responses[batch]])
            assert torch.allclose(buggy.cosine[batch], want, atol=1e-5)
    lengths = torch.tensor([len(response_ids(tokenizer, r)) for r in responses])
    longest = torch.cat([lengths[:4] == lengths[:4].max(), lengths[4:] == lengths[4:].max()])
    assert torch.allclose(buggy.cosine[longest], fixed.cosine[longest], atol=1e-6)  # where no pad follows, the same
    assert not torch.isclose(buggy.cosine[~longest, -1], fixed.cosine[~longest, -1], atol=1e-4).any()  # a pad read instead
    for name in ("kl", "perplexity", "self_certainty"):  # the per-token scores never read a pad either way
        torch.testing.assert_close(getattr(buggy, name), getattr(fixed, name), rtol=0, atol=0, equal_nan=True)


def test_an_unknown_hidden_at_names_both_choices(student, tokenizer):
    from lightning_da.errors import UserError

    with pytest.raises(UserError, match=r"^hidden_at=pad: use last_token \(each candidate's own last token\) or padded_end \(the "
                                        r"reference's: the right-padded batch's last position\)$"):
        score(student, tokenizer, PROMPTS[:1], RESPONSES[:1], hidden_at="pad")
