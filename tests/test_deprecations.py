"""Our own calls into transformers and peft raise no deprecation warnings (sampling with and without kept
states, the scoring pass, the cheap path, wrapping and loading an adapter)."""

import warnings

import pytest

from lightning_da.attribution import score_candidates
from lightning_da.attribution.latent import latent_cosines
from lightning_da.generation import SamplingConfig, flatten_candidates, sample_completions
from lightning_da.models.lora import load_adapter, random_adapter

# peft 0.21.2 (the newest release) reads `model.is_gradient_checkpointing` itself in PeftModel.__init__:
# its call, not ours, so it is the one deprecation let through.
NOT_OURS = ("is_gradient_checkpointing",)


def ours(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))
            and not any(name in str(w.message) for name in NOT_OURS)]


def test_sampling_scoring_and_adapters_raise_no_deprecation(tmp_path, tiny_source, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model())
        model = load_adapter(tiny_source.load_model(), adapter).eval()
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=4)
        prompts = ["Hi", "How do I bake bread?"]
        for states_at in (None, 1):
            completions = sample_completions(model, tokenizer, prompts, n=2, sampling=sampling, progress=False, states_at=states_at)
        flat_prompts, flat = flatten_candidates(prompts, completions)
        score_candidates(model, tokenizer, flat_prompts, [c.response_ids for c in flat], progress=False)
        latent_cosines(model, tokenizer, flat_prompts, flat, 1)
    assert ours(caught) == []


@pytest.mark.slow
def test_loading_an_adapter_on_a_tied_model_warns_nothing(tmp_path):
    """SmolLM2 ties its embeddings; the adapter's trained lm_head is an untied copy by design."""
    from lightning_da.models import EmbeddedSmolLM2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = random_adapter(tmp_path / "adapter", EmbeddedSmolLM2().load_model(), r=2, alpha=4)
        load_adapter(EmbeddedSmolLM2().load_model(), adapter)
    assert [str(w.message) for w in caught if "tie" in str(w.message)] == [] and ours(caught) == []
