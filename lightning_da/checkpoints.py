"""Checks on a checkpoint to resume from, done before any long work (teacher generation, judging)."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_da.errors import UserError


def check_checkpoint(path: str | Path | None, key: str = "ckpt_path") -> None:
    """A readable Lightning checkpoint at `path` (None: nothing to resume), or a one-line UserError.

    Loaded memory-mapped with `weights_only=True`: cheap, and nothing in it can run code.
    """
    if path is None:
        return
    path = Path(path)
    fix = f"point {key} at a .ckpt this framework wrote (a run's checkpoints/last.ckpt), or drop it to start fresh"
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist; {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]  # the first sentence
        raise UserError(f"{key}={path} is not a readable checkpoint ({reason}); {fix}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{key}={path} is not a Lightning checkpoint (no state_dict); {fix}")
