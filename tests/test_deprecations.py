"""Our own calls into transformers and peft raise no deprecation warnings (sampling with and without kept
states, the scoring pass, the cheap path, wrapping and loading an adapter), whether a library says so through
Python's `warnings` or through its logger (transformers logs most of its deprecations, once per process)."""

import contextlib
import logging
import re
import warnings

import pytest

from lightning_da.attribution import score_candidates
from lightning_da.attribution.latent import latent_cosines
from lightning_da.generation import SamplingConfig, flatten_candidates, sample_completions
from lightning_da.models.lora import load_adapter, random_adapter

# peft 0.21.2 (the newest release) reads `model.is_gradient_checkpointing` itself in PeftModel.__init__:
# its call, not ours, so it is the one deprecation let through.
NOT_OURS = ("is_gradient_checkpointing",)


LIBRARIES = ("transformers", "peft", "torch", "lightning", "accelerate")
DEPRECATION = re.compile(r"deprecat|will be removed|no longer (be )?supported", re.IGNORECASE)


@contextlib.contextmanager
def deprecations():
    """Every deprecation raised inside: Python's Deprecation/FutureWarnings, and the warnings the libraries log
    that read as one (their loggers do not propagate to the root, so a handler on each). transformers'
    `warning_once` cache is emptied first, so a deprecation logged earlier in this process is logged again."""
    caught: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if DEPRECATION.search(record.getMessage()):
                caught.append(record.getMessage())

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    with contextlib.suppress(AttributeError):
        logging.Logger.warning_once.cache_clear()
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            yield caught
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    caught += [str(w.message) for w in raised if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    caught[:] = [m for m in caught if not any(name in m for name in NOT_OURS)]


def test_a_deprecation_the_libraries_log_is_caught(tiny_source):
    """The guard itself: transformers logs (not warns) that `config.torch_dtype` is deprecated, and Python warns
    of others; the capture sees both, and twice in a row (the once-per-process cache is emptied)."""
    config = tiny_source.load_model().config
    for _ in range(2):
        with deprecations() as caught:
            assert config.torch_dtype == config.dtype
            warnings.warn("old_name is deprecated", FutureWarning, stacklevel=1)
        assert caught == ["`torch_dtype` is deprecated! Use `dtype` instead!", "old_name is deprecated"]


def test_sampling_scoring_and_adapters_raise_no_deprecation(tmp_path, tiny_source, tokenizer):
    with deprecations() as caught:
        adapter = random_adapter(tmp_path / "adapter", tiny_source.load_model())
        model = load_adapter(tiny_source.load_model(), adapter).eval()
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=4)
        prompts = ["Hi", "How do I bake bread?"]
        for states_at in (None, 1):
            completions = sample_completions(model, tokenizer, prompts, n=2, sampling=sampling, progress=False, states_at=states_at)
        flat_prompts, flat = flatten_candidates(prompts, completions)
        score_candidates(model, tokenizer, flat_prompts, [c.response_ids for c in flat], progress=False)
        latent_cosines(model, tokenizer, flat_prompts, flat, 1)
    assert caught == []


@pytest.mark.slow
def test_loading_an_adapter_on_a_tied_model_warns_nothing(tmp_path):
    """SmolLM2 ties its embeddings; the adapter's trained lm_head is an untied copy by design."""
    from lightning_da.models import EmbeddedSmolLM2

    with warnings.catch_warnings(record=True) as ties, deprecations() as caught:
        warnings.simplefilter("always")
        adapter = random_adapter(tmp_path / "adapter", EmbeddedSmolLM2().load_model(), r=2, alpha=4)
        load_adapter(EmbeddedSmolLM2().load_model(), adapter)
    assert [str(w.message) for w in ties if "tie" in str(w.message)] == [] and caught == []
