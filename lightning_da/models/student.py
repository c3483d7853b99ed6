"""The student as evaluate.py, generate.py and `LatentBestOfN` configure it: `student=` with `adapter=`
(the base is the adapter disabled) or, for a fully fine-tuned student, `base=`; or (evaluate.py) a
model as it is, `as_is=student` or `as_is=teacher` with `teacher=`."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import InterpolationKeyError

from lightning_da.errors import UserError
from lightning_da.models.lora import load_adapter

AS_IS = ("student", "teacher")


def evaluated_node(cfg: DictConfig) -> DictConfig:
    """The config node (`model`, `sampling`) of the model being evaluated: the student's, or with
    `as_is=teacher` the teacher's."""
    as_is = cfg.get("as_is")
    if as_is not in (None, *AS_IS):
        raise UserError(f"as_is={as_is}: use student (the student model as it is) or teacher (teacher=<name> as it is), or null")
    if as_is == "teacher" and not cfg.get("teacher"):
        raise UserError("as_is=teacher evaluates the teacher as it is: set teacher=<name> (conf/teacher/)")
    if as_is and (cfg.get("adapter") or base_node(cfg)):
        raise UserError(f"as_is={as_is} evaluates a model as it is, with no base: leave adapter= and base= unset")
    return cfg.teacher if as_is == "teacher" else cfg.student


def base_node(cfg: DictConfig) -> DictConfig | None:
    """`base`, the separately loaded base; a one-line error where it names a node the student lacks
    (experiment=instruct_vs_base's `student.pretrained`)."""
    try:
        return cfg.get("base")
    except InterpolationKeyError as exc:
        raise UserError(f"base= reads a node this student lacks ({exc}); add it to "
                        f"its conf/student file, e.g. student.pretrained (experiment=instruct_vs_base)") from None


def load_student(cfg: DictConfig, device: torch.device | str):
    """(model, base, tokenizer) on `device`: the adapter on the student, base = adapter disabled
    (None); for a fully fine-tuned student, a separately loaded `base`; with `as_is`, the student or
    the teacher as it is, base = False (there is none)."""
    node = evaluated_node(cfg)
    source = instantiate(node.model)
    tokenizer = source.load_tokenizer()
    if cfg.get("as_is"):
        model, base = source.load_model(), False
    elif cfg.adapter:
        model, base = load_adapter(source.load_model(), cfg.adapter, model_name=source.name, tokenizer=tokenizer), None
    elif base_node(cfg):
        model, base = source.load_model(), instantiate(cfg.base).load_model().eval()
    else:
        raise UserError("set adapter=<train run>/adapter (the base is the student with it disabled), base=... for a fully "
                        "fine-tuned student, or as_is=student|teacher to evaluate a model as it is")
    return model.eval().to(device), (base.to(device) if base not in (None, False) else base), tokenizer


def student_sampling(cfg: DictConfig):
    """`student.sampling` with the run's `max_new_tokens` (evaluate.py, generate.py) when set."""
    overrides = {"max_new_tokens": cfg.max_new_tokens} if cfg.get("max_new_tokens") is not None else {}
    return instantiate(evaluated_node(cfg).sampling, **overrides)
