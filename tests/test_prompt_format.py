"""prompt_format=reference (the authors' student prompt, PAPER.md 9) and the think tokens a DeepSeek teacher's traces
bring: the expected strings are the reference script's per-family templates as PAPER.md 9 describes them."""

import copy
import json
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from safetensors import safe_open
from transformers import AutoTokenizer

from lightning_da.configs import CONF_DIR
from lightning_da.errors import UserError
from lightning_da.formats import apply_prompt_format, completion_ids, prefix_ids, prompt_ids, response_ids
from lightning_da.generation import SamplingConfig
from lightning_da.models import TinyRandomLlama
from lightning_da.models.vocabulary import THINK_TOKENS, adapter_has_think_tokens, resize_embeddings, wants_think_tokens

# A system turn "You are a helpful assistant." (Gemma: the line opens the user turn), the user turn, the assistant turn
# opened; the completion `<think>` + trace + the family's end of turn.
REFERENCE = {
    "chatml": ([], "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHow?<|im_end|>\n"
                   "<|im_start|>assistant\n", "<|im_end|>\n"),
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHow?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "gemma": (["<bos>", "<start_of_turn>", "<end_of_turn>"],
              "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHow?<end_of_turn><start_of_turn>model\n", "<end_of_turn>\n"),
}


def family_tokenizer(markers):
    """SmolLM2's tokenizer (ChatML), with another family's markup tokens added where the test needs that family."""
    tokenizer = copy.deepcopy(TinyRandomLlama().load_tokenizer())
    if markers:
        tokenizer.add_special_tokens({"extra_special_tokens": markers})
    return tokenizer


@pytest.mark.parametrize("family", list(REFERENCE))
def test_the_reference_prompt_per_family(family):
    markers, prompt, end = REFERENCE[family]
    tokenizer = apply_prompt_format(family_tokenizer(markers), "reference")
    assert tokenizer.apply_chat_template([{"role": "user", "content": "How?"}], tokenize=False, add_generation_prompt=True) == prompt
    assert tokenizer.decode(prompt_ids(tokenizer, "How?")) == prompt
    ids = completion_ids(tokenizer, "Because.</think>So.", eos=True)
    assert tokenizer.decode(ids) == "<think>Because.</think>So." + end
    assert ids[-len(response_ids(tokenizer, end)):] == response_ids(tokenizer, end)  # the end of turn as the template's tokens


def test_ours_keeps_the_models_template_and_eos():
    tokenizer = family_tokenizer([])
    own = tokenizer.chat_template
    apply_prompt_format(tokenizer, "chat")
    assert tokenizer.chat_template == own and completion_ids(tokenizer, "x", eos=True)[-1] == tokenizer.eos_token_id
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(prompt_ids(tokenizer, "How?"))


def test_a_student_source_formats_its_tokenizer_and_names_it_in_its_identity(compose_train):
    ours, reference = (instantiate(compose_train("student=tiny_random", *o).student.model) for o in ([], ["prompt_format=reference"]))
    assert reference.load_tokenizer().decode(prompt_ids(reference.load_tokenizer(), "How?")) == REFERENCE["chatml"][1]
    assert "prompt_format" not in ours.identity() and reference.identity()["prompt_format"] == "reference"
    assert compose_train("prompt_format=reference").student.model.prompt_format == "reference"


def test_bad_prompt_formats_are_one_line():
    with pytest.raises(UserError, match=r"^student.model.prompt_format=paper: use chat \(the model's own template\) or reference"):
        TinyRandomLlama(prompt_format="paper", config_key="student.model").load_tokenizer()
    tokenizer = family_tokenizer([])
    tokenizer.get_vocab = lambda: {"hello": 0}
    with pytest.raises(UserError, match=r"^prompt_format=reference knows ChatML \(Qwen\), Llama 3 and Gemma markup, and .* has none of "
                                        r"them; use prompt_format=chat$"):
        apply_prompt_format(tokenizer, "reference")


def test_a_benchmarks_opening_replaces_think():
    """The reference's GSM8K opens the assistant turn with "A: Let's think step by step." instead of <think>; "" opens nothing."""
    tokenizer = family_tokenizer([])
    with_think = prefix_ids(tokenizer, "Q: 2+2?")
    tokenizer.opening = "A: Let's think step by step."
    assert tokenizer.decode(prefix_ids(tokenizer, "Q: 2+2?")).endswith("<|im_start|>assistant\nA: Let's think step by step.")
    tokenizer.opening = ""
    assert prefix_ids(tokenizer, "Q: 2+2?") == prompt_ids(tokenizer, "Q: 2+2?") == with_think[: len(prompt_ids(tokenizer, "Q: 2+2?"))]


@pytest.mark.parametrize(("setting", "teacher", "student", "wanted"), [
    ("auto", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "Qwen/Qwen2.5-7B-Instruct", True),   # the reference's rule
    ("auto", "Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct", False),
    ("auto", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", False),
    (True, "Qwen/QwQ-32B", "x", True),
    (False, "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "x", False),
])
def test_when_the_think_tokens_are_added(setting, teacher, student, wanted):
    assert wants_think_tokens(setting, teacher, student) is wanted


def test_an_unknown_think_tokens_setting_is_one_line():
    with pytest.raises(UserError, match=r"^algorithm.think_tokens=maybe: use auto"):
        wants_think_tokens("maybe", "a", "b")


def test_added_rows_are_the_mean_and_a_shrink_drops_the_padding():
    model = TinyRandomLlama().load_model()
    old = model.get_input_embeddings().weight.detach().clone()
    resize_embeddings(model, old.shape[0] + 2)
    grown = model.get_input_embeddings().weight
    assert torch.equal(grown[: old.shape[0]], old) and torch.allclose(grown[-2:], old.mean(0).expand(2, -1))
    assert torch.allclose(model.get_output_embeddings().weight[-1], model.get_output_embeddings().weight[:-2].mean(0))
    resize_embeddings(model, old.shape[0] - 5)  # Qwen's padded matrix shrinks to its tokenizer, as resize_token_embeddings does
    assert torch.equal(model.get_input_embeddings().weight, old[:-5]) and model.config.vocab_size == old.shape[0] - 5


def test_think_tokens_travel_from_sft_to_every_load(compose_train, tmp_path):
    """SFT with algorithm.think_tokens=true: the adapter's tokenizer holds both tokens as special ones, its lm_head the
    grown vocabulary; evaluate.py's student loads with them (tokenizer and embeddings), and GRPO starts from it."""
    from lightning_da.algorithms import GRPOModule
    from lightning_da.models.student import load_student
    from lightning_da.runs.train import run_train

    cfg = compose_train("teacher=tiny_random", "student=tiny_random", "data.limit=4", '+judge.refusals=[""]', "trainer.max_epochs=1",
                        "algorithm.datamodule.batch_size=2", "algorithm.module.lora.r=4", "trainer.accelerator=cpu", "logger=csv",
                        "algorithm.think_tokens=true", "prompt_format=reference")
    run_train(cfg)
    adapter = tmp_path / "run" / "adapter"
    assert adapter_has_think_tokens(adapter)
    assert set(THINK_TOKENS) <= set(AutoTokenizer.from_pretrained(adapter).all_special_tokens)
    with safe_open(adapter / "adapter_model.safetensors", "pt") as saved:
        assert [saved.get_slice(k).get_shape()[0] for k in saved.keys() if "lm_head" in k] == [49154]  # the grown head, trained
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        evaluation = compose(config_name="evaluate", overrides=["student=tiny_random", "prompt_format=reference", f"adapter={adapter}"])
    model, base, tokenizer = load_student(evaluation, "cpu")
    assert len(tokenizer) == 49154 and model.get_input_embeddings().weight.shape[0] == 49154 and base is None
    assert tokenizer("<think>", add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids("<think>")]
    policy_tokenizer = TinyRandomLlama().load_tokenizer()
    grpo = GRPOModule(TinyRandomLlama(), tokenizer=policy_tokenizer, rewards={"r": {"fn": len, "weight": 1.0}},
                      sampling=SamplingConfig(max_new_tokens=4),
                      init_adapter=str(adapter), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    grpo.configure_model()
    assert len(policy_tokenizer) == 49154 and grpo._resized


def test_an_adapter_saved_by_transformers_4_is_recognised(tmp_path):
    """The reference's adapters (TRL on transformers 4) list added tokens in tokenizer_config's added_tokens_decoder."""
    decoder = {"151665": {"content": "<think>", "special": True}, "151666": {"content": "</think>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert adapter_has_think_tokens(tmp_path)
    decoder["151666"]["special"] = False
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert not adapter_has_think_tokens(tmp_path) and not adapter_has_think_tokens(tmp_path / "nothing")
