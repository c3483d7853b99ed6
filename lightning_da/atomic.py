"""Writes that either happen whole or not at all: a temporary sibling, then a rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lightning_da.errors import UserError


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_dir_atomic(target: Path, write: Callable[[Path], None], *, replace: bool = True) -> None:
    """`write(tmp_dir)` fills a directory that then becomes `target`.

    An existing target is replaced, or with `replace=False` kept (another process that wrote
    the same content first wins, and nobody deletes a directory someone may be reading).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(tmp)
        if target.exists():
            if not replace:
                shutil.rmtree(tmp)
                return
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def keyed_parts_dir(parts: Path, key: dict) -> Path:
    """`parts`, the directory a resumable job writes its finished parts to, for the work `key` describes
    (inputs and settings, in key.json); one left by other work is an error, not silently mixed in."""
    key_file = parts / "key.json"
    payload = json.dumps(key, indent=2, sort_keys=True, default=str)
    if key_file.exists() and key_file.read_text() != payload:
        raise UserError(f"{parts} holds the parts of other work (other inputs or settings); "
                        f"delete it to start over, or set another hydra.run.dir")
    write_text_atomic(key_file, payload)
    return parts
