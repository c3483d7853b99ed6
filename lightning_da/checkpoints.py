"""A checkpoint to resume from: found (`ckpt_path=last` or a run directory) and checked before any
long work (teacher generation, judging); and the W&B run a resumed run continues."""

from __future__ import annotations

import secrets
from pathlib import Path

import torch
from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint
from lightning.fabric.utilities.load import _METADATA_FILENAME  # beside the shards of a sharded checkpoint

from lightning_da.atomic import write_text_atomic
from lightning_da.errors import UserError


def check_checkpoint(path: str | Path | None, key: str = "ckpt_path", *, sharded: bool = False) -> None:
    """A readable Lightning checkpoint at `path` (None: nothing to resume), or a one-line UserError.
    `sharded`: the run shards its model (trainer=fsdp), so a sharded checkpoint directory is one too.

    Loaded memory-mapped with `weights_only=True`: cheap, and nothing in it can run code.
    """
    if path is None:
        return
    path = Path(path)
    fix = f"point {key} at a .ckpt this framework wrote (a run's checkpoints/last.ckpt), or drop it to start fresh"
    if _is_sharded_checkpoint(path):
        if not sharded:
            raise UserError(f"{key}={path} is a sharded (FSDP) checkpoint; resume it with trainer=fsdp")
        path = path / _METADATA_FILENAME  # the shards themselves are read by every rank inside fit
    elif not path.is_file():
        raise UserError(f"{key}={path} does not exist; {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]  # the first sentence
        raise UserError(f"{key}={path} is not a readable checkpoint ({reason}); {fix}") from None
    if not isinstance(checkpoint, dict) or not ("state_dict" in checkpoint or path.name == _METADATA_FILENAME):
        raise UserError(f"{key}={path} is not a Lightning checkpoint (no state_dict); {fix}")


WANDB_ID_FILE = "wandb_run_id"


def resolve_checkpoint(ckpt_path, output_dir: str | Path, key: str = "ckpt_path", *, sharded: bool = False) -> Path | None:
    """`last`: this run directory's `checkpoints/last.ckpt` (resume in place with
    `hydra.run.dir=<run>`); a run directory: its `checkpoints/last.ckpt`; a file (or, `sharded`, a
    sharded checkpoint directory): itself. Checked."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        path = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise UserError(f"{key}=last: {path} does not exist; resume in place with hydra.run.dir=<the run's directory> "
                            f"{key}=last, or set {key}=<a run directory or a .ckpt>")
    else:
        path = Path(ckpt_path)
        if path.is_dir() and not _is_sharded_checkpoint(path):
            path = path / "checkpoints" / "last.ckpt"
    check_checkpoint(path, key, sharded=sharded)
    return path


def wandb_run_id(output_dir: str | Path, checkpoint: Path | None) -> str:
    """The W&B run this run logs to: the resumed run's (kept beside its checkpoints), else this run
    directory's (a resume in place, or DDP's other ranks), else a new one, written into this run
    directory so a later resume finds it."""
    target = Path(output_dir) / WANDB_ID_FILE
    for source in ([checkpoint.parent.parent / WANDB_ID_FILE] if checkpoint is not None else []) + [target]:
        if source.is_file():
            run_id = source.read_text().strip()
            break
    else:
        run_id = secrets.token_hex(4)  # W&B takes any [a-z0-9] id
    if not target.is_file() or target.read_text().strip() != run_id:
        write_text_atomic(target, run_id + "\n")
    return run_id
