import pytest
import torch

from lightning_da.errors import UserError
from lightning_da.models import HubModel, TinyRandomLlama, apply_lora
from lightning_da.models.lora import load_adapter


def test_uncached_hub_id_names_the_override():
    source = HubModel(name="meta-llama/Not-A-Real-Model-Anywhere", config_key="student.model")
    with pytest.raises(UserError, match=r"student\.model\.path=") as info:
        source.load_tokenizer()
    assert "\n" not in str(info.value)


def test_path_must_be_a_model_directory(tmp_path):
    source = HubModel(name="x/y", path=str(tmp_path), config_key="teacher.model")
    with pytest.raises(UserError, match=r"teacher\.model\.path=.*no config\.json"):
        source.load_model()


def test_unknown_dtype(tmp_path, tiny_source):
    model = tiny_source.load_model()
    model.save_pretrained(tmp_path)
    tiny_source.load_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="unknown dtype 'fp12'"):
        HubModel(name="x", path=str(tmp_path), dtype="fp12").load_model()
    loaded = HubModel(name="x", path=str(tmp_path), dtype="float32").load_model()
    assert loaded.config.num_hidden_layers == 2


def test_tiny_random_is_a_chat_model(tiny_source, tokenizer):
    model = tiny_source.load_model()
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "hi" in text and text.endswith("assistant\n")
    # Same seed, same weights: a tiny model is reproducible across loads.
    assert torch.equal(model.lm_head.weight, tiny_source.load_model().lm_head.weight)


def test_adapter_round_trip_gives_identical_logits(tmp_path, tiny_source):
    torch.manual_seed(0)
    model = apply_lora(tiny_source.load_model(), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # move the adapter away from its zero init so the test can fail
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    ids = torch.randint(0, 1000, (2, 12))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")

    reloaded = load_adapter(tiny_source.load_model(), str(tmp_path / "adapter")).eval()
    assert not any(p.requires_grad for p in reloaded.parameters())
    assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-6)
    with reloaded.disable_adapter():  # the base is really different, so the check above means something
        assert not torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-3)
    trainable = load_adapter(tiny_source.load_model(), str(tmp_path / "adapter"), trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_lora_trains_lm_head_and_adapters_only(tiny_source):
    model = apply_lora(tiny_source.load_model())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lm_head" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert not any("embed_tokens" in n or "layernorm" in n for n in trainable)


def test_every_trained_weight_of_a_bf16_student_is_fp32_when_trained_again_and_bf16_when_only_read(tmp_path):
    """GRPO's init_adapter is the SFT adapter loaded trainable: its lm_head copy must be fp32 master weights as a fresh
    adapter's; an adapter loaded for evaluation keeps the student's dtype (nothing trains it)."""
    bf16 = TinyRandomLlama(dtype="bfloat16")
    apply_lora(bf16.load_model()).save_pretrained(tmp_path / "adapter")

    def trained_dtypes(**kwargs):
        model = load_adapter(bf16.load_model(), tmp_path / "adapter", **kwargs)
        return {("head" if "lm_head" in n else "lora"): p.dtype for n, p in model.named_parameters()
                if "modules_to_save" in n or "lora_" in n}

    assert trained_dtypes(trainable=True) == {"head": torch.float32, "lora": torch.float32}
    assert trained_dtypes(trainable=True, upcast_modules_to_save=False) == {"head": torch.bfloat16, "lora": torch.float32}
    assert trained_dtypes()["head"] == torch.bfloat16


def test_the_papers_lora_is_on_peft_default_targets_and_all_linear_is_a_choice(tiny_source, compose_train):
    """PAPER.md 9: the reference's LoraConfig names no target_modules, so PEFT's default per architecture applies:
    q_proj and v_proj for Llama (and Qwen2, Gemma 3), plus lm_head trained in full; `lora=all_linear` adapts every
    linear layer. An architecture PEFT has no default for is a one-line error naming the key."""
    def adapted(lora):
        model = apply_lora(tiny_source.load_model(), **lora)
        return sorted({n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n})

    paper, everywhere = (dict(compose_train(*o).algorithm.module.lora) for o in ([], ["lora=all_linear"]))
    assert paper == {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": None, "modules_to_save": ["lm_head"],
                     "upcast_modules_to_save": True}
    assert adapted(paper) == ["q_proj", "v_proj"]
    assert everywhere == {**paper, "target_modules": "all-linear"}
    assert adapted(everywhere) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    model = tiny_source.load_model()
    model.config.model_type = "no_such_family"
    with pytest.raises(UserError) as error:
        apply_lora(model)
    assert str(error.value) == ("peft has no default LoRA targets for model type 'no_such_family': set "
                                "algorithm.module.lora.target_modules (e.g. lora=all_linear, or a list of module names)")
