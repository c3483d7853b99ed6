from functools import partial

import datasets
import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from lightning_da.algorithms import SFTModule
from lightning_da.data.sft import SFTDataModule

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "modules_to_save": ["lm_head"]}


def data(tokenizer) -> SFTDataModule:
    rows = [{"prompt": f"question {i}", "categories": ["benign"], "output": "I think.</think>The answer is always the same."} for i in range(10)]
    return SFTDataModule(datasets.Dataset.from_list(rows), tokenizer, batch_size=4, max_length=64, val_fraction=0.2)


def module(tiny_source, lr=5e-3) -> SFTModule:
    return SFTModule(
        tiny_source, lora=LORA, optimizer=partial(torch.optim.AdamW, lr=lr),
        scheduler=partial(get_cosine_schedule_with_warmup), warmup_ratio=0.1,
    )


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0, log_every_n_steps=1, **kwargs,
    )


def test_loss_falls(tmp_path, tiny_source, tokenizer):
    L.seed_everything(0)
    sft, dm = module(tiny_source), data(tokenizer)
    dm.setup()
    sft.configure_model()
    batch = dm.collate([dm.train_set[i] for i in range(len(dm.train_set))])
    with torch.no_grad():
        before = sft(batch).item()
    trainer(tmp_path, max_epochs=10, enable_checkpointing=False).fit(sft, datamodule=dm)
    with torch.no_grad():
        after = sft(batch).item()
    assert after < 0.7 * before, (before, after)
    # the loss is the mean cross-entropy over completion tokens only
    logits = sft.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    assert torch.allclose(manual, sft(batch), atol=1e-5)


def test_checkpoint_holds_trainable_weights_and_resumes(tmp_path, tiny_source, tokenizer):
    L.seed_everything(0)
    first = trainer(tmp_path, max_epochs=1)
    sft = module(tiny_source)
    first.fit(sft, datamodule=data(tokenizer))
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt")) if (tmp_path / "checkpoints").exists() else next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    trainable = {n for n, p in sft.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert not any("embed_tokens" in k or "base_layer" in k for k in state)

    resumed = module(tiny_source)
    second = trainer(tmp_path / "again", max_epochs=2)
    second.fit(resumed, datamodule=data(tokenizer), ckpt_path=str(ckpt), weights_only=True)
    assert second.current_epoch == 2 and second.global_step == 2 * first.global_step


class _HeadGradient(L.Callback):
    """The trained lm_head copy's gradient just before the optimizer step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grad = pl_module.model.base_model.model.lm_head.modules_to_save["default"].weight.grad.detach().clone()


def _one_paper_step(tmp_path, tokenizer, precision: str, upcast: bool):
    """One optimizer step of the paper's SFT (its LoRA, AdamW at lr 1.41e-5) on a bf16 tiny Llama, as hub students load:
    the lm_head copy before and after, and its gradient."""
    from lightning_da.models import TinyRandomLlama

    L.seed_everything(0)
    lora = {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": None, "modules_to_save": ["lm_head"],
            "upcast_modules_to_save": upcast}
    sft = SFTModule(TinyRandomLlama(dtype="bfloat16"), lora=lora, optimizer=partial(torch.optim.AdamW, lr=1.41e-5, weight_decay=0.0))
    sft.configure_model()
    head = sft.model.base_model.model.lm_head.modules_to_save["default"].weight
    before = head.detach().float().clone()
    grad = _HeadGradient()
    trainer(tmp_path, max_steps=1, precision=precision, callbacks=[grad], enable_checkpointing=False).fit(sft, datamodule=data(tokenizer))
    return head, before, grad.grad


def test_a_bf16_students_trained_head_is_fp32_and_every_weight_with_a_gradient_moves_at_the_papers_lr(tmp_path, tokenizer):
    for precision in ("bf16-mixed", "32-true"):  # trainer=gpu's, and a bf16 student under trainer=default
        head, before, grad = _one_paper_step(tmp_path, tokenizer, precision, upcast=True)
        assert head.dtype == torch.float32 and grad.dtype == torch.float32
        moved = head.detach() != before
        assert (grad != 0).float().mean() > 0.99  # every vocabulary row gets a gradient through the softmax
        assert torch.equal(moved, grad != 0), precision


def test_the_references_bf16_head_is_a_switch_away_and_loses_most_of_its_update(tmp_path, tokenizer):
    head, before, grad = _one_paper_step(tmp_path, tokenizer, "bf16-mixed", upcast=False)
    assert head.dtype == torch.bfloat16
    unchanged = ((head.detach().float() == before) & (grad != 0)).float().mean().item()
    assert unchanged > 0.5  # the step rounds away on every weight above ~0.004
