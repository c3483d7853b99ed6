import datasets
import pytest
import torch

from lightning_da.data.sft import SFTDataModule, sft_example
from lightning_da.errors import UserError
from lightning_da.formats import IGNORE_INDEX, THINK, prompt_ids


def traces(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {"index": i, "prompt": f"Tell me about topic number {i}" + " really" * i, "categories": ["benign"],
         "output": f"Policy [benign.comply.1] applies.</think>Answer {i}" + " more" * (3 * i)}
        for i in range(n)
    ])


def test_prompt_is_the_chat_template_without_the_spec(tokenizer):
    example = sft_example(tokenizer, "How do I X?", "reason</think>No.", max_length=512)
    head = prompt_ids(tokenizer, "How do I X?")
    text = tokenizer.decode(example["input_ids"])
    expected_prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How do I X?"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(head) == expected_prompt
    assert text == expected_prompt + THINK + "reason</think>No." + tokenizer.eos_token
    assert "Policy" not in text and "[violence" not in text


def test_labels_are_ignored_exactly_on_prompt_and_padding(tokenizer):
    module = SFTDataModule(traces(6), tokenizer, batch_size=6, max_length=512, val_fraction=0.2)
    module.setup()
    batch = module.collate([module.train_set[i] for i in range(len(module.train_set))] + [module.val_set[0]])
    for row in range(batch["input_ids"].size(0)):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right padding
        text = tokenizer.decode(ids[:length])
        prompt_len = text.index(THINK)
        n_prompt = len(tokenizer(text[:prompt_len], add_special_tokens=False)["input_ids"])
        expected = torch.full_like(labels, IGNORE_INDEX)
        expected[n_prompt:length] = ids[n_prompt:length]
        assert torch.equal(labels, expected)
        assert labels[length - 1] == tokenizer.eos_token_id  # the model learns to stop


def test_long_completions_are_cut_to_max_length(tokenizer):
    example = sft_example(tokenizer, "hi", "word " * 200, max_length=40)
    assert len(example["input_ids"]) == 40 == len(example["labels"])
    assert example["labels"][-1] != IGNORE_INDEX


def test_prompt_that_fills_max_length_is_dropped(tokenizer):
    longest = len(prompt_ids(tokenizer, "Tell me about topic number 5" + " really" * 5))
    module = SFTDataModule(traces(6), tokenizer, max_length=longest)  # no room left for prompt 5's completion
    module.setup()
    assert len(module.train_set) == 5


def test_the_paper_holds_nothing_out_and_a_held_out_slice_is_a_choice(tokenizer):
    """PAPER.md 9: the reference trains on the whole filtered split, no validation; val_fraction=0.2 holds out a
    fifth (of 6: one), seeded; a share of 1 or more, or below 0, is a one-line error naming the key."""
    whole = SFTDataModule(traces(6), tokenizer, max_length=512)
    whole.setup()
    assert len(whole.train_set) == 6 and whole.val_dataloader() == []
    held = SFTDataModule(traces(6), tokenizer, max_length=512, val_fraction=0.2)
    held.setup()
    assert (len(held.train_set), len(held.val_set), len(held.val_dataloader())) == (5, 1, 1)
    for bad in (1.0, -0.1):
        with pytest.raises(UserError) as error:
            SFTDataModule(traces(6), tokenizer, val_fraction=bad)
        assert str(error.value) == f"algorithm.datamodule.val_fraction={bad}: set the held-out share from 0 (none) to below 1"


def test_too_few_kept_traces_is_a_clear_error(tokenizer):
    with pytest.raises(UserError, match="the judge kept 1 teacher trace"):
        SFTDataModule(traces(1), tokenizer)
